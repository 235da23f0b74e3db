"""Shared test set-up: offline everything, and a fixture for ../shared reference data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Nothing may reach a model hub or W&B's servers from a test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def short_run_overrides(root: Path) -> list[str]:
    """Overrides of a short CPU run of any stage on the tiny model and the small synthetic set in
    `root` (decoded cache beside it, CSV logs, no progress bars, no generation)."""
    return [
        f"data.root={root}",
        f"data.decoded_cache_dir={root / 'decoded'}",
        "data.generate=null",
        "data.num_workers=0",
        "data.batch_size=4",
        "data.prepare_workers=1",
        "logger=csv",
        "callbacks.progress_bar=null",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
    ]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: a user's fresh clone has no ../shared (CI always has it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data folder {SHARED_DATA} is absent (only CI and the dev machines have ../shared)")
    return SHARED_DATA
