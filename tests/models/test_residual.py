"""The global residual, the temporal pathway and the time embeddings: pool(local) + FFN(global),
padding to whole windows, scale under masking, fixed sinusoids of seconds and relative time, and a
learnable embedding that reads real seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from damo_lit.models.config import DaMOConfig, TemporalConfig
from damo_lit.models.layers import MaskedBatchNorm
from damo_lit.models.residual import GlobalResidual, MediaResidual, TemporalConv, TimeEmbedding
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


def _reference_sinusoid(x: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """[sin(x * w_k), cos(x * w_k)] with w_k = max_period ** (-k / (dim // 2)), written out here
    rather than taken from damo_lit.models.layers, so that the test checks the formula itself."""
    half = dim // 2
    omegas = torch.tensor([max_period ** (-k / half) for k in range(half)], dtype=torch.float64)
    angles = x.double()[..., None] * omegas
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


def _fixed_only_time_embedding(dim: int, gains: tuple[float, float]) -> TimeEmbedding:
    """A TimeEmbedding whose learnable MLP outputs exactly zero, so only the fixed sinusoids remain."""
    torch.manual_seed(0)
    embed = TimeEmbedding(dim).eval()
    with torch.no_grad():
        embed.mlp[-1].weight.zero_()
        embed.mlp[-1].bias.zero_()
        embed.gain.copy_(torch.tensor(gains))
    return embed


def test_the_fixed_time_sinusoids_follow_their_formula() -> None:
    """With the learned MLP silenced the embedding is still time-dependent and equals
    gain0 * sinusoid(seconds, period 1e4) + gain1 * sinusoid(100 * rel, period 1e3), NaN rel -> 0."""
    dim, gains = 16, (0.7, 1.3)
    embed = _fixed_only_time_embedding(dim, gains)
    seconds = torch.tensor([[0.0, 3.0, 47.5, 600.0], [1.0, 1.0, 1.0, 1.0]])
    rel = torch.tensor([[0.0, 0.1, 0.5, 1.0], [0.0, 0.25, 0.5, float("nan")]])
    with torch.no_grad():
        out = embed(seconds, rel)
    expected = gains[0] * _reference_sinusoid(seconds, dim, 10_000.0) + gains[1] * _reference_sinusoid(
        torch.nan_to_num(rel, nan=0.0) * 100.0, dim, 1000.0
    ) * (~rel.isnan())[..., None]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # each time alone moves the embedding, with no learned term to do it
        base = embed(torch.tensor([[30.0]]), torch.tensor([[0.5]]))
        other_seconds = embed(torch.tensor([[90.0]]), torch.tensor([[0.5]]))
        other_rel = embed(torch.tensor([[30.0]]), torch.tensor([[0.2]]))
    assert (base - other_seconds).abs().max() > 0.1
    assert (base - other_rel).abs().max() > 0.1
    assert out[1, 3].abs().max() > 0.1  # a timeless token (NaN rel) keeps its absolute-seconds term


def _residual(grid: bool, feature_norm: str, tokens: int, in_dim: int = 6, out_dim: int = 5) -> GlobalResidual:
    """A GlobalResidual with non-trivial norms (random affine, running statistics) for an exact check."""
    torch.manual_seed(3)
    module = GlobalResidual(in_dim, out_dim, tokens, grid, True, 2.0, feature_norm).eval()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.LayerNorm, MaskedBatchNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
            if isinstance(m, MaskedBatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return module


@pytest.mark.parametrize("feature_norm", ["none", "batch"])
@pytest.mark.parametrize("grid", [False, True])
def test_the_global_residual_is_pooled_locals_plus_ffn_of_the_global(grid: bool, feature_norm: str) -> None:
    """Output = proj(norm(mean of each local block + ffn(global))), blocks averaged by hand (a 4x4
    patch grid into 2x2 row-major, or 12 tokens into 3 runs of 4); global and locals each matter."""
    tokens, patches, b, d = (4, 16, 3, 6) if grid else (3, 12, 3, 6)
    module = _residual(grid, feature_norm, tokens, in_dim=d)
    g = torch.Generator().manual_seed(4)
    global_, local, mask = torch.randn(b, d, generator=g), torch.randn(b, patches, d, generator=g), torch.ones(b, dtype=torch.bool)
    with torch.no_grad():
        out = module(global_, local, mask)
        normed_global = module.global_norm(global_) if module.global_norm is not None else global_
        normed_local = module.local_norm(local) if module.local_norm is not None else local
        if grid:  # (B, 4, 4, D) patch rows -> 2x2 blocks of 2x2 patches, read row-major
            pooled = normed_local.view(b, 2, 2, 2, 2, d).mean(dim=(2, 4)).reshape(b, 4, d)
        else:
            pooled = normed_local.view(b, 3, 4, d).mean(dim=2)
        assert module.ffn is not None
        expected = module.proj(module.norm(pooled + module.ffn(normed_global)[:, None, :]))
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

        other_global = module(global_ + torch.randn(b, d, generator=g), local, mask)
        other_local = module(global_, local + torch.randn(b, patches, d, generator=g), mask)
    assert out.shape == (b, tokens, 5)
    assert (other_global - out).abs().amax(dim=(1, 2)).gt(1e-2).all(), "every item's global feature reaches its tokens"
    assert (other_local - out).abs().max() > 1e-2, "the local tokens reach the output"
    # a change of the locals that leaves every pooled block's mean alone leaves the output alone
    within_block = torch.zeros_like(local)
    if grid:
        within_block.view(b, 2, 2, 2, 2, d)[:, :, 0, :, 0] += 1.0
        within_block.view(b, 2, 2, 2, 2, d)[:, :, 1, :, 1] -= 1.0
    else:
        within_block.view(b, 3, 4, d)[:, :, 0] += 1.0
        within_block.view(b, 3, 4, d)[:, :, 3] -= 1.0
    with torch.no_grad():  # (an eval-mode batch norm is per-feature affine: it keeps block means too)
        torch.testing.assert_close(module(global_, local + within_block, mask), out, rtol=1e-5, atol=1e-5)
