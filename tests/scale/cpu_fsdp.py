"""Test-only: Lightning's FSDPStrategy on the CPU, so that the stages run under the FSDP recipe
of conf/trainer/fsdp.yaml in two gloo processes. Lightning refuses the FSDPStrategy class itself
without a GPU (an exact-type check in its accelerator connector), while torch's FSDP runs on the
CPU; a subclass passes the check and changes nothing else."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.nn import Module

from damo_lit.stages.fsdp import fsdp_strategy


class CPUFSDPStrategy(FSDPStrategy):
    def _setup_model(self, model: Module) -> Module:
        """Wrap as the parent does, with device_id=cpu (the parent passes the root device's index,
        None on the CPU, and torch's FSDP then asks for an accelerator); the parent then sees a
        wrapped model and adds activation checkpointing as usual."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                             mixed_precision=self.mixed_precision_config,
                                             sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                             **self.kwargs)  # fmt: skip
        return super()._setup_model(model)


def cpu_fsdp_strategy(**kwargs: Any) -> FSDPStrategy:
    """conf/trainer/fsdp.yaml's strategy (damo_lit.stages.fsdp.fsdp_strategy), as the CPU subclass."""
    strategy = fsdp_strategy(**kwargs)
    strategy.__class__ = CPUFSDPStrategy
    return strategy
