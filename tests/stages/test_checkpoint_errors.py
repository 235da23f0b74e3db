"""What a checkpoint records of the code that wrote it, and the one clear error for a file that is no
usable checkpoint (unreadable, not damo-lit's, or of weights that do not fit), without training."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from damo_lit import __version__
from damo_lit.cli.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    load_stage,
    load_weights_only,
    read_checkpoint,
)
from damo_lit.stages.weights import WEIGHTS_LAYOUT, load_stage_weights, save_stage_weights


def _zip_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"damo": {"stage": "stage3"}, "state_dict": {"model.w": torch.zeros(64)}}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("content, reason", [
    (b"hello\n", "it is no file that torch.save writes"),  # a text file named .ckpt (torch: KeyError)
    (b"", "the file is empty"),  # (torch: EOFError)
    (b"\x89PNG\r\n\x1a\n", "it is no file that torch.save writes"),  # (torch: an unknown pickle operand)
    (_zip_checkpoint()[:200], "PytorchStreamReader failed reading zip archive"),  # a copy cut short
])
def test_a_file_torch_cannot_read_is_one_clear_checkpoint_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_stage(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert str(info.value).startswith(f"ckpt={path}: not a damo-lit checkpoint: torch cannot read it ({reason}")
    assert "expected a .ckpt file that damo-train saved" in str(info.value)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: not a damo-lit checkpoint"):  # where: the path
        load_weights_only(path)


@pytest.mark.parametrize("saved, message", [
    ({"a": torch.zeros(2)}, "no 'damo' entry and 'state_dict'"),  # a torch file of something else
    ([torch.zeros(2)], "no 'damo' entry and 'state_dict'"),
    ({"damo": {"stage": "stage9", "model_cfg": {}}, "state_dict": {}}, "its stage meta needs 'stage' (one of stage1"),
    ({"damo": {"stage": "stage3"}, "state_dict": {}}, "and 'model_cfg' (a mapping)"),
])
def test_a_torch_file_that_is_no_damo_checkpoint_is_named(tmp_path: Path, saved: object, message: str) -> None:
    path = tmp_path / "other.ckpt"
    torch.save(saved, path)
    with pytest.raises(CheckpointError, match=rf"^ckpt={re.escape(str(path))}: not a damo-lit checkpoint") as info:
        read_checkpoint(path)
    assert message in str(info.value)


@pytest.mark.parametrize("meta_text, message", [("{not json", "not a damo-lit stage meta file"),
                                                ("[1, 2]", "expected a JSON object")])
def test_a_run_folder_with_a_broken_stage_json_is_named(tmp_path: Path, meta_text: str, message: str) -> None:
    (tmp_path / "stage.json").write_text(meta_text)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(tmp_path / 'stage.json'))}: {message}"):
        read_checkpoint(tmp_path)


class Tiny(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 2)


def test_stage_weights_record_the_damo_lit_version_and_layout_that_wrote_them(tmp_path: Path) -> None:
    save_stage_weights(tmp_path, Tiny().state_dict(), {"stage": "stage3"})
    meta = json.loads((tmp_path / "stage.json").read_text())
    assert meta == {"stage": "stage3", "damo_lit_version": __version__, "weights_layout": WEIGHTS_LAYOUT}


@pytest.mark.parametrize("recorded, writer", [
    ({}, "it records no damo-lit version, so the code that wrote it is not known"),
    ({"damo_lit_version": "0.0.9", "weights_layout": 0}, "it records damo-lit 0.0.9, weights layout 0"),
])
def test_weights_that_do_not_fit_name_both_causes(tmp_path: Path, recorded: dict, writer: str) -> None:
    """Weights of other shapes come from another model config or from another version of the code
    (its checkpoint layout changed): the message names both, and the version the file records."""
    save_stage_weights(tmp_path, Tiny(width=5).state_dict(), {"stage": "stage3"})
    (tmp_path / "stage.json").write_text(json.dumps({"stage": "stage3", **recorded}))  # as older code wrote it
    with pytest.raises(CheckpointError) as info:
        load_stage_weights(Tiny(width=3), tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'weights.safetensors'}: 1 tensor(s) do not fit this model "
                              "(proj.weight: saved (2, 5) vs model (2, 3))")
    assert "another model config" in message and "another version of damo-lit" in message
    assert f"({writer}; this is damo-lit {__version__}, weights layout {WEIGHTS_LAYOUT})" in message
    assert "was the previous stage built" not in message


def test_weights_without_the_version_record_still_load(tmp_path: Path) -> None:
    source = Tiny()
    save_stage_weights(tmp_path, source.state_dict(), {"stage": "stage3"})
    (tmp_path / "stage.json").write_text(json.dumps({"stage": "stage3"}))
    target = Tiny()
    report = load_stage_weights(target, tmp_path)
    assert report.loaded == ["proj.bias", "proj.weight"]
    assert torch.equal(target.proj.weight, source.proj.weight)


def test_a_truncated_weights_file_is_named(tmp_path: Path) -> None:
    save_stage_weights(tmp_path, Tiny().state_dict(), {"stage": "stage3"})
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(weights))}: not a readable safetensors .*truncated"):
        load_stage_weights(Tiny(), tmp_path)


def test_init_from_a_weights_file_of_another_model_is_refused(tmp_path: Path) -> None:
    """Not one tensor fits: training on would start from scratch under the name of a handoff."""
    save_stage_weights(tmp_path, {"foo.weight": torch.zeros(2)}, {"stage": "stage3"})
    with pytest.raises(CheckpointError, match=r"stage\.init_from=.*: none of its 1 tensors \(e\.g\. foo\.weight\) is a "
                                              r"weight of this model"):
        load_stage_weights(Tiny(), tmp_path)
