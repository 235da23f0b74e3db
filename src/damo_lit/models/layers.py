"""Building blocks shared by the Fuseformer and the projector: attention with padding masks and
an optional time-distance bias, pre-norm sublayers, sinusoids of time, masked pooling.

Token times travel beside the tokens as relative times (seconds / duration, 0..1). A NaN time
means "timeless" (a learned token with no time of its own): it takes part in attention with no
time bias. Masked keys get a large finite negative score, never -inf, so that a row whose keys
are all masked attends uniformly instead of producing NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Relative times are expressed in hundredths of the duration inside sinusoids, the unit of the
# relative timestamps ("0".."99") the LLM reads and writes.
REL_UNITS = 100.0


def sinusoid(x: Tensor, dim: int, max_period: float) -> Tensor:
    """Transformer-style sin/cos features of a real-valued position `x` (..., ) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = x.float().unsqueeze(-1) * freqs
    out = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        out = F.pad(out, (0, 1))
    return out


def relative_sinusoid(rel: Tensor, dim: int) -> Tensor:
    """Sinusoid of relative time (0..1 of the duration); NaN (timeless) gives zeros."""
    out = sinusoid(torch.nan_to_num(rel, nan=0.0) * REL_UNITS, dim, max_period=1000.0)
    return out.masked_fill(torch.isnan(rel).unsqueeze(-1), 0.0)


# Initial weight of the time sinusoids added to learned queries and to the tokens they read:
# at full size (+-1 per feature) they would swamp the content that varies between videos.
TIME_GAIN_INIT = 0.1


def anchor_times(count: int) -> Tensor:
    """Relative times (k + 0.5) / count of `count` evenly spread anchors."""
    return (torch.arange(count, dtype=torch.float32) + 0.5) / count


def initial_slopes(heads: int) -> Tensor:
    """Per-head time-bias slopes (per unit of relative time): head 0 global, the rest local.

    A slope of 32 costs a key one logit per 1/32 of the duration away from the query.
    """
    if heads == 1:
        return torch.tensor([8.0])
    return torch.cat([torch.zeros(1), torch.logspace(math.log10(4.0), math.log10(64.0), heads - 1)])


class Attention(nn.Module):
    """Multi-head attention (self or cross) with a key padding mask and an optional time bias."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, time_bias: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.slopes = nn.Parameter(initial_slopes(heads)) if time_bias else None

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_mask: Tensor | None = None,
        q_times: Tensor | None = None,
        k_times: Tensor | None = None,
    ) -> Tensor:
        """x (B, Lq, D) attends to context (B, Lk, D) (itself when None); key_mask (B, Lk) True = valid."""
        context = x if context is None else context
        b, lq, d = x.shape
        lk = context.shape[1]
        h = self.heads
        q = self.q(x).view(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        bias = None
        if self.slopes is not None and q_times is not None and k_times is not None:
            dist = (q_times[:, :, None] - k_times[:, None, :]).abs()
            dist = torch.nan_to_num(dist, nan=0.0)  # timeless tokens: no bias
            bias = -self.slopes.abs()[None, :, None, None] * dist[:, None].to(q.dtype)
        if key_mask is not None:
            neg = torch.finfo(q.dtype).min / 2
            masked = (~key_mask.bool())[:, None, None, :]
            bias = (torch.zeros((), dtype=q.dtype, device=q.device) if bias is None else bias).masked_fill(masked, neg)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(out.transpose(1, 2).reshape(b, lq, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, ratio: float, dropout: float = 0.0, out_dim: int | None = None) -> None:
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim or dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LayerScale(nn.Module):
    """Learnable per-channel scale of a residual branch (CaiT); identity when `init` is None.

    A small `init` makes a deep stack start close to the identity, so whatever its input
    tokens carry reaches the output before the attention has learned anything.
    """

    def __init__(self, dim: int, init: float | None) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init))) if init is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.gamma is None else x * self.gamma


class SelfBlock(nn.Module):
    """Pre-norm self-attention + FFN over a token set."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, time_bias: bool, layer_scale: float | None = None
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout, time_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio, dropout)
        self.scale1, self.scale2 = LayerScale(dim, layer_scale), LayerScale(dim, layer_scale)

    def forward(self, x: Tensor, mask: Tensor | None = None, times: Tensor | None = None) -> Tensor:
        x = x + self.scale1(self.attn(self.norm1(x), key_mask=mask, q_times=times, k_times=times))
        return x + self.scale2(self.ffn(self.norm2(x)))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention of queries to a context, then FFN on the queries."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, time_bias: bool, layer_scale: float | None = None
    ) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout, time_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio, dropout)
        self.scale1, self.scale2 = LayerScale(dim, layer_scale), LayerScale(dim, layer_scale)

    def forward(
        self,
        queries: Tensor,
        context: Tensor,
        mask: Tensor | None = None,
        q_times: Tensor | None = None,
        k_times: Tensor | None = None,
    ) -> Tensor:
        queries = queries + self.scale1(
            self.attn(self.norm_q(queries), self.norm_kv(context), key_mask=mask, q_times=q_times, k_times=k_times)
        )
        return queries + self.scale2(self.ffn(self.norm2(queries)))


class MaskedBatchNorm(nn.Module):
    """Per-feature standardisation over the valid items of a batch (running statistics in eval).

    Like BatchNorm1d over the last dimension, but padded frames / silent segments (mask False)
    neither count in the statistics nor update the running ones.
    """

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (..., D); mask broadcastable to x[..., 0], True = valid."""
        mean, var = self.running_mean, self.running_var
        if self.training:
            valid = x.reshape(-1, x.shape[-1]) if mask is None else x[mask.expand(x.shape[:-1]).bool()]
            if valid.shape[0] > 1:
                mean, var = valid.mean(0), valid.var(0, unbiased=False)
                with torch.no_grad():
                    n = valid.shape[0]
                    self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                    unbiased = var.detach() * n / (n - 1)
                    self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def bin_matrix(length: int, bins: int, device: torch.device | None = None) -> Tensor:
    """(bins, length) 0/1 matrix of adaptive pooling windows (the same windows as AdaptiveAvgPool1d)."""
    idx = torch.arange(bins, device=device)
    start = torch.div(idx * length, bins, rounding_mode="floor")
    end = torch.div((idx + 1) * length + bins - 1, bins, rounding_mode="floor")
    pos = torch.arange(length, device=device)
    return ((pos[None] >= start[:, None]) & (pos[None] < end[:, None])).float()


def masked_adaptive_pool(
    x: Tensor, mask: Tensor, times: Tensor | None, bins: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Average valid tokens of x (B, L, D) into `bins` windows along L.

    Returns pooled (B, bins, D), a mask (B, bins) of windows that held any valid token, and the
    mean relative time of each window's valid, timed tokens (NaN where it held none).
    """
    weights = bin_matrix(x.shape[1], bins, x.device)[None] * mask[:, None, :].to(x.dtype)  # (B, bins, L)
    counts = weights.sum(-1)
    pooled = weights @ x / counts.clamp(min=1.0)[..., None]
    pooled_times = None
    if times is not None:
        timed = weights * (~torch.isnan(times))[:, None, :].to(x.dtype)
        total = timed @ torch.nan_to_num(times, nan=0.0).to(x.dtype)[..., None]
        n = timed.sum(-1)
        pooled_times = torch.where(n > 0, total.squeeze(-1) / n.clamp(min=1.0), torch.full_like(n, float("nan")))
    return pooled, counts > 0, pooled_times
