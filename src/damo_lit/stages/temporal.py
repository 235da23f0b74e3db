"""Stages 3 and 4: timestamped answers (temporal perception, then dialogues), LoRA on.

Training is the next-token loss on the answers. Validation and test generate the final answer
of each sample, parse its span and score it: R@0.3/0.5/0.7, mIoU, the same per modality the
query needs, and the parse rate. When a split evaluates more than one task (stage 4: grounding
queries and dialogues), the figures over all queries come with the same per task, prefixed
(`test/dialogue_R@0.5`). The test also scores two constant-span baselines fitted on the training
set on the same queries, so every run reports what "no learning" gives: the mean relative span
(`test/baseline_*`) and the relative span with the best training R@0.5 (`test/baseline_best_*`).
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from damo_lit.data.schema import TASKS
from damo_lit.metrics import GroundingMetrics
from damo_lit.stages.base import DaMOStage
from damo_lit.stages.reporting import PredictionLog, span_iou


class TemporalStage(DaMOStage):
    """Stage 3 (temporal perception) or stage 4 (dialogue): same loss, same metrics."""

    def __init__(self, *args: Any, generation: Mapping[str, Any] | None = None,
                 span_prior: Sequence[float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, generation=generation, **kwargs)
        self.max_new_tokens = int((generation or {}).get("max_new_tokens", 24))
        self.span_prior = tuple(span_prior) if span_prior is not None else None
        self.best_span_prior: tuple[float, float] | None = None  # set with span_prior by damo-train
        self.metrics = torch.nn.ModuleDict({
            "val": GroundingMetrics(), "test": GroundingMetrics(), "baseline": GroundingMetrics(),
            "baseline_best": GroundingMetrics(),
            **{f"{split}_{task}": GroundingMetrics() for split in ("val", "test") for task in TASKS},
        })
        self.prediction_log = PredictionLog()

    def baselines(self) -> dict[str, tuple[float, float] | None]:
        """The constant relative spans the test scores beside the model, by metric prefix."""
        return {"baseline": self.span_prior, "baseline_best": self.best_span_prior}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self.lm_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=self.batch_size_of(batch))
        return loss

    # -- evaluation -----------------------------------------------------------------------------
    def answer(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """LM loss on the batch plus generated answers with their parsed spans, one row per sample."""
        if self.span_parser is None:
            raise ValueError(f"stage {self.stage_name}: no span parser was handed in (the CLI sets it)")
        loss, embeds = self.lm_loss(batch)
        texts = self.generate_text(batch, embeds, self.max_new_tokens)
        rows = []
        durations = batch["duration"].tolist()
        questions = batch.get("question") or [""] * len(texts)
        padding = batch["padding"].tolist() if "padding" in batch else [False] * len(texts)
        videos = batch.get("video") or [None] * len(texts)
        for i, text in enumerate(texts):
            spans = self.span_parser(text, durations[i])
            gt = [tuple(map(float, s)) for s in batch["spans"][i]]
            top = spans[0] if spans else None
            rows.append({
                "id": batch["sample_id"][i], "video": videos[i], "task": batch["task"][i], "modality": batch["modality"][i],
                "question": questions[i], "answer": text, "reference": batch["answer_text"][i],
                "pred_spans": [list(s) for s in spans], "gt_spans": [list(s) for s in gt],
                "duration": durations[i], "iou": span_iou(top, gt), "padding": bool(padding[i]),
            })
        return loss, rows

    def _evaluate(self, split: str, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        loss, rows = self.answer(batch)
        size = self.batch_size_of(batch)
        self.log(f"{split}/loss", loss, batch_size=size, sync_dist=True)
        # Padding (EvalSampler) trails a rank's last batch: the real rows are a prefix, in batch order.
        rows = [r for r in rows if not r["padding"]]
        preds = [tuple(r["pred_spans"][0]) if r["pred_spans"] else None for r in rows]
        self.metrics[split].update(preds, [r["gt_spans"] for r in rows], [r["modality"] for r in rows])
        for task in TASKS:
            mine = [i for i, r in enumerate(rows) if r["task"] == task]
            if mine:
                self.metrics[f"{split}_{task}"].update([preds[i] for i in mine], [rows[i]["gt_spans"] for i in mine],
                                                       [rows[i]["modality"] for i in mine])
        if split == "test":
            for name, prior in self.baselines().items():
                if prior is not None:
                    base = [(prior[0] * r["duration"], prior[1] * r["duration"]) for r in rows]
                    self.metrics[name].update(base, [r["gt_spans"] for r in rows], [r["modality"] for r in rows])
        return rows

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        rows = self._evaluate("val", batch)
        self.prediction_log.add(rows, batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        _, rows = self.answer(batch)
        return [r for r in rows if not r.pop("padding")]

    def _log_split(self, split: str) -> None:
        values = self.metrics[split].compute()
        self.metrics[split].reset()
        # Every rank computes every task's figures (a collective), then all agree on which to log.
        per_task = {}
        for task in TASKS:
            metric = self.metrics[f"{split}_{task}"]
            with warnings.catch_warnings():  # a task this rank never saw: empty states are expected
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                per_task[task] = metric.compute()
            metric.reset()
        present = [task for task, figures in per_task.items() if float(figures["count"]) > 0]
        if len(present) > 1:
            values = {**values, **{f"{task}_{k}": v for task in present for k, v in per_task[task].items()}}
        self.log_metrics(split, {k: v for k, v in values.items() if not np.isnan(float(v))})

    def on_validation_epoch_start(self) -> None:
        self.prediction_log.reset(self.loggers)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")
        if self.trainer.is_global_zero:
            self.prediction_log.publish(self.loggers, step=self.global_step)

    def on_test_epoch_end(self) -> None:
        self._log_split("test")
        for name, prior in self.baselines().items():
            if prior is None:
                continue
            values = self.metrics[name].compute()
            # a prior always states a span: its parse rate says nothing
            self.log_metrics("test", {f"{name}_{k}": v for k, v in values.items()
                                      if k != "parse_rate" and not np.isnan(float(v))})
            self.metrics[name].reset()
