"""Test-only: Lightning's FSDPStrategy on the CPU, so that the stages run under the FSDP recipe
of conf/trainer/fsdp.yaml in two gloo processes. Lightning refuses its FSDPStrategy class without a
GPU (an exact-type check in its accelerator connector, which damo-lit's subclass passes too), and
wraps with the root device's index as device_id (None on the CPU, where torch's FSDP then asks for
an accelerator); this subclass passes device_id=cpu and changes nothing else."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import Module

from damo_lit.stages.fsdp import DaMOFSDPStrategy, fsdp_strategy


class CPUFSDPStrategy(DaMOFSDPStrategy):
    def setup(self, trainer: Any) -> None:
        """Autocast on the CPU under a mixed precision: Lightning's FSDPPrecision autocasts on CUDA only."""
        plugin = self.precision_plugin
        if "mixed" in str(plugin.precision):
            dtype = torch.bfloat16 if plugin.precision == "bf16-mixed" else torch.float16
            plugin.forward_context = lambda: torch.autocast("cpu", dtype=dtype)
        super().setup(trainer)

    def _setup_model(self, model: Module) -> Module:
        """Wrap as the parent does, with device_id=cpu (the parent passes the root device's index,
        None on the CPU, and torch's FSDP then asks for an accelerator); the parent then sees a
        wrapped model and adds activation checkpointing as usual."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            self.uniform_storage_dtype(model)
            model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                             mixed_precision=self.mixed_precision_config,
                                             sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                             **self.kwargs)  # fmt: skip
        return super()._setup_model(model)


def cpu_fsdp_strategy(**kwargs: Any) -> DaMOFSDPStrategy:
    """conf/trainer/fsdp.yaml's strategy (damo_lit.stages.fsdp.fsdp_strategy), as the CPU subclass."""
    strategy = fsdp_strategy(**kwargs)
    strategy.__class__ = CPUFSDPStrategy
    return strategy
