"""Fixtures for stage tests: a small synthetic set and the common overrides of a tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest

from damo_lit.data.synthetic import SynthConfig, generate
from tests.conftest import short_run_overrides


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 short synthetic videos (16 train / 2 val / 2 test), generated once per session."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, SynthConfig(videos=20, seed=7, min_seconds=8, max_seconds=10, workers=2))
    return root


@pytest.fixture()
def tiny_overrides(synthetic_root: Path, tmp_path: Path) -> list[str]:
    """Overrides for a short CPU run of any stage on the tiny model and the small set."""
    return short_run_overrides(synthetic_root)
