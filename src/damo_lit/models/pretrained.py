"""One way in for every transformers part: `from_pretrained` by name or folder, or a build from
architecture numbers (random init, or on the meta device for summaries without weights).

A checkpoint that loads with weights missing is an error, not a warning: a silently random
tower is the worst kind of bug in a frozen-encoder model.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from damo_lit.models.config import ConfigError, PretrainedSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(spec: PretrainedSpec, where: str) -> torch.dtype:
    if spec.dtype not in DTYPES:
        raise ConfigError(f"{where}.dtype: expected one of {', '.join(DTYPES)}, got {spec.dtype!r}")
    return DTYPES[spec.dtype]


def arch_config(spec: PretrainedSpec, where: str) -> PretrainedConfig:
    """The transformers config described by `spec.arch` (`model_type` plus config numbers)."""
    if not spec.arch:
        raise ConfigError(
            f"{where}.arch: needed to build this part without weights (meta device or random init), "
            f"but it is empty; give `model_type` and the architecture numbers"
        )
    arch = dict(spec.arch)
    model_type = arch.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"{where}.arch.model_type: missing (e.g. clip_vision_model, whisper, llama, bert)")
    try:
        return AutoConfig.for_model(model_type, **arch)
    except Exception as err:  # noqa: BLE001 - transformers' own checks raise several kinds (strict dataclasses)
        said = " ".join(str(err).split())  # transformers' validation errors span lines
        raise ConfigError(f"{where}.arch: transformers cannot build model_type {model_type!r}: {said}") from err


@contextlib.contextmanager
def build_device(meta: bool) -> Iterator[None]:
    """Create parameters on the meta device (no memory, no init) when `meta`."""
    if meta:
        with torch.device("meta"):
            yield
    else:
        yield


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create floating-point parameters in `dtype`, as from_pretrained(dtype=...) does: a random
    7B LM built in float32 and cast afterwards needs twice the memory and ~1.6x the time."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_or_build(
    spec: PretrainedSpec,
    where: str,
    *,
    meta: bool,
    load: Callable[..., Any],
    build: Callable[[PretrainedConfig], PreTrainedModel],
    **load_kwargs: Any,
) -> PreTrainedModel:
    """`load(name_or_path, ...)` through from_pretrained, or `build(config)` from `spec.arch`.

    Meta builds and specs without `name_or_path` use `spec.arch`; everything else loads weights
    (local_files_only when `spec.offline`) and fails if the checkpoint lacks any of them.
    """
    dtype = torch_dtype(spec, where)
    if meta or not spec.name_or_path:
        config = arch_config(spec, where)
        with build_device(meta), default_dtype(dtype):
            try:
                model = build(config)
            except (AttributeError, TypeError, ValueError) as err:  # a config another model class reads
                raise ConfigError(
                    f"{where}: {getattr(build, '__qualname__', build)} cannot be built from {where}.arch (model_type "
                    f"{config.model_type!r}): {err}; do the part's kind and its arch.model_type name the same model?"
                ) from err
        # Parameters in `dtype`; buffers a model computes in float32 on purpose (rotary inv_freq)
        # stay so, as from_pretrained leaves them.
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
        return model
    if spec.trust_remote_code:
        load_kwargs["trust_remote_code"] = True
    try:
        model, info = load(
            spec.name_or_path, local_files_only=spec.offline, dtype=dtype, output_loading_info=True, **load_kwargs
        )
    except OSError as err:
        hint = " (offline: local_files_only=True; set offline=false to allow a download)" if spec.offline else ""
        raise OSError(f"{where}.name_or_path={spec.name_or_path!r} could not be loaded{hint}: {err}") from err
    missing = list(info.get("missing_keys", []))
    if missing:
        shown = ", ".join(sorted(missing)[:8])
        raise ValueError(
            f"{where}.name_or_path={spec.name_or_path!r}: the checkpoint lacks {len(missing)} weight(s) "
            f"of {type(model).__name__} (e.g. {shown}); is it the right kind of model?"
        )
    return model


def config_dim(config: PretrainedConfig) -> int:
    """The feature width of a vision or text config (nested `vision_config` included)."""
    for cfg in (config, getattr(config, "vision_config", None)):
        if cfg is None:
            continue
        for attr in ("hidden_size", "d_model", "embed_dim", "width"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int):
                return value
        sizes = getattr(cfg, "hidden_sizes", None)
        if sizes:
            return int(sizes[-1])
    raise ValueError(f"cannot tell the feature width of a {type(config).__name__}")


def parameter_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
