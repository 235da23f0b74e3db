"""Stage weights: what a stage saves, and how the next stage starts from it.

A stage keeps only the weights that cannot be rebuilt from a pretrained source: everything
the stages train (global residual, temporal pathway, Fuseformer, projector, LoRA, and any tower
marked trainable) plus whatever this stage trained. Frozen pretrained parts (encoders, the base
LLM) are rebuilt from their `name_or_path` in the saved model config, so a paper-size stage
checkpoint weighs MBs, not GBs. Files are safetensors (never pickle) with a JSON side file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from damo_lit import __version__
from damo_lit.differences import differences

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "stage.json"
# The layout of saved weights (their names and shapes). Bump it with any change to the model code
# that renames saved weights or gives them other shapes, so that a checkpoint written before the
# change says so when it no longer fits (it records the layout it was written with).
WEIGHTS_LAYOUT = 1
ALL_GROUPS = ("vision", "audio", "residual", "fuseformer", "projector", "llm", "lora", "text_encoder")
# Groups whose weights always come from training, never from a pretrained checkpoint.
LEARNED_GROUPS = ("residual", "fuseformer", "projector", "lora")
# Groups that have a pretrained source, yet may have been trained by an earlier stage (random-init
# towers, a trained base LM): once a stage starts from such weights, it saves them on, trained or
# frozen, so that the next stage and damo-eval see the weights this stage used. (The stage-1 text
# encoder is not carried: no later stage reads it.)
CARRIED_GROUPS = ("vision", "audio", "llm")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: a file that is no damo-lit checkpoint (another kind of
    file, an empty or truncated one), or weights that do not fit the model. The message starts
    with the path; every command prints it as a user's mistake (cli/common.py's user_errors)."""


def written_by() -> dict[str, Any]:
    """What a stage checkpoint records of the code that wrote it, so that weights that no longer fit
    can be told apart from weights of another model config."""
    return {"damo_lit_version": __version__, "weights_layout": WEIGHTS_LAYOUT}


def mismatch_error(where: str, mismatches: list[str], meta: Mapping[str, Any],
                   model_cfg: Mapping[str, Any] | None = None) -> CheckpointError:
    """The error for weights of other shapes than the model's, naming both possible causes and the
    version of damo-lit that `meta` (stage.json, a .ckpt's 'damo' entry) says wrote them; with
    `model_cfg` (this model's), the model keys whose values differ from those `meta` recorded."""
    changed = model_config_change(meta, model_cfg)
    if changed:
        return CheckpointError(
            f"{where}: {len(mismatches)} tensor(s) do not fit this model ({'; '.join(mismatches[:3])}): {changed}: use "
            "the model config that saved it"
        )
    version, layout = meta.get("damo_lit_version"), meta.get("weights_layout")
    if version is None:
        writer = "it records no damo-lit version, so the code that wrote it is not known"
    else:
        writer = f"it records damo-lit {version}" + (f", weights layout {layout}" if layout is not None else "")
    return CheckpointError(
        f"{where}: {len(mismatches)} tensor(s) do not fit this model ({'; '.join(mismatches[:5])}). Either it was "
        "saved with another model config (model.fuseformer.depth, query counts, LoRA targets, ...), or by another "
        f"version of damo-lit whose weights have other shapes ({writer}; this is damo-lit {__version__}, weights "
        f"layout {WEIGHTS_LAYOUT})"
    )


def model_config_change(meta: Mapping[str, Any], model_cfg: Mapping[str, Any] | None) -> str | None:
    """'it was saved with another model config (model.KEY (was A, now B); ...)' when the model config
    that `meta` recorded differs from `model_cfg`, else None."""
    saved = meta.get("model_cfg")
    changed = differences(saved, dict(model_cfg), "model.") if model_cfg and isinstance(saved, Mapping) else []
    if not changed:
        return None
    shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
    return f"it was saved with another model config ({shown})"


