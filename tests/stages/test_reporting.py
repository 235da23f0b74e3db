"""What validation shows on W&B: the predictions table and the timeline pictures, published through a
real offline WandbLogger and read back from the run's files; thumbnails decoded from the video file
when the batch has no frames (stages reading cached features)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from damo_lit.cli.loggers import wandb_logger
from damo_lit.data.synthetic import write_mp4
from damo_lit.stages.reporting import THUMB_SIZE, THUMBNAILS, PredictionLog, file_thumbnails, span_iou

FPS, SECONDS = 10, 4
# Four solid colours, one per second of the test video: a thumbnail's colour tells its time.
COLOURS = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 30]], dtype=np.uint8)
# Timeline pictures are 2.2 in tall without thumbnails, 3.4 in with them (viz.timeline, 100 dpi).
PLAIN_HEIGHT, THUMBS_HEIGHT = 220, 340


@pytest.fixture
def wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline, no credentials; the logger factory's WANDB_* settings are undone after the test."""
    for var in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def video(tmp_path: Path) -> Path:
    """A 4 s, 10 fps video whose colour changes every second."""
    frames = np.repeat(COLOURS, FPS, axis=0)[:, None, None, :] * np.ones((1, 48, 64, 1), dtype=np.uint8)
    path = tmp_path / "colours.mp4"
    write_mp4(path, frames, FPS, None)
    return path


def colour_at(seconds: float) -> np.ndarray:
    return COLOURS[min(int(seconds), SECONDS - 1)].astype(float)


def row(i: int, pred: list[float] | None) -> dict[str, Any]:
    """A row as the temporal stages make it (stages/temporal.py, TemporalStage.answer)."""
    gt = [[1.0, 2.5]]
    return {"id": f"q{i}", "task": "grounding", "modality": "visual", "question": f"when does it turn green? ({i})",
            "answer": "no idea" if pred is None else f"from {pred[0]} to {pred[1]}", "reference": "from 25 to 62",
            "pred_spans": [] if pred is None else [pred], "gt_spans": gt, "duration": float(SECONDS), "iou": span_iou(pred, gt)}


def frames_batch(videos: list[str]) -> dict[str, Any]:
    """A decoded batch's media keys: 8 frames of 32 x 32, the last two padding."""
    n = len(videos)
    frames = torch.randint(0, 255, (n, 8, 3, 32, 32), dtype=torch.uint8)
    return {"video": videos, "frames": frames, "frame_times": torch.linspace(0, 3.5, 8).repeat(n, 1),
            "frame_mask": torch.tensor([[True] * 6 + [False] * 2] * n), "duration": torch.full((n,), float(SECONDS))}


def run_files(save_dir: Path) -> Path:
    (files,) = save_dir.glob("wandb/offline-run-*/files")
    return files


