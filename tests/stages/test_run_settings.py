"""Run settings a user types that used to fail or mislead: trainer.enable_progress_bar=false alone,
test_after_fit given a word that is not a boolean, a later stage started without stage.init_from."""

from __future__ import annotations

import logging
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
    with_bar = [o for o in overrides if not o.startswith("trainer.enable_progress_bar")]
    _, _, trainer = build_run(compose_run("train", ["stage=stage3_temporal", *with_bar], tmp_path / "bar"))
    assert type(trainer.progress_bar_callback).__name__ == "StageProgressBar"


def test_test_after_fit_takes_a_boolean_only(tiny_overrides: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_after_fit=no: expected true or false"):
        run(compose_run("train", ["stage=stage3_temporal", *tiny_overrides, "test_after_fit=no"], tmp_path))


def test_a_later_stage_without_init_from_says_it_starts_untrained(
        tiny_overrides: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="damo_lit.train"):
        run(compose_run("train", ["stage=stage3_temporal", *tiny_overrides, *ONE_STEP], tmp_path))
    assert "stage3 starts without stage.init_from" in caplog.text
