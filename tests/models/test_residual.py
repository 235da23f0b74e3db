"""The temporal pathway and the time embeddings: padding to whole windows, scale under masking,
and a learnable embedding that reads real seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from damo_lit.models.config import DaMOConfig, TemporalConfig
from damo_lit.models.residual import MediaResidual, TemporalConv, TimeEmbedding
from tests.models.conftest import tiny_config


def _conv(kernel: int = 2, stride: int = 2, dim: int = 8, groups: int = 2) -> TemporalConv:
    torch.manual_seed(0)
    conv = TemporalConv(dim, TemporalConfig(kernel, stride, groups))
    with torch.no_grad():  # a trained-looking conv: taps differ, bias non-zero
        conv.conv.weight.add_(0.1 * torch.randn_like(conv.conv.weight))
        conv.conv.bias.normal_()
    return conv


def _inputs(n: int, tokens: int = 3, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, n, tokens, dim, generator=g), torch.arange(n).float()[None].repeat(2, 1) + 0.5, torch.ones(2, n, dtype=torch.bool)


@pytest.mark.parametrize("n, kernel, stride, steps", [(5, 2, 2, 3), (32, 2, 2, 16), (1, 2, 2, 1), (7, 3, 2, 3), (2, 4, 1, 1)])
def test_every_frame_reaches_a_compressed_step(n: int, kernel: int, stride: int, steps: int) -> None:
    """The time axis is padded to whole windows: the last frame counts, fewer frames than the kernel work,
    and the step count is the one the config computes."""
    conv = _conv(kernel, stride)
    x, times, mask = _inputs(n)
    y, mean_time, valid = conv(x, times, mask)
    assert y.shape[1] == mean_time.shape[1] == valid.shape[1] == steps == TemporalConfig(kernel, stride).steps(n)
    assert bool(valid.all())
    changed = x.clone()
    changed[:, -1] += 1.0
    assert not torch.allclose(conv(changed, times, mask)[0][:, -1], y[:, -1])
    assert mean_time[0, -1] == times[0, (steps - 1) * stride :].mean()  # padding has no time


def test_a_half_masked_window_keeps_its_scale() -> None:
    """At init (a temporal mean) a window with one valid frame gives that frame, not half of it;
    a window with none gives zeros and is masked, whatever the bias."""
    conv = TemporalConv(8, TemporalConfig(2, 2, 2))
    with torch.no_grad():
        conv.conv.bias.fill_(0.3)
    x, times, mask = _inputs(6)
    mask[0, 3] = False  # window 1 of sample 0: one of two frames valid
    mask[1, 4:] = False  # window 2 of sample 1: no frame valid
    y, mean_time, valid = conv(x, times, mask)
    torch.testing.assert_close(y[0, 1], x[0, 2] + 0.3)
    torch.testing.assert_close(y[0, 0], (x[0, 0] + x[0, 1]) / 2 + 0.3)
    assert mean_time[0, 1] == times[0, 2]
    assert valid[0].all() and valid[1].tolist() == [True, True, False]
    assert torch.count_nonzero(y[1, 2]) == 0
    # a trained conv: the valid frame's term doubled (kernel 2 / 1 valid frame), the bias once
    conv = _conv()
    zeroed = x.clone()
    zeroed[0, 3] = 0.0
    unscaled = conv(zeroed, times, torch.ones_like(mask))[0][0, 1]
    bias = conv.conv.bias.detach()
    torch.testing.assert_close(conv(x, times, mask)[0][0, 1], 2 * (unscaled - bias) + bias)


def test_the_learnable_time_embedding_reads_seconds() -> None:
    """The MLP reads absolute seconds too: at the same relative time, another duration's seconds
    change the learned term even with both fixed sinusoids switched off."""
    embed = TimeEmbedding(16)
    with torch.no_grad():
        embed.gain.zero_()
    rel = torch.tensor([[0.25, 0.5]])
    short, long = embed(rel * 10.0, rel), embed(rel * 600.0, rel)
    assert not torch.allclose(short, long)
    assert torch.isfinite(embed(torch.tensor([[0.0, 7200.0]]), torch.tensor([[0.0, 1.0]]))).all()


def test_window_masks_reach_the_stream_tokens() -> None:
    """MediaResidual on 5 frames (kernel = stride = 2): 3 steps of L' tokens each; a step whose
    frames are all padding is masked in every one of its tokens, the others are not."""
    cfg = DaMOConfig.from_mapping(tiny_config(Path("/nonexistent")))
    residual = MediaResidual(cfg, vision_dim=8, audio_dim=None).eval()
    tokens = cfg.residual.video_tokens
    frame_mask = torch.tensor([[True, True, False, False, False], [True, True, True, True, True]])
    times = torch.arange(5).float()[None].repeat(2, 1)
    stream = residual.video_stream(torch.randn(2, 5, 8), torch.randn(2, 5, 16, 8), times, frame_mask, torch.tensor([5.0, 5.0]))
    assert stream.tokens.shape == (2, 3 * tokens, cfg.fuseformer.hidden)
    assert stream.mask[0].tolist() == [True] * tokens + [False] * 2 * tokens
    assert bool(stream.mask[1].all())
    torch.testing.assert_close(stream.times[1, -tokens:], torch.full((tokens,), 4.0 / 5.0))  # the padded step's time: frame 4's