def fitting_weights(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], where: str,
                    meta: Mapping[str, Any], model_cfg: Mapping[str, Any] | None = None,
                    ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the tensors of `state` that `own`, a model's state dict, has by name and shape; the names it
    lacks). A tensor of another shape raises `mismatch_error`: loading is not strict, and a
    partial load would run a model that is neither the saved one nor a fresh one."""
    to_load: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatches: list[str] = []
    for key, tensor in state.items():
        if key in own and {tensor.dim(), own[key].dim()} == {0, 1} and tensor.numel() == own[key].numel() == 1:
            tensor = tensor.reshape(own[key].shape)  # files from before the time gains became 1-D (FSDP)
        if key not in own:
            unexpected.append(key)
        elif own[key].shape != tensor.shape:
            mismatches.append(f"{key}: saved {tuple(tensor.shape)} vs model {tuple(own[key].shape)}")
        else:
            to_load[key] = tensor
    if mismatches:
        raise mismatch_error(where, mismatches, meta, model_cfg)
    return to_load, unexpected


# Module-name segments that FSDP units and activation-checkpoint wrappers insert. State-dict keys
# never hold them (FSDP strips them), so every name this module compares is taken without them.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def clean_name(name: str) -> str:
    """A parameter or buffer name as an unwrapped model has it."""
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def group_parameter_names(model: nn.Module) -> dict[str, set[str]]:
    """Map each module group of a DaMO model to the state-dict names of its parameters."""
    names_by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_id.setdefault(id(param), []).append(clean_name(name))
    groups: dict[str, set[str]] = {}
    for group, members in model.module_groups().items():
        params = members.parameters() if isinstance(members, nn.Module) else members
        groups[group] = {n for p in params for n in names_by_id.get(id(p), [])}
    return groups


def inherited_groups(model: nn.Module, loaded: Iterable[str]) -> list[str]:
    """The CARRIED_GROUPS among whose parameters some were loaded from a previous stage (`loaded`:
    state-dict names, as LoadReport.loaded lists them)."""
    loaded = set(loaded)
    groups = group_parameter_names(model)
    return [g for g in CARRIED_GROUPS if groups.get(g, set()) & loaded]


def persistent_names(model: nn.Module, extra_groups: Iterable[str] = ()) -> set[str]:
    """State-dict names that a stage must save: learned groups plus `extra_groups`."""
    groups = group_parameter_names(model)
    wanted = set(LEARNED_GROUPS) | set(extra_groups)
    unknown = wanted - set(ALL_GROUPS)
    if unknown:
        raise ValueError(f"unknown module group(s) {sorted(unknown)}; expected some of {ALL_GROUPS}")
    names: set[str] = set()
    for group in wanted:
        names |= groups.get(group, set())
    # Buffers (e.g. BatchNorm statistics) of saved modules travel with them.
    param_names = {clean_name(n) for n, _ in model.named_parameters(remove_duplicate=False)}
    for name, _ in model.named_buffers():
        name = clean_name(name)
        owner = name.rsplit(".", 1)[0]
        if any(p.startswith(owner + ".") for p in names) and name not in param_names:
            names.add(name)
    return names


@dataclass
class LoadReport:
    path: str
    loaded: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    # Parameters of a module group the file holds, yet not in the file: they keep their fresh
    # initialisation (another depth, more queries, other LoRA targets than the previous stage's).
    missing: dict[str, list[str]] = field(default_factory=dict)

    def missing_warning(self) -> str | None:
        """One line naming what the file did not cover, or None when it covered every group it holds."""
        if not self.missing:
            return None
        parts = [f"{group}: {len(names)} (e.g. {names[0]})" for group, names in self.missing.items()]
        return (f"stage.init_from={self.path} holds these groups only in part; their other parameters keep a fresh "
                f"initialisation: {'; '.join(parts)}. Was the previous stage built with another model config "
                "(model.fuseformer.depth, query counts, LoRA targets)?")  # fmt: skip


def stage_state(model: nn.Module, names: set[str], fsdp_root: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The named tensors of `model` (its clean state-dict names), on CPU and ready for safetensors.

    Under FSDP pass the root FSDP module as `fsdp_root` and call this on every rank (it is
    collective): `model.state_dict()` there gives the root unit's parameters as flat shards.
    """
    if fsdp_root is not None:
        state = _fsdp_state(model, names, fsdp_root)
    else:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k in names}
    # safetensors refuses tensors that share storage (tied weights): clone them apart.
    seen: set[int] = set()
    for key, tensor in list(state.items()):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            state[key] = tensor.clone()
        seen.add(ptr)
    return state


