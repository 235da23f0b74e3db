"""Rebuild a trained stage from what a run left: its folder (weights.safetensors + stage.json)
or a Lightning checkpoint (.ckpt, read with torch.load(weights_only=True): never unpickled).
A sharded (FSDP) checkpoint folder is checked before it is resumed: torch.distributed.checkpoint
unpickles its `.metadata` and its non-tensor items without restriction (`check_sharded_checkpoint`)."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from damo_lit.stages.weights import META_FILE, WEIGHTS_FILE, CheckpointError, fitting_weights, read_meta_file

STAGE_CLASSES = {
    "stage1": "damo_lit.stages.align.AlignStage",
    "stage2": "damo_lit.stages.bridge.BridgeStage",
    "stage3": "damo_lit.stages.temporal.TemporalStage",
    "stage4": "damo_lit.stages.temporal.TemporalStage",
}


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that torch.load(weights_only=True) refuses: it holds pickled Python objects
    besides tensors and plain containers, and unpickling those could run any code."""

    def __init__(self, where: str, err: BaseException) -> None:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"a pickled Python object ({found.group(1)})" if found else "something torch.load(weights_only=True) refuses"
        super().__init__(
            f"{where}: refused to load it: it holds {what}. damo-lit checkpoints hold only tensors and plain "
            "containers and load with torch.load(weights_only=True); unpickling other objects could run arbitrary "
            "code (a foreign or tampered file?)"
        )


class RemoteCodeCheckpointError(UnsafeCheckpointError):
    """A checkpoint whose stored model config asks transformers to run code shipped with the weights."""

    def __init__(self, where: str, parts: Sequence[str]) -> None:
        ValueError.__init__(
            self,
            f"{where}: refused to build its model: its stored config sets trust_remote_code=true for "
            f"{', '.join(parts)}, which runs Python code fetched with those weights. If you trust where the "
            "checkpoint and those weights come from, add trust_remote_code=true",
        )


def load_weights_only(path: str | Path, where: str | None = None, mmap: bool = False) -> Any:
    """torch.load(path, weights_only=True) on CPU. A file holding other objects than tensors and
    plain containers is an UnsafeCheckpointError; one that torch cannot read at all (empty,
    truncated, not a torch file) a CheckpointError naming `where` (default: the path).

    `mmap`: leave the tensors on disk until they are read (a look at a large checkpoint's entries
    costs no memory); only a zip file can be mapped, so any other is read as it is, for its error."""
    where = where or str(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        if "Unsupported operand" not in str(err):  # an unknown operand: bytes that are no pickle at all
            raise UnsafeCheckpointError(where, err) from None
        reason = "it is no file that torch.save writes"
    except (EOFError, KeyError, IndexError, RuntimeError, ValueError) as err:
        reason = unreadable_reason(Path(path), err)
    raise CheckpointError(f"{where}: not a damo-lit checkpoint: torch cannot read it ({reason}); expected a .ckpt "
                          "file that damo-train saved (is it truncated, or another kind of file?)") from None


def unreadable_reason(path: Path, err: BaseException) -> str:
    """Why torch.load could not read `path`, in words (its own errors say KeyError: 101)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if isinstance(err, EOFError):
        return "it ends too early"
    if isinstance(err, RuntimeError):  # the zip reader's: "... failed finding central directory"
        return str(err).split(". ")[0]
    return "it is no file that torch.save writes"


def stage_meta_of(meta: Any, where: str) -> dict[str, Any]:
    """The stage meta of a checkpoint, checked for what rebuilding the stage reads."""
    if not (isinstance(meta, dict) and meta.get("stage") in STAGE_CLASSES and isinstance(meta.get("model_cfg"), dict)):
        raise CheckpointError(f"{where}: not a damo-lit checkpoint: its stage meta needs 'stage' (one of "
                              f"{', '.join(STAGE_CLASSES)}) and 'model_cfg' (a mapping)")
    return meta


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """(stage meta, Lightning state dict or None when the weights are a stage folder's file)."""
    path = Path(path)
    if path.is_dir() and (path / DCP_METADATA).is_file():
        raise FileNotFoundError(f"ckpt={path}: a sharded (FSDP) training checkpoint, which only a resumed FSDP run "
                                f"reads; give the run folder instead (an FSDP run also writes {WEIGHTS_FILE} and "
                                f"{META_FILE} there)")
    if path.is_dir():
        meta_file = path / META_FILE
        if not (meta_file.is_file() and (path / WEIGHTS_FILE).is_file()):
            raise FileNotFoundError(
                f"ckpt={path}: expected {WEIGHTS_FILE} and {META_FILE} in it (a damo-train run folder)")
        return stage_meta_of(read_meta_file(meta_file), f"ckpt={meta_file}"), None
    if path.suffix == ".ckpt" and path.is_file():
        checkpoint = load_weights_only(path, f"ckpt={path}")
        if not (isinstance(checkpoint, dict) and "damo" in checkpoint and isinstance(checkpoint.get("state_dict"), dict)):
            raise CheckpointError(f"ckpt={path}: not a damo-lit checkpoint (no 'damo' entry and 'state_dict': a "
                                  "Lightning checkpoint that damo-train saved has both)")
        return stage_meta_of(checkpoint["damo"], f"ckpt={path}"), checkpoint["state_dict"]
    if not path.exists():
        raise FileNotFoundError(f"ckpt={path}: no such file or folder")
    raise FileNotFoundError(f"ckpt={path}: not a run folder or a .ckpt file")


DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a sharded checkpoint folder
_PATH_CLASSES = {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}


class _DCPMetadataUnpickler(pickle.Unpickler):
    """Unpickles what torch.distributed.checkpoint writes into `.metadata` (its own dataclasses and
    enums, torch.Size, dtypes, layouts, paths) and refuses every other global, as
    torch.load(weights_only=True) does for a .ckpt file."""

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name) if self._allowed(module, name) else None
        if found is None:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")
        return found

    @staticmethod
    def _allowed(module: str, name: str) -> bool:
        if module.startswith("torch.distributed.checkpoint."):
            try:
                found = getattr(importlib.import_module(module), name, None)
            except ImportError:
                return False
            return isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum))
        if module == "torch":
            return name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
        return ((module, name) == ("torch.serialization", "_get_layout") or (module == "pathlib" and name in _PATH_CLASSES)
                or (module, name) == ("collections", "OrderedDict") or (module == "builtins" and name in ("set", "frozenset")))