def test_publish_logs_the_table_and_timelines_to_an_offline_wandb_run(wandb_env, video: Path, tmp_path: Path) -> None:
    save_dir = tmp_path / "run"
    logger = wandb_logger(project="damo-test", save_dir=str(save_dir), name="stage3", log_predictions=5,
                          log_timelines=4)
    calls: list[dict[str, Any]] = []
    experiment = logger.experiment
    real_log = experiment.log

    def spy(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(dict(data))
        return real_log(data, *args, **kwargs)

    try:
        experiment.log = spy
        log = PredictionLog()
        log.reset([logger])
        # batch 1 carries frames (decoded media); batch 2 only the video files (cached features):
        # its first row's file is readable, its second's is not
        log.add([row(0, [1.2, 2.0]), row(1, None)], frames_batch([str(video), str(video)]))
        log.add([row(2, [0.0, 1.0]), row(3, [2.0, 3.0]), row(4, [3.0, 4.0]), row(5, [1.0, 2.0])],
                {"video": [str(video), str(tmp_path / "gone.mp4"), str(video), str(video)]})
        log.publish([logger], step=7)
    finally:
        experiment.finish()

    # what went to the run: a wandb.Table and four wandb.Images, at the trainer's step
    (table_call,) = [c for c in calls if "val/predictions" in c]
    (image_call,) = [c for c in calls if "val/timelines" in c]
    import wandb

    assert isinstance(table_call["val/predictions"], wandb.Table)
    assert [type(i) for i in image_call["val/timelines"]] == [wandb.Image] * 4
    assert table_call["trainer/global_step"] == image_call["trainer/global_step"] == 7

    # and the run's files: the table as W&B stores it ...
    files = run_files(save_dir)
    (table_file,) = files.glob("media/table/val/predictions_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["video", "id", "modality", "question", "answer", "predicted span", "ground truth",
                                "IoU"]
    assert len(table["data"]) == 5, "log_predictions=5 rows, the sixth left out"
    first, second = table["data"][:2]
    assert first == [str(video), "q0", "visual", "when does it turn green? (0)", "from 1.2 to 2.0", "[1.2, 2.0]",
                     "[[1.0, 2.5]]", 0.533]
    assert second[:2] == [str(video), "q1"] and second[5] == "no span" and second[7] == 0.0
    assert [r[0] for r in table["data"][2:]] == [str(video), str(tmp_path / "gone.mp4"), str(video)]

    # ... and one timeline per picture row: thumbnails from the batch's frames, from the file, and
    # none for the file that is gone
    pngs = sorted(files.glob("media/images/val/timelines_*.png"))
    assert len(pngs) == 4, "log_timelines=4 pictures"
    heights = sorted(Image.open(p).size[1] for p in pngs)
    assert heights == [PLAIN_HEIGHT] + [THUMBS_HEIGHT] * 3


def test_no_wandb_logger_means_nothing_is_kept() -> None:
    from lightning.pytorch.loggers import CSVLogger

    log = PredictionLog()
    log.reset([CSVLogger("unused")])
    log.add([row(0, [1.0, 2.0])], frames_batch(["a.mp4"]))
    assert log.rows == [] and log.thumbs == []


def test_thumbnails_come_from_the_batch_frames_when_it_has_them() -> None:
    log = PredictionLog()
    log.max_rows, log.max_timelines = 4, 1
    batch = frames_batch(["a.mp4", "b.mp4"])
    log.add([row(0, None), row(1, None)], batch)
    assert [r["video"] for r in log.rows] == ["a.mp4", "b.mp4"]
    (thumbs,) = log.thumbs
    assert [t for t, _ in thumbs] == pytest.approx([0.0, 1.0, 1.5, 2.5]), "spread over the 6 real frames"
    np.testing.assert_array_equal(thumbs[1][1], batch["frames"][0, 2].permute(1, 2, 0).numpy())


def test_thumbnails_decoded_from_the_file_sit_at_their_times(video: Path) -> None:
    thumbs = file_thumbnails(str(video))
    assert len(thumbs) == THUMBNAILS
    times = [t for t, _ in thumbs]
    assert times == sorted(times) and 0.0 <= times[0] and times[-1] < SECONDS
    for seconds, image in thumbs:
        assert image.shape == (THUMB_SIZE, THUMB_SIZE, 3) and image.dtype == np.uint8
        assert np.abs(image.reshape(-1, 3).mean(0) - colour_at(seconds)).max() < 20, seconds


def test_an_unreadable_video_gives_no_thumbnails_and_a_debug_line(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 20)
    with caplog.at_level(logging.DEBUG, logger="damo_lit.stages.reporting"):
        assert file_thumbnails(str(tmp_path / "gone.mp4")) == []
        assert file_thumbnails(str(broken)) == []
        assert file_thumbnails(None) == []
    messages = [r.getMessage() for r in caplog.records if r.name == "damo_lit.stages.reporting"]
    assert len(messages) == 2 and all(r.levelno == logging.DEBUG for r in caplog.records)
    assert "gone.mp4" in messages[0] and "file not found" in messages[0]
    assert "broken.mp4" in messages[1] and "decord cannot read" in messages[1]


def test_stage3_validation_publishes_to_wandb(wandb_env, tiny_overrides: list[str], tmp_path: Path) -> None:
    from damo_lit.cli.common import compose_run
    from damo_lit.cli.train import build_run

    overrides = [o for o in tiny_overrides if not o.startswith("logger=")]
    cfg = compose_run("train", ["stage=stage3_temporal", *overrides, "logger=wandb", "logger.wandb.log_timelines=2",
                                "trainer.limit_val_batches=1"], tmp_path)
    stage, datamodule, trainer = build_run(cfg)
    try:
        trainer.validate(stage, datamodule=datamodule)
    finally:
        trainer.logger.experiment.finish()
    files = run_files(tmp_path)
    (table_file,) = files.glob("media/table/val/predictions_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][0] == "video" and len(table["data"]) >= 2
    assert all(Path(r[0]).is_file() for r in table["data"]), "the video column names the files"
    pngs = list(files.glob("media/images/val/timelines_*.png"))
    assert len(pngs) == 2 and all(Image.open(p).size[1] == THUMBS_HEIGHT for p in pngs)
