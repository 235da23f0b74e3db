"""Callbacks every stage run uses: the stage's lean weights and LoRA adapter at the end of fit,
and the report of videos that failed to decode."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from damo_lit.stages.weights import save_stage_weights, stage_state

log = logging.getLogger(__name__)


class StageArtifacts(L.Callback):
    """At the end of fit, write DIR/weights.safetensors + DIR/stage.json (what the next stage's
    `stage.init_from=DIR` reads) and, when LoRA is on, DIR/adapter in peft's own format."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = stage_state(pl_module.model, pl_module.persistent_names())  # collective under FSDP
        if not trainer.is_global_zero:
            return
        path = save_stage_weights(self.dirpath, state, pl_module.stage_meta())
        size_mb = path.stat().st_size / 2**20
        log.info("stage weights: %s (%.1f MB, %d tensors)", path, size_mb, len(state))
        if "lora" in pl_module.trainable_groups and pl_module.model.llm.lora_parameters():
            pl_module.model.llm.save_lora(str(self.dirpath / "adapter"))


class DecodeFailureReport(L.Callback):
    """Logs, at the end of each epoch, how many videos failed to decode and which ones."""

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        datamodule = trainer.datamodule
        report = getattr(datamodule, "decode_failures", None)
        if report is None:
            return
        failures = report()
        count = sum(len(v) for v in failures.values()) if isinstance(failures, dict) else len(failures)
        pl_module.log(f"{split}/decode_failures", float(count), rank_zero_only=True, batch_size=1)
        if count and trainer.is_global_zero:
            log.warning("%s: %d video(s) failed to decode and were skipped: %s", split, count, failures)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "train")
