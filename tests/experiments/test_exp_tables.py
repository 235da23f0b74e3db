"""The experiment runners' collect side on hand-made summary.json files: tables, verdicts, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from experiments import common


def table_rows(markdown: str) -> dict[str, list[str]]:
    """First cell -> cells of each row of the first markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
        image.verify()


def metrics(r05: float) -> dict[str, float]:
    return {"test/R@0.3": r05 + 0.2, "test/R@0.5": r05, "test/R@0.7": r05 - 0.2, "test/mIoU": r05 - 0.1,
           "test/R@0.5_audio": 0.5, "test/R@0.5_visual": 0.6, "test/R@0.5_audio-visual": 0.7,
           "test/parse_rate": 0.98, "test/baseline_R@0.5": 0.3, "test/baseline_R@0.5_audio": 0.27}  # fmt: skip


def test_final_metrics_come_from_stage4_else_stage3() -> None:
    both = {"stages": {"stage3": {"test/R@0.5": 0.4}, "stage4": {"test/R@0.5": 0.6}}}
    assert common.final_metrics(both) == ("stage4", {"test/R@0.5": 0.6})
    no4 = {"stages": {"stage1": {"test/t2v_R@1": 0.2}, "stage3": {"test/R@0.5": 0.4}}}
    assert common.final_metrics(no4) == ("stage3", {"test/R@0.5": 0.4})
    no_grounding_in_4 = {"stages": {"stage4": {"test/loss": 1.0}, "stage3": {"test/R@0.5": 0.4}}}
    assert common.final_metrics(no_grounding_in_4)[0] == "stage3"
    assert common.final_metrics({"stages": {"stage1": {}}}) == (None, {})


def test_only_a_finished_summary_is_complete() -> None:
    assert common.is_complete({"stages": {}, "seconds": {"stage1": 3.0, "total": 3.0}})
    assert not common.is_complete({"stages": {"stage1": {}}, "seconds": {"stage1": 3.0}})  # a failed pipeline
    assert not common.is_complete(None)


