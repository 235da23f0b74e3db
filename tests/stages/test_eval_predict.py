"""damo-eval and damo-predict on a small checkpoint that the test trains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from damo_lit.cli.common import compose_run
from damo_lit.cli.train import run


@pytest.fixture(scope="module")
def stage3_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage3_run")
    overrides = [f"data.root={synthetic_root}", f"data.decoded_cache_dir={synthetic_root / 'decoded'}",
                 "data.generate=null", "data.num_workers=0", "data.batch_size=4", "logger=csv",
                 "callbacks.progress_bar=null", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                 "trainer.max_steps=3", "trainer.limit_val_batches=0", "test_after_fit=false"]
    run(compose_run("train", ["stage=stage3_temporal", *overrides], out))
    return out


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600)


def test_damo_eval_writes_predictions_and_metrics_that_damo_score_agrees_with(
        stage3_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    done = _cli("damo_lit.cli.eval", f"ckpt={stage3_run}", f"data.root={synthetic_root}", "data.generate=null",
                f"data.decoded_cache_dir={synthetic_root / 'decoded'}", "data.num_workers=0", "split=test",
                f"out={out}", "accelerator=cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    test_grounding = [json.loads(line) for line in (synthetic_root / "annotations" / "test.jsonl").read_text().splitlines()]
    test_grounding = [r for r in test_grounding if r["task"] == "grounding"]
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in test_grounding)
    for row in rows:
        assert {"id", "question", "answer", "pred_spans", "gt_spans", "duration", "modality", "iou"} <= set(row)
        assert row["question"].startswith(("when", "at what time"))
    report = json.loads((out / "metrics.json").read_text())
    assert report["stage"] == "stage3" and report["split"] == "test"
    metrics = report["metrics"]
    assert metrics["test/count"] == len(rows)
    # The scorer reads the same file and must agree with the evaluation.
    scored = _cli("damo_lit.cli.score", "grounding", "--pred", str(out / "predictions.jsonl"),
                  "--gt", str(synthetic_root / "annotations" / "test.jsonl"))
    assert scored.returncode == 0, scored.stderr
    figures = json.loads(scored.stdout)
    for key in ("R@0.5", "mIoU", "parse_rate"):
        assert figures[key] == pytest.approx(metrics[f"test/{key}"], abs=1e-6)


@pytest.mark.parametrize("clip,has_audio", [("dog_barking.mp4", True), ("silence_girl.mp4", False)])
def test_damo_predict_on_real_clips(stage3_run: Path, shared_data: Path, clip: str, has_audio: bool) -> None:
    done = _cli("damo_lit.cli.predict", f"ckpt={stage3_run}", f"video={shared_data / 'videos' / clip}",
                "question=when does the dog bark?")
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["has_audio"] is has_audio
    assert isinstance(answer["answer"], str) and isinstance(answer["spans"], list)
    assert answer["duration"] == pytest.approx({"dog_barking.mp4": 7.2, "silence_girl.mp4": 11.7}[clip], abs=0.3)
    for start, end in answer["spans"]:
        assert 0 <= start <= end <= answer["duration"] + 1e-6


def test_damo_predict_names_a_missing_video(stage3_run: Path, tmp_path: Path) -> None:
    done = _cli("damo_lit.cli.predict", f"ckpt={stage3_run}", f"video={tmp_path / 'nope.mp4'}", "question=when?")
    assert done.returncode != 0 and "nope.mp4" in done.stderr


@pytest.mark.parametrize("stage", ["stage1_align", "stage2_bridge", "stage3_temporal", "stage4_dialogue"])
def test_damo_eval_scores_the_tasks_the_stage_evaluated_in_training(stage: str) -> None:
    """damo-eval's default tasks are the stage's own (stage 4: grounding queries and dialogues), so that
    its figures are the ones the run logged."""
    from damo_lit.cli.common import compose
    from damo_lit.cli.eval import stage_eval_tasks

    expected = list(compose("train", [f"stage={stage}"]).data.eval_tasks)
    assert stage_eval_tasks(stage.split("_")[0]) == expected
    if stage == "stage4_dialogue":
        assert expected == ["grounding", "dialogue"]


def test_grounding_figures_split_by_task_as_the_stage_logs_them() -> None:
    from damo_lit.cli.eval import grounding_figures

    rows = [{"task": "grounding", "pred_spans": [[0.0, 2.0]], "gt_spans": [[0.0, 2.0]], "modality": "audio"},
            {"task": "dialogue", "pred_spans": [], "gt_spans": [[1.0, 3.0]], "modality": None}]
    figures = grounding_figures(rows)
    assert figures["R@0.5"] == 0.5 and figures["count"] == 2
    assert grounding_figures(rows[:1])["R@0.5"] == 1.0 and grounding_figures(rows[1:])["R@0.5"] == 0.0
    assert all(v == v for v in figures.values()), "no NaN figures"
