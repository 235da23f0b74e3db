"""What a person sees of validation on W&B: a predictions table and timeline pictures.

Only the first few validation samples are kept (their frames too, for thumbnails), so that
reporting costs nothing on the hot path. A batch of cached tower features (data.features) has no
frames: the few samples that get a picture then have their thumbnails decoded from the video file
when rank 0 publishes.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from damo_lit.metrics import best_iou

log = logging.getLogger(__name__)

THUMBNAILS = 4  # frames drawn along a timeline
THUMB_SIZE = 64  # pixels (H = W) of a thumbnail decoded from the file: stretched, as the model's frames
Thumbnails = list[tuple[float, np.ndarray]]  # (time in seconds, H x W x 3 uint8)


def span_iou(pred: Sequence[float] | None, gt_spans: Sequence[Sequence[float]]) -> float:
    """IoU of a top-1 prediction against its best ground-truth window (0 for no prediction)."""
    return float(best_iou(pred, gt_spans)) if pred is not None else 0.0


def _wandb_loggers(loggers: Iterable[Any]) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def batch_thumbnails(batch: Mapping[str, Any], row: int) -> Thumbnails:
    """A few of the batch's own frames of sample `row`, spread over its real (unpadded) frames."""
    frames, times = batch["frames"][row], batch["frame_times"][row]
    mask = batch.get("frame_mask")
    valid = np.flatnonzero(mask[row].cpu().numpy()) if mask is not None else np.arange(frames.shape[0])
    if len(valid) == 0:
        return []
    picks = valid[np.linspace(0, len(valid) - 1, num=min(THUMBNAILS, len(valid))).round().astype(int)]
    return [(float(times[j]), frames[j].permute(1, 2, 0).cpu().numpy()) for j in picks]


def file_thumbnails(path: str | None) -> Thumbnails:
    """A few frames decoded from the video file (for batches without frames); none when the file
    cannot be read, logged at debug level: a picture without thumbnails beats a failed validation."""
    if not path:
        return []
    from damo_lit.data.decode import DecodeParams, decode_frames

    try:
        frames, times, mask, _ = decode_frames(path, DecodeParams(num_frames=THUMBNAILS, frame_size=THUMB_SIZE))
    except Exception as err:  # noqa: BLE001 - whatever the reason, only the thumbnails are lost
        log.debug("timeline thumbnails: cannot decode %s (%s: %s)", path, type(err).__name__, err)
        return []
    return [(float(t), np.ascontiguousarray(f.transpose(1, 2, 0))) for f, t, ok in zip(frames, times, mask) if ok]


class PredictionLog:
    """Collects rows (and a few frames) during validation; publishes them at the epoch's end."""

    COLUMNS = ["video", "id", "modality", "question", "answer", "predicted span", "ground truth", "IoU"]

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        # per timeline: the batch's frames, or None to decode them from the row's video at publish
        self.thumbs: list[Thumbnails | None] = []
        self.max_rows = 0
        self.max_timelines = 0

    def reset(self, loggers: Iterable[Any]) -> None:
        wandb = _wandb_loggers(loggers)
        self.max_rows = max((getattr(lg, "damo_log_predictions", 16) for lg in wandb), default=0)
        self.max_timelines = max((getattr(lg, "damo_log_timelines", 4) for lg in wandb), default=0)
        self.rows, self.thumbs = [], []

    def add(self, rows: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        """Keep the first rows of validation; `batch` gives each row's video path and frames."""
        videos = batch.get("video") or [None] * len(rows)
        for i, row in enumerate(rows):
            if len(self.rows) >= self.max_rows:
                return
            self.rows.append({"video": videos[i], **row})
            if len(self.thumbs) < self.max_timelines:
                self.thumbs.append(batch_thumbnails(batch, i) if batch.get("frames") is not None else None)

    def publish(self, loggers: Iterable[Any], step: int) -> None:
        wandb = _wandb_loggers(loggers)
        if not wandb or not self.rows:
            return
        from damo_lit.viz.timeline import render_timeline

        data = [[str(r.get("video") or ""), r["id"], r.get("modality") or "", r.get("question", ""), r["answer"],
                 str(r["pred_spans"][0]) if r["pred_spans"] else "no span", str(r["gt_spans"]), round(r["iou"], 3)]
                for r in self.rows]
        images = [
            render_timeline(r["duration"], r["gt_spans"], [r["pred_spans"][0]] if r["pred_spans"] else None,
                            thumbs if thumbs is not None else file_thumbnails(r.get("video")),
                            title=f"{r['id']}: {r.get('question', '')}"[:90])
            for r, thumbs in zip(self.rows, self.thumbs)
        ]
        for logger in wandb:
            logger.log_table(key="val/predictions", columns=self.COLUMNS, data=data, step=step)
            if images:
                logger.log_image(key="val/timelines", images=images, step=step)
