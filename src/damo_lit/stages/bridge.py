"""Stage 2, representation bridging: next-token loss through the frozen LLM on captions and QA.

The projector and the Fuseformer learn to produce soft prompts that the LLM can read; the
validation figure is the same loss on held-out captions and QA.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from damo_lit.stages.base import DaMOStage


class BridgeStage(DaMOStage):
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self.lm_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=self.batch_size_of(batch))
        return loss

    def _evaluate(self, split: str, batch: Mapping[str, Any]) -> None:
        loss, _ = self.lm_loss(batch)
        self.log(f"{split}/loss", loss, batch_size=self.batch_size_of(batch), sync_dist=True)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch)
