"""resume_from mistakes end in one line that says what to give instead, before anything trains:
a run folder, a stage weights file, another stage's checkpoint, a streaming checkpoint without
streaming data, and `last` in a run folder that has no last checkpoint (Lightning would start
from step 0 without a word of error)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from damo_lit.cli.checkpoint import DCP_METADATA
from damo_lit.cli.common import compose_run
from damo_lit.cli.train import check_resume_from, run, train_errors

from .helpers import run_overrides


@pytest.fixture(scope="module")
def finished(clean_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stage-3 run folder (checkpoints/last.ckpt, weights.safetensors) stopped two steps into an
    epoch of three: a resume continues that epoch, restoring the training loader's state."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("finished")
        overrides = run_overrides(clean_root, "trainer.max_steps=2", "data.max_samples_per_split=12")
        run(compose_run("train", overrides, out))
        return out
    finally:
        torch.set_num_threads(threads)


def resume_mistake(root: Path, out: Path, resume_from: str | Path, *extra: str) -> str:
    """What damo-train exits with for this resume_from (its handler around an in-process run)."""
    overrides = run_overrides(root, "trainer.max_steps=3", "trainer.max_epochs=-1", f"resume_from={resume_from}", *extra)
    cfg = compose_run("train", overrides, out)
    with pytest.raises(SystemExit) as exit_info, train_errors():
        run(cfg)
    text = str(exit_info.value)
    assert text.endswith(f"\n(the traceback: {out / 'error.txt'}; DAMO_TRACEBACK=1 shows it here)"), text
    assert "Traceback" not in text
    return text.splitlines()[0]


def test_a_run_folder_names_the_checkpoint_in_it(finished: Path, clean_root: Path, tmp_path: Path) -> None:
    last = finished / "checkpoints" / "last.ckpt"
    for folder in (finished, finished / "checkpoints"):
        assert resume_mistake(clean_root, tmp_path, folder) == (
            f"damo-train: resume_from={folder} is a folder, not a checkpoint; resume_from takes a Lightning "
            f"checkpoint file: resume_from={last}")
    (tmp_path / "empty").mkdir()
    assert resume_mistake(clean_root, tmp_path / "run", tmp_path / "empty").endswith(
        "takes a Lightning checkpoint file: RUN/checkpoints/last.ckpt (or preempted.ckpt, interrupted.ckpt, nonfinite.ckpt)")
    sharded = tmp_path / "sharded.ckpt"  # what trainer=fsdp saves: a folder with DCP's index
    sharded.mkdir()
    (sharded / DCP_METADATA).write_bytes(b"")
    assert check_resume_from(str(sharded)) == str(sharded)


def test_a_stage_weights_file_points_at_init_from(finished: Path, clean_root: Path, tmp_path: Path) -> None:
    weights = finished / "weights.safetensors"
    assert resume_mistake(clean_root, tmp_path, weights) == (
        f"damo-train: resume_from={weights}: this is a stage weights file (weights.safetensors); resume_from takes a "
        f"Lightning checkpoint ({finished / 'checkpoints' / 'last.ckpt'}); to start a stage from these weights use "
        f"stage.init_from={finished}")


def test_another_stages_checkpoint_names_the_stage_to_add(finished: Path, clean_root: Path, tmp_path: Path) -> None:
    last = finished / "checkpoints" / "last.ckpt"
    assert resume_mistake(clean_root, tmp_path, last, "stage=stage1_align") == (
        f"damo-train: resume_from={last}: a stage3 checkpoint, and this run is stage1: add stage=stage3_temporal")


def test_a_streaming_checkpoint_needs_streaming_data(finished: Path, clean_root: Path, tmp_path: Path) -> None:
    """The training loader state that litdata's StreamingDataLoader leaves in a checkpoint (Lightning
    keeps it in the fit loop's combined_loader): a plain data config has no loader to give it to."""
    checkpoint = torch.load(finished / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = checkpoint["loops"]["fit_loop"]["state_dict"]
    assert not state.get("combined_loader"), "a plain DataLoader saves none"
    state["combined_loader"] = [{"dataset": {"num_samples_yielded": 8, "current_epoch": 1}, "current_epoch": 1,
                                 "num_samples_yielded": 8, "latest_worker_idx": 0}]  # fmt: skip
    streamed = tmp_path / "streamed.ckpt"
    torch.save(checkpoint, streamed)
    assert resume_mistake(clean_root, tmp_path / "run", streamed) == (
        f"damo-train: resume_from={streamed}: its training loader state comes from a streaming data source "
        "(data=streaming), and this run's data (data=synthetic) is not one: resume with data=streaming and the "
        "data.streaming_dir it was saved with")


def test_resume_from_last_needs_a_last_checkpoint_in_this_run_folder(
        finished: Path, clean_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = tmp_path / "fresh"
    assert resume_mistake(clean_root, fresh, "last") == (
        f"damo-train: resume_from=last: this run's folder holds no last checkpoint "
        f"({fresh / 'checkpoints' / 'last.ckpt'} does not exist). Every damo-train run gets a new folder, so `last` "
        "finds one only under a fixed hydra.run.dir (e.g. hydra.run.dir=outputs/stage3/job${oc.env:SLURM_JOB_ID}); "
        "else give the checkpoint: resume_from=RUN/checkpoints/last.ckpt")
    assert not (fresh / "checkpoints").exists(), "nothing trained"
    # A fixed run folder that holds one (a requeued job): fit gets that file.
    fixed = tmp_path / "fixed"
    (fixed / "checkpoints").mkdir(parents=True)
    shutil.copy(finished / "checkpoints" / "last.ckpt", fixed / "checkpoints" / "last.ckpt")
    given: list[str | None] = []
    monkeypatch.setattr("damo_lit.cli.train.fit", lambda trainer, stage, datamodule, path: given.append(path))
    run(compose_run("train", run_overrides(clean_root, "trainer.max_steps=3", "resume_from=last"), fixed))
    assert given == [str(fixed / "checkpoints" / "last.ckpt")]
    # SLURM's requeue checkpoint stays Lightning's to find (in trainer.default_root_dir)
    assert check_resume_from("hpc", fixed / "checkpoints" / "last.ckpt") == "hpc"
