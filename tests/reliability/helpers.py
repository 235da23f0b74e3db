"""Helpers of the reliability tests: the overrides of a short stage-3 run, damo-train in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from tests.conftest import short_run_overrides


def run_overrides(root: Path, *extra: str) -> list[str]:
    """A short stage-3 CPU run on the set in `root` (decoded cache beside it, CSV logs, no test)."""
    return [
        "stage=stage3_temporal",
        *short_run_overrides(root),
        "trainer.limit_val_batches=0",
        "test_after_fit=false",
        *extra,
    ]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def train_command(out: Path, overrides: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "damo_lit.cli.train", f"hydra.run.dir={out}", *overrides]


def damo_train(out: Path, overrides: Sequence[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """damo-train in a subprocess, as a user runs it."""
    return subprocess.run(train_command(out, overrides), capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env())
