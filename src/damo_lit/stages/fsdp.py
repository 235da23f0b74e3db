"""The FSDP recipe: which modules become FSDP units, with activation checkpointing, for bf16 runs.

Wrap targets are the LLM's decoder layers and the Fuseformer blocks (the repeated, heavy
blocks, also activation-checkpointed) and the encoder towers; the rest (projector, residual, the
LM's embeddings and head) stays in the root unit. The classes are named by dotted path in the
config so that the same recipe serves Mistral, Llama and Qwen.

A decoder layer holds frozen base weights and trainable LoRA weights side by side. FSDP allocates
a gradient for a unit's whole flat parameter as soon as one of its parameters trains, and flattens
one dtype per unit, so a plain class-based wrap of a LoRA'd 7B LM stores and differentiates all 7B
weights in float32 (measured on one H100 80GB: 74 GiB at batch 1, docs/scale.md). The policy here
therefore makes each trainable leaf inside such a unit (LoRA's A and B) a unit of its own: the
layer's remaining weights are frozen, keep their bf16 storage and get no gradient. The encoder
towers are units of their own too: left in the root unit beside trainable weights, a frozen
tower's parameters are views of a flat parameter that requires grad, so autograd keeps the
tower's activations (about 5 GiB per video for CLIP ViT-L/14 over 24 frames).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, Iterable

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp.wrap import CustomPolicy

from damo_lit.models.encoders import AudioTower, TextEncoder, VisionTower

log = logging.getLogger(__name__)

TOWER_CLASSES: tuple[type[nn.Module], ...] = (VisionTower, AudioTower, TextEncoder)


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


def module_units(root: nn.Module, wraps: Callable[[nn.Module], bool]) -> dict[nn.Module, nn.Module]:
    """Each module's FSDP unit: the nearest of itself and its ancestors that `wraps` selects, else the root."""
    owner: dict[nn.Module, nn.Module] = {}

    def visit(module: nn.Module, unit: nn.Module) -> None:
        owner[module] = unit
        for child in module.children():
            visit(child, child if wraps(child) else unit)

    visit(root, root)
    return owner


