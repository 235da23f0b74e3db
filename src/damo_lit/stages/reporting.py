"""What a person sees of validation on W&B: a predictions table and timeline pictures.

Only the first few validation samples of rank 0 are kept (their frames too, for thumbnails),
so that reporting costs nothing on the hot path.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from damo_lit.metrics import best_iou


def span_iou(pred: Sequence[float] | None, gt_spans: Sequence[Sequence[float]]) -> float:
    """IoU of a top-1 prediction against its best ground-truth window (0 for no prediction)."""
    return float(best_iou(pred, gt_spans)) if pred is not None else 0.0


def _wandb_loggers(loggers: Iterable[Any]) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


class PredictionLog:
    """Collects rows (and a few frames) during validation; publishes them at the epoch's end."""

    COLUMNS = ["id", "modality", "question", "answer", "predicted span", "ground truth", "IoU"]

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.thumbs: list[list[tuple[float, np.ndarray]]] = []
        self.max_rows = 0
        self.max_timelines = 0

    def reset(self, loggers: Iterable[Any]) -> None:
        wandb = _wandb_loggers(loggers)
        self.max_rows = max((getattr(lg, "damo_log_predictions", 16) for lg in wandb), default=0)
        self.max_timelines = max((getattr(lg, "damo_log_timelines", 4) for lg in wandb), default=0)
        self.rows, self.thumbs = [], []

    def add(self, rows: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        for i, row in enumerate(rows):
            if len(self.rows) >= self.max_rows:
                return
            self.rows.append(dict(row))
            if len(self.thumbs) < self.max_timelines and "frames" in batch:
                frames = batch["frames"][i]
                times = batch["frame_times"][i]
                picks = np.linspace(0, frames.shape[0] - 1, num=min(4, frames.shape[0])).round().astype(int)
                self.thumbs.append([(float(times[j]), frames[j].permute(1, 2, 0).cpu().numpy()) for j in picks])

    def publish(self, loggers: Iterable[Any], step: int) -> None:
        wandb = _wandb_loggers(loggers)
        if not wandb or not self.rows:
            return
        from damo_lit.viz.timeline import render_timeline

        data = [[r["id"], r.get("modality") or "", r.get("question", ""), r["answer"],
                 str(r["pred_spans"][0]) if r["pred_spans"] else "no span", str(r["gt_spans"]), round(r["iou"], 3)]
                for r in self.rows]
        images = [
            render_timeline(r["duration"], r["gt_spans"], [r["pred_spans"][0]] if r["pred_spans"] else None,
                            thumbs, title=f"{r['id']}: {r.get('question', '')}"[:90])
            for r, thumbs in zip(self.rows, self.thumbs)
        ]
        for logger in wandb:
            logger.log_table(key="val/predictions", columns=self.COLUMNS, data=data, step=step)
            if images:
                logger.log_image(key="val/timelines", images=images, step=step)
