"""A Lightning callback that reports decode failures at the end of every epoch.

The datamodule counts files that could not be decoded (in every DataLoader worker); this
logs the count as `data/decode_failures` and `data/skipped_samples`, and warns once naming each
newly failed file, so that a bad file is visible without ever stopping a run.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn


class DecodeFailureReport(L.Callback):
    """Log and name decode failures after each training and validation epoch."""

    def __init__(self) -> None:
        self.reported: set[str] = set()

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any] | None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "decode_failures"):
            return None
        failures: dict[str, str] = datamodule.decode_failures()
        new = {path: reason for path, reason in failures.items() if path not in self.reported}
        if new:
            listed = "\n  ".join(f"{p}: {r}" for p, r in sorted(new.items()))
            rank_zero_warn(f"{len(new)} video file(s) could not be decoded and were skipped:\n  {listed}")
            self.reported.update(new)
        counts = {"data/decode_failures": float(len(failures)), "data/skipped_samples": float(datamodule.skipped_samples())}
        pl_module.log_dict(counts, rank_zero_only=True)
        return counts

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module)
