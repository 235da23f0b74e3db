"""The ablations' shuffle test: a prior loses nothing when its answers change videos, reading the media does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from exp_helpers import REPO_ROOT  # noqa: F401  (puts the repo root on sys.path)

from experiments.ablations import shuffle


def rows(answers: list[tuple[float, float]], truths: list[tuple[float, float]], modality: str = "audio",
         duration: float = 10.0) -> list[dict]:
    return [{"pred_spans": [list(a)], "gt_spans": [list(t)], "duration": duration, "modality": modality}
            for a, t in zip(answers, truths)]  # fmt: skip


TRUTHS = [(float(i % 8), float(i % 8) + 2.0) for i in range(24)]  # 2 s events at 8 places in 10 s videos


def test_a_prior_loses_nothing_when_shuffled() -> None:
    result = shuffle.shuffle_test(rows([(3.0, 5.0)] * 24, TRUTHS))
    assert result is not None and result.queries == 24
    assert result.own == pytest.approx(3 / 24)  # only the 3 events at 3-5 s: those at 2 or 4 s overlap 1/3
    assert result.shuffled == pytest.approx(result.own) and result.drop == pytest.approx(0.0)


def test_reading_the_media_loses_when_shuffled() -> None:
    result = shuffle.shuffle_test(rows(TRUTHS, TRUTHS))
    assert result is not None and result.own == 1.0
    assert result.shuffled < 0.3 and result.shuffled_p95 < 1.0 and result.drop > 0.7


def test_only_the_asked_modality_counts_and_unparsed_answers_miss() -> None:
    mixed = rows(TRUTHS[:4], TRUTHS[:4]) + rows([(0.0, 9.0)] * 4, TRUTHS[:4], modality="visual")
    mixed[0]["pred_spans"] = []
    result = shuffle.shuffle_test(mixed)
    assert result is not None and result.queries == 4 and result.own == 0.75
    assert shuffle.shuffle_test(rows(TRUTHS[:1], TRUTHS[:1])) is None, "one query: nothing to shuffle"


def fake_eval(stage_dir: Path, out: Path, overrides: list[str], limit: int | None) -> list[str]:
    """A damo-eval stand-in: an oracle on audio queries, writes out/predictions.jsonl."""
    payload = json.dumps(rows(TRUTHS, TRUTHS))
    code = (f"import json,pathlib; rs=json.loads({payload!r}); "
            f"pathlib.Path({str(out)!r}, 'predictions.jsonl').write_text(''.join(json.dumps(r)+'\\n' for r in rs))")
    return [sys.executable, "-c", code]


def test_predictions_are_made_once_and_only_for_runs_with_weights(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shuffle, "eval_command", fake_eval)
    run = tmp_path / "no_audio"
    assert shuffle.predictions_of(run, "stage4", []) is None, "no weights: nothing to evaluate"
    (run / "stage4").mkdir(parents=True)
    (run / "stage4" / "weights.safetensors").write_bytes(b"")
    made = shuffle.predictions_of(run, "stage4", [])
    assert made == run / shuffle.EVAL_DIR / "predictions.jsonl" and len(shuffle.read_predictions(made)) == 24
    monkeypatch.setattr(shuffle, "eval_command", lambda *a: pytest.fail("predictions on disk are reused"))
    assert shuffle.predictions_of(run, "stage4", []) == made


def test_eval_command_keeps_the_runs_data_overrides(tmp_path: Path) -> None:
    cmd = shuffle.eval_command(tmp_path / "stage4", tmp_path / "out", ["data.root=/d", "trainer.devices=2",
                                                                       "model.audio.enabled=false", "paths.x=y"], 16)
    assert cmd[1:3] == ["-m", "damo_lit.cli.eval"] and f"ckpt={tmp_path / 'stage4'}" in cmd
    assert cmd[-3:] == ["limit=16", "data.root=/d", "paths.x=y"]
    assert "trainer.devices=2" not in cmd and "model.audio.enabled=false" not in cmd


def test_ablations_report_the_shuffle_test(runner, write_summary, tmp_path: Path) -> None:
    base = {"test/R@0.5": 0.6, "test/R@0.5_audio": 0.3, "test/baseline_R@0.5": 0.16, "test/baseline_R@0.5_audio": 0.1}
    for name, own in (("full", TRUTHS), ("no_audio", [(3.0, 5.0)] * 24)):
        write_summary(tmp_path / name, base)
        (tmp_path / name / shuffle.EVAL_DIR).mkdir()
        (tmp_path / name / shuffle.EVAL_DIR / "predictions.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows(own, TRUTHS)))
    assert runner("ablations").main([f"exp.out={tmp_path}", "--collect", "exp.only=[full,no_audio]"]) == 0
    markdown = (tmp_path / "results.md").read_text()
    assert "- full: R@0.5 1.000 with its own answers" in markdown
    assert "- no_audio: R@0.5 0.125 with its own answers, 0.125 shuffled" in markdown
    assert "no better on their own videos than on others' (within chance)" in markdown
    saved = json.loads((tmp_path / "shuffle.json").read_text())
    assert saved["full"]["drop"] > 0.7 and saved["no_audio"]["drop"] == pytest.approx(0.0)
