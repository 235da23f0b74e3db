"""Every stage x trainer combination composes and instantiates (FSDP included, not run on CPU);
`trainer.devices` > 1 selects DDP."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from damo_lit.cli.common import compose_run

STAGES = ["stage1_align", "stage2_bridge", "stage3_temporal", "stage4_dialogue"]
TRAINERS = ["default", "cpu", "gpu", "ddp", "fsdp", "slurm"]


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("stage", STAGES)
def test_stage_and_trainer_configs_instantiate(stage: str, trainer: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if trainer == "slurm":  # as inside an allocation
        for key, value in {"SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1",
                           "SLURM_JOB_NAME": "damo", "SLURM_JOB_ID": "1"}.items():
            monkeypatch.setenv(key, value)
    cfg = compose_run("train", [f"stage={stage}", f"trainer={trainer}", "logger=csv"], tmp_path)
    assert cfg.stage.name == stage.split("_")[0]
    assert cfg.stage._target_.startswith("damo_lit.stages.")
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    if trainer == "slurm":
        plugin = instantiate(cfg.trainer.plugins[0])
        assert plugin.auto_requeue and plugin.requeue_signal.name == "SIGUSR1"
    if trainer in ("gpu", "fsdp", "slurm"):
        if trainer == "fsdp":
            strategy = instantiate(cfg.trainer.strategy)
            assert isinstance(strategy, FSDPStrategy)
        assert cfg.trainer.precision == "bf16-mixed"
        if not torch.cuda.is_available():  # the strategy object is built and checked; the Trainer refuses the accelerator
            with pytest.raises(Exception, match="(?i)gpu|cuda"):
                instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)
            return
    built = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)
    assert isinstance(built, L.Trainer)
    if trainer == "fsdp":  # on a GPU node
        assert isinstance(built.strategy, FSDPStrategy)
    if trainer == "ddp":
        assert isinstance(built.strategy, DDPStrategy) and built.num_devices == 2


def test_more_than_one_device_selects_ddp(tmp_path: Path) -> None:
    cfg = compose_run("train", ["trainer.devices=2", "trainer.accelerator=cpu", "logger=csv"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2


@pytest.mark.parametrize("stage", STAGES)
def test_learning_rates_follow_the_paper_unless_the_model_recipe_says_otherwise(stage: str) -> None:
    from damo_lit.cli.common import compose

    def lr(*overrides: str) -> float:
        return float(compose("train", [f"stage={stage}", *overrides]).stage.optimizer.lr)

    assert lr("model=damo_paper") == 1e-4, "the paper: AdamW at 1e-4 in every stage"
    tiny = compose("train", ["model=damo_tiny"]).model.recipe
    expected = tiny.stage4_lr if stage == "stage4_dialogue" else tiny.lr
    assert lr("model=damo_tiny") == expected
    assert lr("model=damo_tiny", "~model.recipe.stage4_lr") == tiny.lr, "without stage4_lr, recipe.lr serves"
    assert lr("model=damo_tiny", "stage.optimizer.lr=5e-5") == 5e-5, "an explicit lr wins"