def check_sharded_checkpoint(folder: str | Path, where: str) -> None:
    """Refuse (UnsafeCheckpointError) a torch.distributed.checkpoint folder holding pickled Python
    objects, before resuming from it: its `.metadata` is read with a restricted unpickler, and each
    non-tensor item (torch.load(weights_only=False) in torch's reader) with weights_only=True."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    folder = Path(folder)
    try:
        with open(folder / DCP_METADATA, "rb") as handle:
            metadata = _DCPMetadataUnpickler(handle).load()
        storage = metadata.storage_data or {}
        for fqn, item in metadata.state_dict_metadata.items():
            if not isinstance(item, BytesStorageMetadata):
                continue
            info = storage[MetadataIndex(fqn)]
            with open(folder / info.relative_path, "rb") as handle:
                handle.seek(info.offset)
                torch.load(io.BytesIO(handle.read(info.length)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(where, err) from None


REMOTE_CODE_PARTS = ("vision", "audio", "text_encoder", "llm")


def remote_code_parts(model_cfg: Mapping[str, Any]) -> list[str]:
    """The model parts whose config asks transformers to run code shipped with the weights."""
    return [f"model.{part}" for part in REMOTE_CODE_PARTS
            if isinstance(model_cfg.get(part), Mapping) and model_cfg[part].get("trust_remote_code")]


def with_model_overrides(model_cfg: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The checkpoint's model config with `KEY=VALUE` overrides (dotted keys) applied."""
    from omegaconf import OmegaConf

    if not overrides:
        return dict(model_cfg)
    merged = OmegaConf.merge(OmegaConf.create(dict(model_cfg)), OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_container(merged, resolve=True)


def load_stage(path: str | Path, span_parser: Any = None, trust_remote_code: bool = False,
               model_overrides: Sequence[str] = (), checkpoint: tuple[dict[str, Any], Any] | None = None) -> Any:
    """The stage module with the checkpoint's weights, in eval mode.

    The model is rebuilt from the config stored in the checkpoint, with `model_overrides`
    (`KEY=VALUE`, keys of the model config) applied. Where that config sets `trust_remote_code`,
    building it would run code named by a file the user may have downloaded: refused unless the
    caller says `trust_remote_code=True`. `checkpoint`: what `read_checkpoint(path)` gave, when
    the caller has read it already (a .ckpt file is read whole)."""
    import importlib

    from damo_lit.cli.model import ensure_model_parts
    from damo_lit.data.timestamps import parse_spans

    meta, state = checkpoint if checkpoint is not None else read_checkpoint(path)
    meta = {**meta, "model_cfg": with_model_overrides(meta["model_cfg"], model_overrides)}
    remote = remote_code_parts(meta["model_cfg"])
    if remote and not trust_remote_code:
        raise RemoteCodeCheckpointError(f"ckpt={path}", remote)
    name = meta["stage"]
    module_name, _, class_name = STAGE_CLASSES[name].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    ensure_model_parts(meta["model_cfg"])
    if span_parser is None:
        fmt = meta.get("timestamps", "relative")
        span_parser = lambda text, duration: parse_spans(text, duration, fmt)  # noqa: E731
    init_from = None if state is not None else str(path)
    stage = cls(model_cfg=meta["model_cfg"], name=name, init_from=init_from, timestamps=meta.get("timestamps", "relative"),
                prompt_style=meta.get("prompt_style", "plain"), span_parser=span_parser, trainable=meta.get("trainable"))
    if state is not None:  # weights of other shapes: a CheckpointError naming both possible causes
        stage.load_state_dict(fitting_weights(stage.state_dict(), state, f"ckpt={path}", meta)[0], strict=False)
    return stage.eval()
