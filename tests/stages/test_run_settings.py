"""Run settings a user types that used to fail or mislead: trainer.enable_progress_bar=false alone,
test_after_fit given a word that is not a boolean, a later stage started without stage.init_from."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from damo_lit.cli.common import compose_run
from damo_lit.cli.train import build_run, run

ONE_STEP = ["trainer.max_steps=1", "trainer.limit_val_batches=0", "test_after_fit=false"]


def test_progress_bar_off_needs_no_second_key(tiny_overrides: list[str], tmp_path: Path) -> None:
    """Lightning refuses a progress-bar callback under enable_progress_bar=false: the configured
    bar is left out then, not the user's business to null as well."""
    overrides = [o for o in tiny_overrides if not o.startswith("callbacks.progress_bar")]
    assert "trainer.enable_progress_bar=false" in overrides
    _, _, trainer = build_run(compose_run("train", ["stage=stage3_temporal", *overrides], tmp_path))
    assert trainer.progress_bar_callback is None
    with_bar = [o for o in overrides if not o.startswith("trainer.enable_progress_bar")] + [
        "callbacks.progress_bar.style=rich"]
    _, _, trainer = build_run(compose_run("train", ["stage=stage3_temporal", *with_bar], tmp_path / "bar"))
    assert type(trainer.progress_bar_callback).__name__ == "StageProgressBar"
    _, _, trainer = build_run(compose_run("train", ["stage=stage3_temporal", *overrides,
                                                    "+trainer.enable_checkpointing=false"], tmp_path / "no_ckpt"))
    assert trainer.checkpoint_callback is None  # the configured ModelCheckpoint left out, not refused


def test_test_after_fit_takes_a_boolean_only(tiny_overrides: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_after_fit=no: expected true or false"):
        run(compose_run("train", ["stage=stage3_temporal", *tiny_overrides, "test_after_fit=no"], tmp_path))


def test_stage_trainable_given_as_one_word_is_one_group(tiny_overrides: list[str], tmp_path: Path) -> None:
    """stage.trainable=fuseformer: the group, not the letters of its name ('unknown group e, f, m, ...')."""
    stage = build_run(compose_run("train", ["stage=stage4_dialogue", *tiny_overrides, "model.vision.trainable=false",
                                            "model.audio.trainable=false", "model.llm.trainable=false",
                                            "stage.trainable=fuseformer"], tmp_path))[0]
    assert stage.trainable_groups == ["fuseformer"]


def test_a_later_stage_without_init_from_says_it_starts_untrained(
        tiny_overrides: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="damo_lit.train"):
        run(compose_run("train", ["stage=stage3_temporal", *tiny_overrides, *ONE_STEP], tmp_path))
    assert "stage3 starts without stage.init_from" in caplog.text


def test_a_run_folder_of_another_stage_is_refused(tiny_overrides: list[str], tmp_path: Path) -> None:
    """Stage 2 into stage 3's finished folder would replace its weights and keep its adapter and
    checkpoints beside them; refused before anything is built."""
    (tmp_path / "stage.json").write_text('{"stage": "stage3", "model_cfg": {}}')
    with pytest.raises(ValueError, match=f"hydra.run.dir={tmp_path} holds a finished stage3 run \\(stage.json\\); "
                                         "a stage2 run there would mix their files"):
        run(compose_run("train", ["stage=stage2_bridge", *tiny_overrides, *ONE_STEP], tmp_path))


def test_the_same_stage_again_replaces_its_checkpoints(tiny_overrides: list[str], tmp_path: Path) -> None:
    """A rerun into the same folder (make demo's) replaces last.ckpt: Lightning would write
    last-v1.ckpt beside the old one, and resume_from=last would then take the old run's."""
    for _ in range(2):
        run(compose_run("train", ["stage=stage3_temporal", *tiny_overrides, *ONE_STEP], tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


def test_run_folders_of_slurm_jobs_are_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """An array's jobs start in the same second: the job and task ids keep their folders apart."""
    from omegaconf import OmegaConf

    from damo_lit.cli.common import register_resolvers

    register_resolvers()
    folder = OmegaConf.create({"dir": "outputs/run${slurm_job_suffix:}"})
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert folder.dir == "outputs/run"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert folder.dir == "outputs/run_job4242"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert folder.dir == "outputs/run_job4242_3"
    hydra_conf = Path(__file__).parents[2] / "conf" / "hydra" / "default.yaml"
    hydra = OmegaConf.to_container(OmegaConf.load(hydra_conf), resolve=False)
    assert all(d.endswith("${slurm_job_suffix:}") for d in (hydra["run"]["dir"], hydra["sweep"]["dir"]))


@pytest.mark.parametrize(("word", "expected"), [
    ("trainer.max_steps=1O", "trainer.max_steps=1O: expected an integer (the default is"),
    ("seed=abc", "seed=abc: expected an integer (the default is 42)"),
    ("stage.optimizer.lr=fast", "stage.optimizer.lr=fast: expected a number (the default is 0.001)"),  # tiny_smoke's
    ("test_after_fit=no", "test_after_fit=no: expected true or false (the default is True)"),
    ("trainer.max_steps=2.5", "trainer.max_steps=2.5: expected an integer"),
])
def test_a_value_of_the_wrong_kind_names_its_key(word: str, expected: str) -> None:
    """A word where the default is a number or a boolean failed deep in Lightning or torch without
    naming the key (or, for a boolean, was read as true)."""
    from damo_lit.cli.common import compose
    from damo_lit.cli.train import check_override_types

    overrides = ["experiment=tiny_smoke", word]
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_override_types(compose("train", overrides), overrides)


def test_values_of_the_right_kind_pass() -> None:
    from damo_lit.cli.common import compose
    from damo_lit.cli.train import check_override_types

    overrides = ["stage=stage3_temporal", "trainer=ddp", "trainer.devices=auto", "stage.optimizer.lr=1",
                 "model.fuseformer.depth=2", "trainer.max_steps=3", "test_after_fit=false", "+extra.key=word",
                 "data.root=/somewhere", "trainer.limit_val_batches=0.5", "callbacks.progress_bar=null"]
    check_override_types(compose("train", overrides), overrides)
