"""Fixtures of the scale tests: a small synthetic set, its feature cache, the common overrides."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from damo_lit.data.synthetic import SynthConfig, generate

FROZEN = ["model.vision.trainable=false", "model.audio.trainable=false"]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 short synthetic videos (12 train / 2 val / 2 test), generated once per session."""
    root = tmp_path_factory.mktemp("scale-synth")
    generate(root, SynthConfig(videos=16, seed=11, min_seconds=8, max_seconds=10, workers=2))
    return root


@pytest.fixture(scope="session")
def data_overrides(synth_root: Path) -> list[str]:
    """The data keys of a tiny CPU run on that set (no generation, no decoded cache, no workers)."""
    return [
        f"data.root={synth_root}",
        "data.generate=null",
        "data.decoded_cache_dir=null",
        "data.num_workers=0",
        "data.batch_size=4",
    ]


@pytest.fixture(scope="session")
def feature_cache(synth_root: Path, data_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The frozen tiny towers' features of every video of the set, made by damo-cache."""
    from damo_lit.cli.cache import main

    out = tmp_path_factory.mktemp("scale-features") / "cache"
    assert main([*data_overrides, *FROZEN, f"out={out}", "num_workers=0", "shard_size=6"]) == 0
    return out


@pytest.fixture()
def train_overrides(data_overrides: list[str]) -> list[str]:
    """Overrides for a short CPU run of any stage on the tiny model and the small set."""
    return [
        *data_overrides,
        "logger=csv",
        "callbacks.progress_bar=null",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_gloo_ranks(script: Path, args: list[str], ranks: int = 2, timeout: float = 240) -> None:
    """Run `script` as `ranks` processes of one gloo process group (env:// rendezvous); fail with
    a rank's output when one exits non-zero."""
    port = free_port()
    procs = []
    for rank in range(ranks):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    for rank, proc in enumerate(procs):
        output, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"rank {rank}: " + output[-3000:]
