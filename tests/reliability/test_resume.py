"""Exact resume: a stage-3 run killed mid-epoch (SIGKILL) or preempted (SIGTERM) and resumed ends
with the weights of an uninterrupted run - the shuffled data order, the optimizer, the LR schedule
and the dropout RNG all continue where they stood."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from damo_lit.cli.common import compose, compose_run
from damo_lit.cli.train import PREEMPTED_EXIT_CODE, build_run, fit, retire_requeue_checkpoints, run
from damo_lit.data.dataset import EpochSampler

from .helpers import damo_train, run_overrides, subprocess_env, train_command

# 12 training samples in batches of 4: 3 steps an epoch, 9 in all; a checkpoint every 2 steps.
# LoRA dropout on (the paper uses 0.05, the tiny recipe none; 0.5 here makes a wrong RNG obvious).
STEPS, PER_EPOCH = 9, 3


def resume_overrides(root: Path, *extra: str) -> list[str]:
    return run_overrides(root, "trainer.max_epochs=3", "data.max_samples_per_split=12",
                         "callbacks.model_checkpoint.every_n_train_steps=2",
                         "callbacks.model_checkpoint.save_top_k=-1", "model.llm.lora.dropout=0.5", *extra)  # fmt: skip


class BatchLog(L.Callback):
    """(epoch, batch index, sample ids) of every training batch, and the (lr, weight decay) of each
    parameter group it trains with."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, tuple[str, ...]]] = []
        self.rates: list[tuple[tuple[float, float], ...]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.batches.append((trainer.current_epoch, batch_idx, tuple(batch["sample_id"])))
        self.rates.append(tuple((g["lr"], g["weight_decay"]) for g in trainer.optimizers[0].param_groups))


@dataclass
class Run:
    out: Path
    batches: list[tuple[int, int, tuple[str, ...]]]
    rates: list[tuple[tuple[float, float], ...]]
    trainer: L.Trainer

    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.out / "weights.safetensors"))


def train_in_process(root: Path, out: Path, resume_from: Path | None = None, *extra: str) -> Run:
    cfg = compose_run("train", resume_overrides(root, *extra), out)
    stage, datamodule, trainer = build_run(cfg)
    log = BatchLog()
    trainer.callbacks.append(log)
    fit(trainer, stage, datamodule, str(resume_from) if resume_from else None)
    return Run(out, log.batches, log.rates, trainer)


