"""Fixtures of the data tests: one small synthetic set per session, the tiny tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from damo_lit.data.synthetic import SynthConfig, generate
from damo_lit.models.tokenizer import build_word_tokenizer

SYNTH = SynthConfig(videos=20, seed=3, workers=2)


@pytest.fixture(scope="session")
def synth_config() -> SynthConfig:
    return SYNTH


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 synthetic videos (16 train, 2 val, 2 test), rendered by a 2-process pool."""
    out = tmp_path_factory.mktemp("synth")
    generate(out, SYNTH)
    return out


@pytest.fixture(scope="session")
def tokenizer(repo_root: Path):
    words = (repo_root / "src" / "damo_lit" / "assets" / "tiny_vocab.txt").read_text().splitlines()
    return build_word_tokenizer(words)
