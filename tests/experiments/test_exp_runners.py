"""The runners' run side with a fake damo-demo (tests/experiments/fake_demo.py): which runs, with
which overrides in which order, resume, --force, failures, the derived data roots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments import common


def calls(out: Path) -> list[str]:
    path = out / "calls.txt"
    return path.read_text().split() if path.is_file() else []


def argv_of(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "summary.json").read_text())["argv"]


def test_runs_then_reuses_then_forces(runner, fake_demo, tmp_path: Path) -> None:
    ablations = runner("ablations")
    argv = ["--quick", f"exp.out={tmp_path}", "exp.only=[no_audio,skip_stage3]", "trainer.devices=1"]
    assert ablations.main(argv) == 0
    assert calls(tmp_path) == ["no_audio", "skip_stage3"]
    expected = [*common.QUICK_OVERRIDES, "trainer.devices=1", "model.audio.enabled=false"]
    assert argv_of(tmp_path / "no_audio")[1:] == expected, "quick, the user's, the run's"
    skip3 = json.loads((tmp_path / "skip_stage3" / "summary.json").read_text())
    assert "stage3" not in skip3["stages"] and "demo.skip=[stage3]" in skip3["argv"]
    assert "| skip stage 3 | stage4 | 0.810 | 0.610 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "no_audio" / "demo.log").is_file() and (tmp_path / "no_audio" / "run.json").is_file()

    assert ablations.main(argv) == 0
    assert calls(tmp_path) == ["no_audio", "skip_stage3"], "finished runs with the same overrides are reused"
    assert ablations.main([*argv, "trainer.devices=2"]) == 0
    assert calls(tmp_path)[2:] == ["no_audio", "skip_stage3"], "other overrides: run again"
    assert ablations.main([*argv, "trainer.devices=2", "--force", "exp.only=[no_audio]"]) == 0
    assert calls(tmp_path)[4:] == ["no_audio"]


def test_a_path_reached_through_a_link_names_the_same_run(runner, fake_demo, tmp_path: Path) -> None:
    """A finished run is reused, not wiped and rerun, when its path overrides only differ by a
    symlink (a second clone whose outputs/ links to the first one's)."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    ablations = runner("ablations")
    out = tmp_path / "out"
    assert ablations.main([f"exp.out={out}", "exp.only=[no_audio]", f"data.root={data}"]) == 0
    assert ablations.main([f"exp.out={out}", "exp.only=[no_audio]", f"data.root={tmp_path / 'link'}"]) == 0
    assert calls(out) == ["no_audio"]
    assert common.canonical_words([f"data.root={tmp_path / 'link' / '..' / 'data'}", "seed=1"]) == \
        [f"data.root={data.resolve()}", "seed=1"]  # fmt: skip


def test_a_failed_run_is_reported_and_rerun(runner, fake_demo, tmp_path: Path) -> None:
    ablations = runner("ablations")
    argv = [f"exp.out={tmp_path}", "exp.only=[full,concat]"]
    assert ablations.main([*argv, "fake.fail=true"]) == 1
    markdown = (tmp_path / "results.md").read_text()
    assert "- full: failed damo-demo exit code 3" in markdown and "- concat: failed" in markdown
    assert ablations.main(argv) == 0
    assert calls(tmp_path) == ["full", "concat", "full", "concat"], "a partial summary is never reused"


def test_fusion_depth_expands_hydra_sweeps(runner, fake_demo, tmp_path: Path) -> None:
    fusion = runner("fusion_depth")
    assert fusion.main([f"exp.out={tmp_path}"]) == 0
    assert calls(tmp_path) == ["depth1", "depth2", "depth4"]
    assert argv_of(tmp_path / "depth4")[-1] == "model.fuseformer.depth=4"
    assert "| 4 | stage4 | 0.610 | 0.410 |" in (tmp_path / "results.md").read_text()  # fake R@0.5 = depth / 10

    out = tmp_path / "grid"
    assert fusion.main([f"exp.out={out}", "model.fuseformer.depth=range(2,4)", "model.fuseformer.heads=2,4",
                        "trainer.devices=1"]) == 0  # fmt: skip
    assert calls(out) == ["depth2_heads2", "depth2_heads4", "depth3_heads2", "depth3_heads4"]
    assert argv_of(out / "depth3_heads2")[1:] == ["trainer.devices=1", "model.fuseformer.depth=3",
                                                  "model.fuseformer.heads=2"]  # fmt: skip
    runs, rest = fusion.build_runs(["model.fuseformer.depth=6", "seed=1"])
    assert [r.name for r in runs] == ["depth6"] and rest == ["seed=1"]


def test_runners_without_a_sweep_refuse_one(runner, fake_demo, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="only understood by experiments/fusion_depth"):
        runner("ablations").main([f"exp.out={tmp_path}", "seed=1,2"])
    with pytest.raises(SystemExit, match=r"exp.only: unknown run\(s\) \['nope'\]"):
        runner("ablations").main([f"exp.out={tmp_path}", "exp.only=[nope]"])


def make_full_set(root: Path, videos: int = 5) -> Path:
    """A damo_jsonl folder like the synthetic set's: several records per training video."""
    (root / "annotations").mkdir(parents=True)
    (root / "videos").mkdir()
    train = [json.dumps({"id": f"t{v}-{k}", "video": f"videos/train_{v:06d}.mp4", "task": task})
             for v in range(videos) for k, task in enumerate(("caption", "grounding", "grounding"))]  # fmt: skip
    (root / "annotations" / "train.jsonl").write_text("\n".join(train) + "\n")
    for split in ("val", "test"):
        (root / "annotations" / f"{split}.jsonl").write_text(json.dumps({"id": split, "video": "videos/x.mp4"}) + "\n")
    return root


def test_data_efficiency_writes_derived_roots(runner, fake_demo, tmp_path: Path) -> None:
    full = make_full_set(tmp_path / "full")
    out = tmp_path / "out"
    data = [f"data.root={full}", "data.generate=null"]
    assert runner("data_efficiency").main([f"exp.out={out}", "exp.videos=[2,4]", *data]) == 0
    assert calls(out) == ["videos2", "videos2_no_stage1", "videos4", "videos4_no_stage1"]
    train = [json.loads(line) for line in (out / "data_2" / "annotations" / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in train] == ["t0-0", "t0-1", "t0-2", "t1-0", "t1-1", "t1-2"]
    assert len((out / "data_4" / "annotations" / "train.jsonl").read_text().splitlines()) == 12
    for split in ("val", "test"):
        assert (out / "data_2" / "annotations" / f"{split}.jsonl").read_text() == \
            (full / "annotations" / f"{split}.jsonl").read_text()  # fmt: skip
    assert (out / "data_2" / "videos").resolve() == (full / "videos").resolve()
    argv = argv_of(out / "videos2_no_stage1")
    assert argv[-5:] == [f"data.root={out / 'data_2'}", f"data.annotations={out / 'data_2' / 'annotations'}",
                         f"data.video_dir={full}", "data.generate=null", "demo.skip=[stage1]"]  # fmt: skip
    assert "demo.skip=[stage1]" not in argv_of(out / "videos2")
    rows = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| 4 ")]
    assert [row.split(" | ")[1] for row in rows] == ["yes", "no"]

    with pytest.raises(SystemExit, match="asks for 9 training videos; .* has 5"):
        runner("data_efficiency").main([f"exp.out={out}", "exp.videos=[9]", *data])


def test_data_efficiency_generates_the_full_set_when_absent(runner, tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    annotations, video_dir = runner("data_efficiency").full_set(
        [f"data.root={root}", "data.generate.videos=10", "data.generate.max_seconds=9", "data.generate.workers=1"])
    assert annotations == root / "annotations" and video_dir == root
    assert len({json.loads(line)["video"] for line in (annotations / "train.jsonl").read_text().splitlines()}) == 8


# The embedded default's Fuseformer depth (conf/model/damo_tiny.yaml), and another one.
DEPTH = int(common.stage_config([]).model.fuseformer.depth)
OTHER = DEPTH + 3


def test_the_same_run_in_another_experiment_is_reused(runner, fake_demo, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "OUT_ROOT", tmp_path)
    assert runner("ablations").main([f"exp.out={tmp_path / 'ablations'}", "exp.only=[full,no_audio]"]) == 0
    fusion = tmp_path / "fusion_depth"
    assert runner("fusion_depth").main([f"exp.out={fusion}", f"model.fuseformer.depth={DEPTH},{OTHER}"]) == 0
    assert calls(fusion) == [f"depth{OTHER}"], "the model's default depth: the ablations' full run"
    assert json.loads((fusion / f"depth{DEPTH}" / "run.json").read_text())["same_as"] == str(tmp_path / "ablations" / "full")
    assert (fusion / f"depth{DEPTH}" / "summary.json").read_text() == (tmp_path / "ablations" / "full" / "summary.json").read_text()
    assert runner("fusion_depth").main([f"exp.out={fusion}", f"model.fuseformer.depth={DEPTH}", "--force"]) == 0
    assert calls(fusion) == [f"depth{OTHER}", f"depth{DEPTH}"], "--force runs it for real"

    outside = tmp_path.parent / f"{tmp_path.name}_elsewhere"
    assert runner("fusion_depth").main([f"exp.out={outside}", f"model.fuseformer.depth={DEPTH}"]) == 0
    assert calls(outside) == [f"depth{DEPTH}"], "outside the experiments' root nothing is shared"


def test_runs_are_shared_when_the_outputs_folder_is_a_link(runner, fake_demo, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """outputs/ linked to scratch storage, as on clusters: the runs under it are still twins."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "experiments").symlink_to(scratch)
    monkeypatch.setattr(common, "OUT_ROOT", tmp_path / "experiments")
    assert runner("ablations").main(["exp.only=[full]"]) == 0
    assert runner("fusion_depth").main([f"model.fuseformer.depth={DEPTH}"]) == 0
    assert calls(scratch / "fusion_depth") == [], "the ablations' full run is the default depth's run"
    assert json.loads((scratch / "fusion_depth" / f"depth{DEPTH}" / "run.json").read_text())["same_as"] == \
        str(scratch / "ablations" / "full")  # fmt: skip


def test_a_run_of_another_demo_recipe_is_neither_reused_nor_a_twin(runner, fake_demo, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs made before conf/demo.yaml's stages changed (other budgets) are other runs."""
    monkeypatch.setattr(common, "OUT_ROOT", tmp_path)
    ablations = tmp_path / "ablations"
    assert runner("ablations").main([f"exp.out={ablations}", "exp.only=[full]"]) == 0
    assert json.loads((ablations / "full" / "run.json").read_text())["recipe"] == common.demo_recipe()
    assert runner("ablations").main([f"exp.out={ablations}", "exp.only=[full]"]) == 0
    assert calls(ablations) == ["full"], "same recipe: reused"

    monkeypatch.setattr(common, "demo_recipe", lambda: "0123456789ab")
    fusion = tmp_path / "fusion_depth"
    assert runner("fusion_depth").main([f"exp.out={fusion}", f"model.fuseformer.depth={DEPTH}"]) == 0
    assert calls(fusion) == [f"depth{DEPTH}"], "the ablations' full run was made under another recipe: no twin"
    assert runner("ablations").main([f"exp.out={ablations}", "exp.only=[full]"]) == 0
    assert calls(ablations) == ["full"], "its own run is out of date, and fusion_depth's run at that depth is its twin now"
    assert json.loads((ablations / "full" / "run.json").read_text())["same_as"] == str(fusion / f"depth{DEPTH}")
    assert runner("ablations").main([f"exp.out={ablations}", "exp.only=[full]", "--force"]) == 0
    assert calls(ablations) == ["full", "full"]


def test_the_recipe_fingerprint_ignores_comments_and_follows_the_budgets(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    monkeypatch.setattr(common, "CONF_DIR", conf)
    budgets = "stages:\n  stage3:\n    overrides: [trainer.max_steps={}]\n"
    (conf / "demo.yaml").write_text(budgets.format(680))
    before = common.demo_recipe()
    (conf / "demo.yaml").write_text("# a comment\nout_dir: elsewhere\n" + budgets.format(680))
    assert common.demo_recipe() == before
    (conf / "demo.yaml").write_text(budgets.format(760))
    assert common.demo_recipe() != before


def test_the_recipe_fingerprint_follows_the_model_and_stage_defaults(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A run made before damo_tiny's defaults (or a stage's lr) changed is of another recipe."""
    import damo_lit.cli.common as cli_common

    conf = tmp_path / "conf"
    shutil.copytree(common.CONF_DIR, conf)
    for module in (common, cli_common):
        monkeypatch.setattr(module, "CONF_DIR", conf)
    common._composed_defaults.cache_clear()
    before = common.demo_recipe()
    tiny = conf / "model" / "damo_tiny.yaml"
    text = tiny.read_text()
    # a memory knob is no recipe change (runs made before it existed stay valid)
    assert "  chunk_size: 0" in text
    tiny.write_text(text.replace("  chunk_size: 0", "  chunk_size: 7"))
    common._composed_defaults.cache_clear()
    assert common.demo_recipe() == before
    tiny.write_text(text)
    assert "\n  depth: " in text
    tiny.write_text(text.replace("\n  depth: ", "\n  depth: 3 #", 1))
    common._composed_defaults.cache_clear()
    after_model = common.demo_recipe()
    assert after_model != before
    stage = conf / "stage" / "stage3_temporal.yaml"
    stage.write_text(stage.read_text().replace("weight_decay: 0.02", "weight_decay: 0.05", 1))
    common._composed_defaults.cache_clear()
    assert common.demo_recipe() not in (before, after_model)
    common._composed_defaults.cache_clear()


def test_jobs_run_side_by_side_with_their_share_of_the_cores(runner, fake_demo, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common.os, "cpu_count", lambda: 4)
    argv = [f"exp.out={tmp_path}", "exp.only=[full,no_audio,concat]", "exp.jobs=2"]
    assert runner("ablations").main(argv) == 0
    assert sorted(calls(tmp_path)) == ["concat", "full", "no_audio"]
    for name in ("full", "no_audio", "concat"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["omp_threads"] == "2"
        assert json.loads((tmp_path / name / "run.json").read_text())["threads"] == 2
    rows = [line.split(" | ")[0] for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| full model", "| no audio", "| concat fusion"], "the table keeps the runs' order"
    with pytest.raises(SystemExit, match="exp.jobs=0: expected a whole number"):
        runner("ablations").main([f"exp.out={tmp_path}", "exp.jobs=0"])


def test_data_efficiency_on_the_whole_set_is_the_full_run(runner, fake_demo, tmp_path: Path) -> None:
    full = make_full_set(tmp_path / "full", videos=4)
    out = tmp_path / "out"
    assert runner("data_efficiency").main([f"exp.out={out}", "exp.videos=[2,4]", f"data.root={full}",
                                           "data.generate=null"]) == 0  # fmt: skip
    assert argv_of(out / "videos4")[1:] == [f"data.root={full}", "data.generate=null"]
    assert argv_of(out / "videos4_no_stage1")[-1] == "demo.skip=[stage1]" and not (out / "data_4").exists()


def test_results_name_the_commit_of_each_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A run is reused while the configs stay the same, even after the code changed: the notes say
    which commit each row comes from, and that --force reruns rows made at another one."""
    from damo_lit.cli import demo

    monkeypatch.setattr(demo, "code_version", lambda root=None: {"commit": "abc1234", "dirty": False})
    run = common.Run("full", {"run": "full"})

    def outcome(name: str, code: dict | None) -> common.Outcome:
        summary = {"stages": {"stage4": {"test/R@0.5": 0.6}}, "seconds": {"total": 60}, "code": code}
        return common.Outcome(common.Run(name, {"run": name}), tmp_path / name, "reused", summary)

    here = [outcome("a", {"commit": "abc1234", "dirty": False}), outcome("b", {"commit": "abc1234", "dirty": False})]
    assert common.code_note(here).endswith("This checkout: abc1234.")
    assert "abc1234: a, b" in common.code_note(here)
    mixed = [*here, outcome("c", {"commit": "0ff0ff0", "dirty": True}), outcome("d", None)]
    note = common.code_note(mixed)
    assert "0ff0ff0+: c" in note and "?: d" in note and "--force reruns them here" in note
    assert common.Outcome(run, tmp_path, "missing").commit == "?"
