"""The FSDP recipe: which modules become FSDP units, with activation checkpointing, for bf16 runs.

Wrap targets are the LLM's decoder layers and the Fuseformer blocks (the repeated, heavy
blocks); everything else (towers, projector, small heads) stays in the root unit. Classes are
named by dotted path in the config so that the same recipe serves Mistral, Llama and Qwen.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


def resolve_classes(paths: Iterable[str]) -> set[type[nn.Module]]:
    """Import 'package.module.ClassName' strings; errors name the path that failed."""
    classes: set[type[nn.Module]] = set()
    for path in paths:
        module_name, _, class_name = str(path).rpartition(".")
        if not module_name:
            raise ValueError(f"trainer.strategy.wrap_classes: '{path}' is not a dotted 'module.Class' path")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"trainer.strategy.wrap_classes: cannot import '{path}': {err}") from err
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"trainer.strategy.wrap_classes: '{path}' is not an nn.Module class")
        classes.add(cls)
    return classes


def uses_fsdp(trainer: Any) -> bool:
    """Whether `trainer` (or None) trains under FSDP; its strategy's `model` is then the root unit."""
    return trainer is not None and isinstance(trainer.strategy, FSDPStrategy)


class DaMOFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, with one step before wrapping: FSDP flattens each unit's
    parameters into one tensor of one dtype, while DaMO keeps its frozen pretrained parts in bf16
    (model.*.dtype) and what it trains in float32, side by side in the same units (LoRA inside each
    decoder layer). Under a mixed precision every floating parameter is therefore stored in
    float32, sharded, and FSDP computes in bf16 (its MixedPrecision config). A `-true` precision
    has already cast the whole module to one dtype."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            self.uniform_storage_dtype(model)
        return super()._setup_model(model)

    def uniform_storage_dtype(self, model: nn.Module) -> None:
        """Under a mixed precision, every floating parameter in float32 (before wrapping)."""
        if "mixed" not in str(self.precision_plugin.precision):
            return
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != torch.float32:
                param.data = param.data.float()


def fsdp_strategy(wrap_classes: Iterable[str], activation_checkpointing: bool = True,
                  sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "sharded",
                  cpu_offload: bool = False, **kwargs):
    """Build Lightning's FSDPStrategy (DaMOFSDPStrategy: uniform float32 storage under mixed
    precision) with block-level wrapping and activation checkpointing."""
    classes = resolve_classes(wrap_classes)
    if not classes:
        raise ValueError("trainer.strategy.wrap_classes is empty: name the LLM decoder layer and "
                         "Fuseformer block classes (the model config's fsdp_wrap_classes)")
    return DaMOFSDPStrategy(
        auto_wrap_policy=classes,
        activation_checkpointing_policy=classes if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        use_orig_params=True,  # frozen and trainable parameters share FSDP units (LoRA)
        **kwargs,
    )