def unit_parameters(owner: dict[nn.Module, nn.Module]) -> dict[nn.Module, list[nn.Parameter]]:
    """The parameters each unit of `module_units` flattens: its own modules', not those of units
    nested inside it. A shared parameter counts once."""
    units: dict[nn.Module, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module, unit in owner.items():
        params = units.setdefault(unit, [])
        for param in module.parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return units


def fsdp_units(root: nn.Module, wraps: Callable[[nn.Module], bool]) -> dict[nn.Module, list[nn.Parameter]]:
    """The units FSDP would build (the root, then each module `wraps` selects) with their parameters."""
    return unit_parameters(module_units(root, wraps))


def trainable_leaves_to_split(root: nn.Module, classes: tuple[type[nn.Module], ...]) -> list[nn.Module]:
    """Leaf modules whose parameters all train, inside a unit of one of `classes` that also holds
    frozen ones (LoRA's A and B in a decoder layer). The root unit is left whole: its leaves include
    modules whose weights are read without calling them (nn.MultiheadAttention's out_proj), which
    FSDP cannot serve."""
    owner = module_units(root, lambda m: isinstance(m, classes))
    mixed = {unit for unit, params in unit_parameters(owner).items()
             if unit is not root and len({p.requires_grad for p in params}) > 1}  # fmt: skip
    leaves: list[nn.Module] = []
    for module, unit in owner.items():
        own = list(module.parameters(recurse=False))
        if unit in mixed and own and not list(module.children()) and all(p.requires_grad for p in own):
            leaves.append(module)
    return leaves


class DaMOWrapPolicy(CustomPolicy):
    """The wrap classes and the encoder towers as units, plus the trainable leaves of units that
    would mix frozen and trainable parameters (`trainable_leaves_to_split`), found when FSDP applies
    the policy to the model. Activation checkpointing is a separate policy (the wrap classes)."""

    def __init__(self, classes: Iterable[type[nn.Module]]) -> None:
        self.classes = tuple(classes) + TOWER_CLASSES
        self._split: set[int] = set()
        super().__init__(self.wraps)

    def prepare(self, root: nn.Module) -> None:
        """Find the leaves to split in `root` (FSDP calls this through _run_policy)."""
        self._split = {id(m) for m in trainable_leaves_to_split(root, self.classes)}

    def wraps(self, module: nn.Module) -> bool:
        return isinstance(module, self.classes) or id(module) in self._split

    def _run_policy(self, root_module: nn.Module, ignored_modules: set[nn.Module],
                    root_kwargs: dict[str, Any]) -> dict[nn.Module, dict[str, Any]]:  # fmt: skip
        self.prepare(root_module)
        return super()._run_policy(root_module, ignored_modules, root_kwargs)


def uses_fsdp(trainer: Any) -> bool:
    """Whether `trainer` (or None) trains under FSDP; its strategy's `model` is then the root unit."""
    return trainer is not None and isinstance(trainer.strategy, FSDPStrategy)


class DaMOFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, with one step before wrapping: FSDP flattens each unit's
    parameters into one tensor of one dtype, while DaMO keeps its frozen pretrained parts in bf16
    (model.*.dtype) and what it trains in float32. Under a mixed precision, a unit that would hold
    both (the root: the LM's embeddings beside the projector) is therefore stored in float32, sharded,
    and FSDP computes in bf16 (its MixedPrecision config); units of one dtype keep it (a decoder
    layer's frozen bf16 weights once DaMOWrapPolicy has split LoRA off). A `-true` precision has
    already cast the whole module to one dtype."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            self.uniform_storage_dtype(model)
            self.checkpoint_once(model)
        return super()._setup_model(model)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Every restore goes through here (`ckpt_path=`, damo-train's resume_from, SLURM's
        hpc_ckpt after a requeue): a sharded folder is checked (check_sharded_checkpoint) before
        torch.distributed.checkpoint unpickles its `.metadata` and non-tensor items unrestricted."""
        from pathlib import Path

        from damo_lit.cli.checkpoint import DCP_METADATA, check_sharded_checkpoint

        path = Path(self.broadcast(checkpoint_path))
        if (path / DCP_METADATA).is_file():
            check_sharded_checkpoint(path, f"checkpoint {path}")
        return super().load_checkpoint(path, weights_only)

    def checkpoint_once(self, model: nn.Module) -> list[str]:
        """With FSDP's activation checkpointing on, turn off the transformers models' own
        gradient checkpointing (model.llm.gradient_checkpointing, on in damo_paper): both wrap the
        same decoder layers, and together they recompute each layer twice in backward. Returns the
        names of the models turned off."""
        if not self._activation_checkpointing_kwargs:
            return []
        from transformers import PreTrainedModel

        turned_off = []
        for name, module in model.named_modules():
            if not isinstance(module, PreTrainedModel):
                continue
            if hasattr(module, "activation_checkpointing_disable"):  # the transformers 5 names
                if module.is_activation_checkpointing:
                    module.activation_checkpointing_disable()
                    turned_off.append(name)
            elif module.is_gradient_checkpointing:
                module.gradient_checkpointing_disable()
                turned_off.append(name)
        if turned_off:
            log.info("FSDP checkpoints the decoder layers itself: gradient checkpointing of %s turned off "
                     "(model.llm.gradient_checkpointing would recompute them twice)", ", ".join(turned_off))
        return turned_off

    def uniform_storage_dtype(self, model: nn.Module) -> None:
        """Under a mixed precision, every floating parameter of a unit that mixes dtypes in float32
        (before wrapping; units as this strategy's auto_wrap_policy will build them)."""
        if "mixed" not in str(self.precision_plugin.precision):
            return
        policy = self.kwargs.get("auto_wrap_policy")
        if isinstance(policy, DaMOWrapPolicy):
            policy.prepare(model)
            wraps = policy.wraps
        else:
            wraps = lambda module: False  # noqa: E731 - one unit: the whole model
        for params in fsdp_units(model, wraps).values():
            floating = [p for p in params if p.is_floating_point()]
            if len({p.dtype for p in floating}) > 1:
                for param in floating:
                    param.data = param.data.float()


def fsdp_strategy(wrap_classes: Iterable[str], activation_checkpointing: bool = True,
                  sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "sharded",
                  cpu_offload: bool = False, **kwargs):
    """Build Lightning's FSDPStrategy (DaMOFSDPStrategy: float32 storage for units that mix dtypes
    under a mixed precision) with DaMOWrapPolicy's units and activation checkpointing on the blocks."""
    classes = resolve_classes(wrap_classes)
    if not classes:
        raise ValueError("trainer.strategy.wrap_classes is empty: name the LLM decoder layer and "
                         "Fuseformer block classes (the model config's fsdp_wrap_classes)")
    return DaMOFSDPStrategy(
        auto_wrap_policy=DaMOWrapPolicy(classes),
        activation_checkpointing_policy=classes if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        use_orig_params=True,  # frozen and trainable parameters share the root unit
        **kwargs,
    )
