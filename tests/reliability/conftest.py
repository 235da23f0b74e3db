"""Fixtures of the reliability tests: small synthetic sets (one clean, one with injected faults),
the overrides of a tiny CPU run, and single-threaded torch.

Torch's default of one thread per core slows the tiny model twenty-fold when another process
shares the two cores (OpenMP threads spin against each other), so the in-process runs use one
thread and the subprocesses get OMP_NUM_THREADS=1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from damo_lit.data.synthetic import SynthConfig, generate

CLEAN = SynthConfig(videos=20, seed=7, min_seconds=8, max_seconds=10, workers=2)
FAULTY = SynthConfig(videos=20, seed=11, min_seconds=8, max_seconds=10, workers=2, faults=0.25)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def clean_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 clean videos of 8-10 s (16 train / 2 val / 2 test)."""
    root = tmp_path_factory.mktemp("clean")
    generate(root, CLEAN)
    return root


@pytest.fixture(scope="session")
def faulty_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 videos, a quarter of each split faulty (train: one garbage, empty, missing, no-audio each)."""
    root = tmp_path_factory.mktemp("faulty")
    generate(root, FAULTY)
    return root
