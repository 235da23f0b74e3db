"""Safe loading: checkpoints load with torch.load(weights_only=True) and caches with numpy's
allow_pickle=False (stage weights and feature caches are safetensors); a file that holds a pickled
Python object is refused with a clear error (or, for a cache entry, decoded again), and the object
is never unpickled: here unpickling it would create a marker file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from damo_lit.cli.checkpoint import UnsafeCheckpointError, load_stage
from damo_lit.cli.common import compose_run
from damo_lit.cli.eval import main as damo_eval
from damo_lit.cli.train import run
from damo_lit.data.cache import DecodedCache
from damo_lit.data.decode import DecodeParams

from .helpers import run_overrides


class Planted:
    """Unpickling this calls open(marker, 'w'): any code could run in its place."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture()
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """(a checkpoint-shaped file holding a Planted object, the marker its unpickling would create)."""
    marker = tmp_path / "unpickled"
    path = tmp_path / "downloaded.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(2)}, "damo": {"stage": "stage3"}, "extra": Planted(marker)}, path)
    return path, marker


def test_damo_eval_and_load_stage_refuse_a_checkpoint_holding_a_pickled_object(planted: tuple[Path, Path]) -> None:
    path, marker = planted
    refused = rf"ckpt={path}: refused to load it: it holds a pickled Python object \(io\.open\)"
    with pytest.raises(UnsafeCheckpointError, match=refused):
        load_stage(path)
    with pytest.raises(SystemExit, match=f"damo-eval: {refused}"):  # one line, no traceback
        damo_eval([f"ckpt={path}", "accelerator=cpu"])
    assert not marker.exists()


def test_a_checkpoint_whose_config_runs_remote_code_is_refused_unless_trusted(tmp_path: Path) -> None:
    """The model is rebuilt from the config a checkpoint stores; trust_remote_code there would run
    code named by a downloaded file, so damo-eval and damo-predict ask the user to say so."""
    run = tmp_path / "downloaded_run"
    run.mkdir()
    model_cfg = {"vision": {"kind": "eva_clip", "name_or_path": "someone/eva-clip", "trust_remote_code": True},
                 "llm": {"trust_remote_code": False}}
    (run / "stage.json").write_text(json.dumps({"stage": "stage3", "model_cfg": model_cfg}))
    (run / "weights.safetensors").write_bytes(b"")
    refused = rf"ckpt={run}: refused to build its model: its stored config sets trust_remote_code=true for model\.vision"
    with pytest.raises(UnsafeCheckpointError, match=refused):
        load_stage(run)
    with pytest.raises(SystemExit, match=rf"damo-eval: {refused}.*add trust_remote_code=true"):
        damo_eval([f"ckpt={run}", "accelerator=cpu"])
    # Trusted, the build goes ahead (and here fails later for want of those weights, offline).
    with pytest.raises(Exception) as built:
        load_stage(run, trust_remote_code=True)
    assert not isinstance(built.value, UnsafeCheckpointError)


def test_resume_refuses_a_checkpoint_holding_a_pickled_object(
        planted: tuple[Path, Path], clean_root: Path, tmp_path: Path) -> None:
    path, marker = planted
    cfg = compose_run("train", run_overrides(clean_root, "trainer.max_steps=1", f"resume_from={path}"), tmp_path / "run")
    with pytest.raises(UnsafeCheckpointError, match=rf"resume_from={path}: refused to load it: .*weights_only=True"):
        run(cfg)
    assert not marker.exists()


def test_a_decoded_cache_entry_holding_a_pickled_object_is_decoded_again(clean_root: Path, tmp_path: Path) -> None:
    video = next((clean_root / "videos").glob("train_*.mp4"))
    cache = DecodedCache(tmp_path / "cache", DecodeParams(num_frames=2, frame_size=16, num_audio_segments=2,
                                                          audio_segment_frames=10))  # fmt: skip
    first = cache.load(video)
    (entry,) = (tmp_path / "cache").rglob("*.npz")
    marker = tmp_path / "unpickled"
    with entry.open("wb") as handle:
        np.savez(handle, frames=np.array([Planted(marker)], dtype=object))
    with pytest.warns(UserWarning, match="is unreadable.*decoding .* again"):
        again = cache.load(video)
    assert not marker.exists()
    np.testing.assert_array_equal(again.frames, first.frames)


def _sharded_checkpoint(folder: Path, extra: dict | None = None) -> Path:
    """A torch.distributed.checkpoint folder as FSDP's sharded state_dict_type writes it (one process)."""
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.randn(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16)},
             "optimizer": {"param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": ["w"]}]},
             "epoch": 3, **(extra or {})}
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    return folder


def test_a_sharded_checkpoint_is_checked_before_torch_unpickles_it(tmp_path: Path) -> None:
    """torch.distributed.checkpoint reads `.metadata` with pickle.load and non-tensor items with
    torch.load(weights_only=False): a planted object in either is refused, unpickled by nobody."""
    import pickle

    from damo_lit.cli.checkpoint import check_sharded_checkpoint

    check_sharded_checkpoint(_sharded_checkpoint(tmp_path / "real"), "resume_from=real")  # what torch writes passes

    marker = tmp_path / "unpickled"
    in_item = _sharded_checkpoint(tmp_path / "item", {"extra": Planted(marker)})
    with pytest.raises(UnsafeCheckpointError, match=r"resume_from=item: refused to load it: .*\(io\.open\)"):
        check_sharded_checkpoint(in_item, "resume_from=item")

    in_metadata = _sharded_checkpoint(tmp_path / "metadata")
    (in_metadata / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"a pickled Python object \(io\.open\)"):
        check_sharded_checkpoint(in_metadata, "resume_from=metadata")
    assert not marker.exists()


def test_the_fsdp_strategy_refuses_a_sharded_checkpoint_with_planted_metadata(tmp_path: Path) -> None:
    """Every restore under FSDP (resume_from, ckpt_path=, SLURM's hpc_ckpt after a requeue) goes
    through the strategy's load_checkpoint: a planted `.metadata` is refused before torch reads it."""
    import pickle

    from damo_lit.stages.fsdp import fsdp_strategy

    marker = tmp_path / "unpickled"
    folder = _sharded_checkpoint(tmp_path / "hpc_ckpt_1.ckpt")
    (folder / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    strategy = fsdp_strategy(["damo_lit.models.fuseformer.FuseformerBlock"])
    with pytest.raises(UnsafeCheckpointError, match=rf"checkpoint {folder}: refused to load it: .*\(io\.open\)"):
        strategy.load_checkpoint(folder, weights_only=True)
    assert not marker.exists()


def test_resume_from_a_sharded_checkpoint_without_fsdp_says_which_trainer_reads_it(
    clean_root: Path, tmp_path: Path
) -> None:
    folder = _sharded_checkpoint(tmp_path / "last.ckpt")
    cfg = compose_run("train", run_overrides(clean_root, "trainer.max_steps=1", f"resume_from={folder}"), tmp_path / "run")
    with pytest.raises(ValueError, match=rf"resume_from={folder} is a sharded checkpoint folder.*trainer=fsdp"):
        run(cfg)