def test_markdown_table_escapes_pipes() -> None:
    table = common.markdown_table(["a", "b"], [["1", "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


def test_fusion_depth_table_and_plot(runner, write_summary, tmp_path: Path) -> None:
    for depth, r05 in ((1, 0.45), (2, 0.612), (4, 0.58)):
        write_summary(tmp_path / f"depth{depth}", metrics(r05), seconds=60.0 * depth)
    assert runner("fusion_depth").main(["--collect", f"exp.out={tmp_path}"]) == 0
    rows = table_rows((tmp_path / "results.md").read_text())
    assert list(rows) == ["1", "2", "4"]
    assert rows["2"] == {"depth": "2", "stage": "stage4", "R@0.3": "0.812", "R@0.5": "0.612", "R@0.7": "0.412",
                         "mIoU": "0.512", "R@0.5 audio": "0.500", "R@0.5 visual": "0.600",
                         "R@0.5 audio-visual": "0.700", "parse rate": "0.980", "baseline R@0.5": "0.300",
                         "minutes": "2.0"}  # fmt: skip
    assert rows["4"]["minutes"] == "4.0"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["metrics"]["test/R@0.5"] for r in saved["runs"]] == [0.45, 0.612, 0.58]
    assert_png(tmp_path / "results.png")


def grounding_file(path: Path, spans: list[tuple[float, float]]) -> None:
    """A DaMO JSONL file of audio-only grounding records over 10 s videos, one per span."""
    path.parent.mkdir(parents=True, exist_ok=True)
    turns = [{"role": "user", "content": "When?"}, {"role": "assistant", "content": "{span:0}"}]
    path.write_text("".join(json.dumps({"id": f"g{i}", "video": f"v{i}.mp4", "duration": 10.0, "task": "grounding",
                                        "spans": [list(span)], "turns": turns, "modality": "audio"}) + "\n"
                            for i, span in enumerate(spans)))  # fmt: skip


def test_ablations_table_marks_the_audio_check(runner, write_summary, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_summary(out / "full", metrics(0.66) | {"test/R@0.5_audio": 0.6})
    write_summary(out / "no_audio", metrics(0.42) | {"test/R@0.5_audio": 0.30})  # <= 0.27 + 0.05
    write_summary(out / "skip_stage3", metrics(0.35), final_stage="stage4")
    write_summary(out / "skip_stage1", metrics(0.5), final_stage="stage3")  # stage 4 missing: stage3 counts
    no_data = f"data.root={tmp_path / 'absent'}"  # no annotations: the runs' own mean-span baseline only
    code = runner("ablations").main(["--collect", f"exp.out={out}", no_data])
    assert code == 0, "missing runs are listed, not an error, while some have figures"
    markdown = (out / "results.md").read_text()
    rows = table_rows(markdown)
    check = "audio R@0.5 ≤ const. span+0.05"
    assert rows["no audio"][check] == "yes" and rows["no audio"]["R@0.5 audio"] == "0.300"
    assert rows["full model"][check] == "no"
    assert rows["skip stage 1"]["stage"] == "stage3" and rows["skip stage 1"]["R@0.5"] == "0.500"
    assert rows["concat fusion"]["stage"] == "missing" and rows["concat fusion"]["R@0.5"] == "–"
    assert "0.300 ≤ 0.270 + 0.05: the model without audio does no better than a constant guess" in markdown
    assert "- concat: missing" in markdown and "- no_residual: missing" in markdown
    assert_png(out / "results.png")

    write_summary(out / "no_audio", metrics(0.42) | {"test/R@0.5_audio": 0.5})
    runner("ablations").main(["--collect", f"exp.out={out}", no_data])
    markdown = (out / "results.md").read_text()
    assert table_rows(markdown)["no audio"][check] == "no"
    assert "0.500 > 0.270 + 0.05: NOT within the margin: the picture gives audio answers away" in markdown

    # Events at either end of the video: the mean span (0.28-0.58) hits none of them, the best
    # constant span fitted on train (0-0.3, the commoner end) half of the test's audio queries.
    data = tmp_path / "data"
    grounding_file(data / "annotations" / "train.jsonl", [(0, 3)] * 3 + [(7, 10)] * 2)
    grounding_file(data / "annotations" / "test.jsonl", [(0, 3), (0, 3), (7, 10), (7, 10)])
    write_summary(out / "no_audio", metrics(0.42) | {"test/R@0.5_audio": 0.5})
    runner("ablations").main(["--collect", f"exp.out={out}", f"data.root={data}"])
    markdown = (out / "results.md").read_text()
    assert table_rows(markdown)["no audio"][check] == "yes", "0.5 <= best constant span 0.5 + 0.05"
    assert "Audio check on the test split's 4 audio-only grounding queries" in markdown
    assert "the mean span 0.000, the best constant span 0.500 (both fitted on the training split)" in markdown
    assert "Against the mean span alone it would fail (0.500 > 0.000 + 0.05)" in markdown
    grounding_only = {"test/R@0.5_audio": 0.2, "test/grounding_R@0.5_audio": 0.75}  # stage 4: grounding queries count
    write_summary(out / "no_audio", metrics(0.42) | grounding_only)
    runner("ablations").main(["--collect", f"exp.out={out}", f"data.annotations={data / 'annotations'}"])
    assert table_rows((out / "results.md").read_text())["no audio"][check] == "no", "0.75 > 0.5 + 0.05"


def test_data_efficiency_table_and_plot(runner, write_summary, tmp_path: Path) -> None:
    for n, r05 in ((100, 0.4), (200, 0.5)):
        write_summary(tmp_path / f"videos{n}", metrics(r05))
        write_summary(tmp_path / f"videos{n}_no_stage1", metrics(r05 - 0.1))
    code = runner("data_efficiency").main(["--collect", f"exp.out={tmp_path}", "exp.videos=[100,200]"])
    assert code == 0
    lines = [line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| 1") or
             line.startswith("| 2")]  # fmt: skip
    assert [line.split(" | ")[:4] for line in lines] == [
        ["| 100", "yes", "stage4", "0.600"], ["| 100", "no", "stage4", "0.500"],
        ["| 200", "yes", "stage4", "0.700"], ["| 200", "no", "stage4", "0.600"],
    ]  # R@0.3 is R@0.5 + 0.2 in these summaries
    assert [line.split(" | ")[4] for line in lines] == ["0.400", "0.300", "0.500", "0.400"]
    assert_png(tmp_path / "results.png")


def test_collect_with_nothing_there_exits_1(runner, tmp_path: Path) -> None:
    assert runner("fusion_depth").main(["--collect", f"exp.out={tmp_path}"]) == 1
    assert "- depth1: missing" in (tmp_path / "results.md").read_text()
    # a folder that is not there is a mistyped path, not an empty result: no table is made there
    with pytest.raises(SystemExit, match=r"fusion_depth: --collect: .*typo does not exist, so there is nothing"):
        runner("fusion_depth").main(["--collect", f"exp.out={tmp_path / 'typo'}"])
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("argv, message", [
    (["exp.bogus=1"], "exp.bogus=1: unknown option"),
    (["--bogus"], "--bogus: unknown flag"),
    (["exp.quick=maybe"], "expected true or false"),
    # a count below 1 sliced "all but the last n" videos; a flag list took any word for yes
    (["exp.videos=[-5,0]"], r"exp\.videos=\[-5,0\]: expected a list of whole numbers of at least 1, got \[-5, 0\]"),
    (["exp.videos=[abc]"], r"expected a list of whole numbers of at least 1, got \['abc'\]"),
    (["exp.videos=[true]"], r"expected a list of whole numbers of at least 1, got \[True\]"),
    (["exp.stage1=[maybe]"], r"exp\.stage1=\[maybe\]: expected a list of true or false, got \['maybe'\]"),
])  # fmt: skip
def test_bad_options_are_errors(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        common.parse_args(argv, "x", "doc", {"videos": [100, 200], "stage1": [True, False]})


def test_options_and_overrides_are_told_apart(tmp_path: Path) -> None:
    opts = common.parse_args(["--quick", "model.fuseformer.depth=3", "exp.only=[a,b]", "demo.skip=[stage1]"],
                             "fusion_depth", "doc")  # fmt: skip
    assert opts.quick and not opts.force and opts.only == ["a", "b"]
    assert opts.out == common.OUT_ROOT / "fusion_depth_quick", "quick runs never land where full runs are reused"
    assert opts.extra == ["model.fuseformer.depth=3", "demo.skip=[stage1]"]
    opts = common.parse_args([f"exp.out={tmp_path}", "exp.force=true", "exp.videos=[8]"], "d", "doc", {"videos": [1]})
    assert opts.out == tmp_path and opts.force and opts.params["videos"] == [8]


def test_help_prints_the_docstring_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        common.parse_args(["--help"], "x", "The runner's own story.")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "The runner's own story." in out and "--quick" in out and "exp.only" in out
