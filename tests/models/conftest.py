"""Fixtures for the model tests: the tiny parts saved once per session, a model factory, and
random batches that follow docs/contracts.md (uint8 frames, log-mel segments, masks, times)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import transformers
from omegaconf import OmegaConf

from damo_lit.cli.common import compose
from damo_lit.cli.model import ensure_tiny_pretrained
from damo_lit.models.damo import DaMO, build_damo

transformers.logging.set_verbosity_error()


def tiny_config(cache_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The damo_tiny model node as a plain dict, its tiny parts under `cache_dir`."""
    cfg = compose("model_summary", [f"paths.cache_dir={cache_dir}", *overrides])
    return OmegaConf.to_container(cfg.model, resolve=True)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder whose tiny_models/ holds the saved random-init parts."""
    cache = tmp_path_factory.mktemp("cache")
    ensure_tiny_pretrained(cache / "tiny_models", tiny_config(cache))
    return cache


@pytest.fixture(scope="session")
def make_damo(tiny_cache: Path) -> Callable[..., DaMO]:
    """make_damo("fuseformer.depth=1", ...) -> a DaMO built from the saved tiny parts."""

    def make(*overrides: str) -> DaMO:
        return build_damo(tiny_config(tiny_cache, [f"model.{o}" for o in overrides]))

    return make


@dataclass
class Batch:
    frames: torch.Tensor
    frame_times: torch.Tensor
    frame_mask: torch.Tensor
    audio_mel: torch.Tensor
    audio_times: torch.Tensor
    audio_mask: torch.Tensor
    duration: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_attention_mask: torch.Tensor

    def media(self) -> dict[str, torch.Tensor]:
        return {
            "frames": self.frames,
            "frame_times": self.frame_times,
            "frame_mask": self.frame_mask,
            "audio_mel": self.audio_mel,
            "audio_times": self.audio_times,
            "audio_mask": self.audio_mask,
            "duration": self.duration,
        }


PROMPTS = [
    ("<video> when does the red circle appear ?", "from 12 to 40 ."),
    ("describe the video . <video>", "a blue square appears and a tone sounds ."),
    ("user : <video> what sound is heard ?", "a high tone ."),
]


def make_batch(damo: DaMO, batch: int = 3, frames: int | None = None, segments: int | None = None, seed: int = 0) -> Batch:
    """Random media and real tokenised text (right-padded training, left-padded prompts)."""
    cfg = damo.cfg
    n = frames or cfg.num_frames
    m = segments or cfg.num_audio_segments
    g = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    duration = 8.0 + 12.0 * torch.rand(batch, generator=g)
    frame_times = (torch.arange(n) + 0.5)[None] / n * duration[:, None]
    audio_times = (torch.arange(m) + 0.5)[None] / m * duration[:, None]
    tok = damo.tokenizer
    pairs = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    full = [f"{p} {a} {tok.eos_token}" for p, a in pairs]
    tok.padding_side = "right"
    enc = tok(full, return_tensors="pt", padding=True)
    labels = enc.input_ids.clone()
    for i, (p, _) in enumerate(pairs):  # labels on the answer (and EOS) only
        prompt_len = len(tok(p)["input_ids"])
        labels[i, :prompt_len] = -100
    labels[enc.attention_mask == 0] = -100
    tok.padding_side = "left"
    prompt = tok([p for p, _ in pairs], return_tensors="pt", padding=True)
    tok.padding_side = "right"
    return Batch(
        frames=torch.randint(0, 256, (batch, n, 3, size, size), dtype=torch.uint8, generator=g),
        frame_times=frame_times,
        frame_mask=torch.ones(batch, n, dtype=torch.bool),
        audio_mel=torch.randn(batch, m, cfg.audio.n_mels, cfg.audio.segment_frames, generator=g),
        audio_times=audio_times,
        audio_mask=torch.ones(batch, m, dtype=torch.bool),
        duration=duration,
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        labels=labels,
        prompt_ids=prompt.input_ids,
        prompt_attention_mask=prompt.attention_mask,
    )