def _fsdp_state(model: nn.Module, names: set[str], fsdp_root: nn.Module) -> dict[str, torch.Tensor]:
    """Full values of the wanted parameters, gathered one FSDP unit at a time (the peak is the
    largest unit, never the whole model), plus the wanted buffers, which FSDP does not shard.

    Needs use_orig_params=True (conf/trainer/fsdp.yaml): the original parameters then hold the
    unit's full values inside summon_full_params. Every rank walks the units in the same order
    and makes the same choices, so the collectives match."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    wanted: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if clean_name(name) in names:
            wanted.setdefault(id(param), []).append(clean_name(name))
    state: dict[str, torch.Tensor] = {}
    for unit in FSDP.fsdp_modules(fsdp_root):
        # A unit's own parameters: one FSDP segment in their name below it (more: a nested unit's).
        owned = [p for n, p in unit.named_parameters(remove_duplicate=False)
                 if n.count(WRAPPER_SEGMENTS[0]) == 1 and id(p) in wanted]  # fmt: skip
        if not owned and unit is not fsdp_root:  # the root always: it must initialise before its units
            continue
        with FSDP.summon_full_params(unit, recurse=False, writeback=False):
            for param in owned:
                value = param.detach().to("cpu").clone()
                for name in wanted[id(param)]:
                    state[name] = value
    for module_name, module in model.named_modules():
        for local, buffer in module.named_buffers(recurse=False):
            name = clean_name(f"{module_name}.{local}" if module_name else local)
            if buffer is not None and name in names and local not in module._non_persistent_buffers_set:
                state[name] = buffer.detach().to("cpu").clone()  # as state_dict: persistent buffers only
    return state


def save_stage_weights(directory: str | Path, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write DIR/weights.safetensors and DIR/stage.json atomically (a crash leaves the old pair);
    stage.json also records the damo-lit version and weights layout that wrote them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(dict(state), str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / WEIGHTS_FILE)
    meta_tmp = directory / (META_FILE + ".tmp")
    meta_tmp.write_text(json.dumps({**meta, **written_by()}, indent=2, default=str))
    meta_tmp.replace(directory / META_FILE)
    return directory / WEIGHTS_FILE


def resolve_weights_path(path: str | Path, key: str = "stage.init_from") -> Path:
    """Accept a stage folder, its weights file, or a run folder holding one; name what was wrong
    (`key`: the config key the path came from)."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / WEIGHTS_FILE]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".safetensors":
            return candidate
    raise FileNotFoundError(
        f"{key}={path}: no {WEIGHTS_FILE} found (looked at {', '.join(map(str, candidates))}); "
        "point it at a previous stage's run folder or its weights file"
    )


def read_meta_file(path: str | Path) -> dict[str, Any]:
    """A stage.json as a dict; one that is not a JSON object is a CheckpointError naming it."""
    try:
        meta = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a damo-lit stage meta file ({err}); expected the JSON object damo-train "
                              "writes beside the stage's weights") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object (damo-train's stage meta), got {type(meta).__name__}")
    return meta


def read_stage_meta(path: str | Path) -> dict[str, Any]:
    meta = resolve_weights_path(path).parent / META_FILE
    return read_meta_file(meta) if meta.is_file() else {}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors weights file; one that safetensors cannot read is a CheckpointError naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise CheckpointError(f"{path}: not a readable safetensors weights file ({err}); is it truncated (a copy "
                              "or a run that stopped while writing it) or another kind of file?") from None


def load_stage_weights(
    model: nn.Module, path: str | Path, key: str = "stage.init_from", require_some: bool = True
) -> LoadReport:
    """Load a previous stage's weights into `model` by name; report what matched.

    Keys the model lacks are reported, not fatal (a stage-1-only head, for instance); a shape
    mismatch is a CheckpointError naming both possible causes (another model config, or weights
    written by another damo-lit version: `fitting_weights`). Parameters of a group the file holds
    but not in it (a deeper Fuseformer than the previous stage's) are reported in `missing`, and
    the stage warns: a change between stages may be deliberate, a silently random block is not.
    `key` names the config key of `path` in errors. With `require_some`, a file none of whose
    tensors is a weight of `model` (another model's) is a CheckpointError.
    """
    weights = resolve_weights_path(path, key)
    state = read_weights(weights)
    report = LoadReport(path=str(weights))
    to_load, report.unexpected = fitting_weights(model.state_dict(), state, str(weights), read_stage_meta(weights))
    if require_some and state and not to_load:  # a file of another model: starting from it would quietly start from scratch
        raise CheckpointError(f"{key}={path}: none of its {len(state)} tensors (e.g. {next(iter(state))}) is a "
                              "weight of this model; expected the weights.safetensors of an earlier damo-lit stage")
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    if hasattr(model, "module_groups"):
        for group, names in group_parameter_names(model).items():
            if names & state.keys():
                absent = sorted(names - state.keys())
                if absent:
                    report.missing[group] = absent
    return report