@pytest.fixture(scope="module")
def reference(clean_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The uninterrupted run (the autouse one_thread fixture does not reach module fixtures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_in_process(clean_root, tmp_path_factory.mktemp("reference"))
    finally:
        torch.set_num_threads(threads)


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=lambda m: f"{key}: {m}")


def test_epoch_sampler_order_depends_on_seed_and_epoch_only() -> None:
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first  # same epoch, same order
    again = EpochSampler(10, seed=3)
    again.set_epoch(1)
    assert list(again) == first  # a fresh process draws the same order
    sampler.set_epoch(2)
    assert list(sampler) != first
    sampler.resume_at(1, 4)  # the first pass over epoch 1 starts after 4 samples; later passes are whole
    assert list(sampler) == first[4:] and list(sampler) == first
    shards = [list(EpochSampler(10, num_replicas=2, rank=r, seed=3)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(10)) and len(shards[0]) == 5


def test_resume_mid_epoch_continues_the_order_and_ends_with_the_same_weights(
        reference: Run, clean_root: Path, tmp_path: Path) -> None:
    assert [b[:2] for b in reference.batches] == [(e, i) for e in range(3) for i in range(PER_EPOCH)]
    assert reference.batches[0][2] != reference.batches[PER_EPOCH][2], "each epoch has its own order"
    checkpoint = reference.out / "checkpoints" / "step000004.ckpt"  # epoch 1, one batch of 3 trained
    resumed = train_in_process(clean_root, tmp_path, resume_from=checkpoint)
    assert resumed.batches == reference.batches[4:]
    assert resumed.rates == reference.rates[4:], "the checkpoint's rates, untouched"
    assert resumed.trainer.global_step == STEPS
    scheduler = resumed.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == STEPS
    assert_same_weights(resumed.weights(), reference.weights())


def test_resume_with_a_new_lr_and_weight_decay_continues_the_schedule_at_the_new_peak(
        reference: Run, clean_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Lightning restores the checkpoint's rates over the configured ones: without the stage's
    on_train_start a lower lr on resume (docs/reliability.md, after non-finite losses) did nothing."""
    checkpoint = reference.out / "checkpoints" / "step000004.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["optimizer_states"][0]["param_groups"]
    peak = saved[0]["initial_lr"]
    assert [g["weight_decay"] for g in saved] == [0.02, 0.0] and all(g["initial_lr"] == peak for g in saved)
    with caplog.at_level(logging.INFO, logger="damo_lit"):
        resumed = train_in_process(clean_root, tmp_path, checkpoint, f"stage.optimizer.lr={peak / 4}",
                                   "stage.optimizer.weight_decay=0.1")  # fmt: skip
    assert resumed.batches == reference.batches[4:]
    # the same step of the same schedule, at a quarter of the peak; no decay stays without decay
    want = [tuple((lr / 4, wd) for (lr, _), wd in zip(step, (0.1, 0.0))) for step in reference.rates[4:]]
    assert len(resumed.rates) == len(want) and all(r > 0 for step in want for r, _ in step)
    flat = [value for step in resumed.rates for group in step for value in group]
    assert flat == pytest.approx([value for step in want for group in step for value in group], rel=1e-9)
    scheduler = resumed.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.base_lrs == pytest.approx([peak / 4] * 2) and scheduler.last_epoch == STEPS
    changed = [r.getMessage() for r in caplog.records if "replace the checkpoint's" in r.getMessage()]
    assert changed == [f"stage3: the configured optimizer settings replace the checkpoint's: lr {peak:g} -> "
                       f"{peak / 4:g} (decay, no_decay); weight_decay 0.02 -> 0.1 (decay); the schedule goes on "
                       "from step 4"]
    weights, want_weights = resumed.weights(), reference.weights()
    assert any(not torch.equal(weights[k], want_weights[k]) for k in want_weights), "trained at the new rate"


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    start = time.time()
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended (rc {process.returncode}) before {path.name} appeared:\n{err[-3000:]}")
        if time.time() - start > timeout:
            process.kill()
            pytest.fail(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(
        reference: Run, clean_root: Path, tmp_path: Path) -> None:
    killed, resumed = tmp_path / "killed", tmp_path / "resumed"
    overrides = resume_overrides(clean_root)
    process = subprocess.Popen(train_command(killed, overrides), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=subprocess_env())  # fmt: skip
    checkpoint = killed / "checkpoints" / "step000004.ckpt"
    _wait_for(checkpoint, process)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "weights.safetensors").exists(), "the run was killed before it finished"
    done = damo_train(resumed, [*overrides, f"resume_from={checkpoint}"])
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resuming from a checkpoint that ended before the epoch ended" not in done.stderr
    assert_same_weights(load_file(str(resumed / "weights.safetensors")), reference.weights())


def test_sigterm_saves_a_checkpoint_exits_143_and_resumes_exactly(
        reference: Run, clean_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "preempted"
    process = subprocess.Popen(train_command(out, resume_overrides(clean_root)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=subprocess_env())  # fmt: skip
    _wait_for(out / "checkpoints" / "step000002.ckpt", process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    saved = out / "checkpoints" / "preempted.ckpt"
    assert f"resume with resume_from={saved}" in stdout + stderr  # Hydra logs to stdout
    assert "Traceback" not in stdout + stderr
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    step = checkpoint["global_step"]
    assert 2 <= step < STEPS, "stopped after the batch in flight, before the end"
    position = checkpoint["DaMODataModule"]["train_position"]
    assert (position["epoch"], position["batches"]) == divmod(step, PER_EPOCH)
    assert not (out / "weights.safetensors").exists()
    resumed = train_in_process(clean_root, tmp_path / "resumed", resume_from=saved)
    assert resumed.batches == reference.batches[step:]
    assert_same_weights(resumed.weights(), reference.weights())


def test_ctrl_c_saves_a_checkpoint_after_the_step_and_exits_130(clean_root: Path, tmp_path: Path) -> None:
    """Ctrl-C in a terminal reaches every process of the job (here the whole process group: the
    run, its loader worker and the fork server): training stops after the current step with
    checkpoints/interrupted.ckpt at a consistent position, instead of losing what followed the
    last periodic checkpoint; the worker keeps serving until then."""
    from damo_lit.cli.train import INTERRUPTED_EXIT_CODE

    out = tmp_path / "interrupted"
    process = subprocess.Popen(train_command(out, resume_overrides(clean_root, "data.num_workers=1")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                               start_new_session=True)  # fmt: skip
    _wait_for(out / "checkpoints" / "step000002.ckpt", process)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == INTERRUPTED_EXIT_CODE, stderr[-3000:]
    saved = out / "checkpoints" / "interrupted.ckpt"
    assert "stopped by Ctrl-C" in stdout + stderr and f"resume with resume_from={saved}" in stdout + stderr
    assert "Traceback" not in stdout + stderr
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    step = checkpoint["global_step"]
    assert 2 <= step < STEPS
    position = checkpoint["DaMODataModule"]["train_position"]
    assert (position["epoch"], position["batches"]) == divmod(step, PER_EPOCH)


def test_resume_refuses_a_checkpoint_that_lacks_trained_weights(
        reference: Run, clean_root: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(reference.out / "checkpoints" / "step000004.ckpt", map_location="cpu", weights_only=True)
    lora = sorted(k for k in checkpoint["state_dict"] if "lora_" in k)
    assert lora, "stage 3 trains LoRA and its checkpoints keep it"
    del checkpoint["state_dict"][lora[0]]
    torch.save(checkpoint, tmp_path / "partial.ckpt")
    cfg = compose_run("train", [*resume_overrides(clean_root), f"resume_from={tmp_path / 'partial.ckpt'}"],
                      tmp_path / "run")
    with pytest.raises(ValueError, match=rf"lacks 1 weight\(s\) that stage stage3 trains or keeps \({lora[0]}\)"):
        run(cfg)


def test_resume_names_the_model_config_keys_a_checkpoint_was_saved_with(
        reference: Run, clean_root: Path, tmp_path: Path) -> None:
    """Another query count (a tensor of another size) or a shallower Fuseformer (tensors this model
    lacks): the keys that differ, not Lightning's size or optimizer-group complaint."""
    checkpoint = reference.out / "checkpoints" / "step000004.ckpt"
    for change, message in (
        ("model.projector.queries=5", r"the checkpoint: \d+ tensor\(s\) do not fit this model .*it was saved with "
                                      r"another model config \(model\.projector\.queries \(was 32, now 5\)\)"),
        ("model.fuseformer.depth=2", r"the checkpoint: lacks \d+ weight\(s\) .*fuseformer\.blocks\.1\..*it was saved "
                                     r"with another model config \(model\.fuseformer\.depth \(was 1, now 2\)\)"),
    ):
        cfg = compose_run("train", [*resume_overrides(clean_root), f"resume_from={checkpoint}", change],
                          tmp_path / change)
        with pytest.raises(ValueError, match=message):
            run(cfg)


def test_slurm_trainer_requeues_and_resumes_from_a_job_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.utils import instantiate
    from lightning.fabric.plugins.environments import SLURMEnvironment

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cfg = compose("train", ["trainer=slurm"])
    (plugin,) = instantiate(cfg.trainer.plugins)
    assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue
    assert plugin.requeue_signal == signal.SIGUSR1
    # the requeued job (same id) finds the hpc checkpoint where the first start left it
    assert cfg.trainer.default_root_dir.endswith("/outputs/slurm/job4242")
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy")

    # After a finished fit the requeue checkpoints are renamed, so that trainer.test uses the final
    # weights instead of Lightning loading the newest hpc_ckpt.
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "stage3")
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False)
    trainer.state.status = trainer.state.status.FINISHED
    assert retire_requeue_checkpoints(trainer) == [tmp_path / "requeue_1.ckpt"]
    assert not list(tmp_path.glob("hpc_ckpt_*")) and trainer._checkpoint_connector._hpc_resume_path is None
