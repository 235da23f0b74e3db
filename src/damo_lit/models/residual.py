"""The global residual, the temporal pathway and the time embeddings (module group `residual`).

Per frame / audio segment: `X_res = AdaptiveAvgPool(X_local) -> L' tokens + FFN(X_global)`,
then a projection into the Fuseformer width. The visual residual tokens are compressed along
time by a grouped 2-D convolution; every stream token then gets the embedding of its real time
(seconds and the fraction of the duration), so uneven sampling and durations are honest.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from damo_lit.models.config import DaMOConfig, TemporalConfig
from damo_lit.models.layers import FeedForward, MaskedBatchNorm, relative_sinusoid, sinusoid
from damo_lit.models.media import Stream


# CUDA's adaptive pooling kernels index with int32 and refuse an input of 2**31 elements or more
# (an H100 run at batch 256: 2,048 Whisper segments x 1,500 tokens x 768 channels).
POOL_MAX_ELEMENTS = 2**31 - 1


def pool_rows_in_chunks(x: Tensor, pool: Callable[[Tensor], Tensor], max_elements: int = POOL_MAX_ELEMENTS) -> Tensor:
    """`pool(x)` applied to slices of x's first dimension, each under `max_elements` elements."""
    rows = max(1, max_elements // max(1, x[0].numel()))
    if x.shape[0] <= rows:
        return pool(x)
    return torch.cat([pool(part) for part in x.split(rows)])


class GlobalResidual(nn.Module):
    """Pool local tokens to `tokens` (a square grid for vision), add FFN(global), project to `out_dim`."""

    def __init__(
        self, in_dim: int, out_dim: int, tokens: int, grid: bool, enabled: bool, ffn_ratio: float, feature_norm: str
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.grid = grid
        batch = feature_norm == "batch"
        self.global_norm = MaskedBatchNorm(in_dim) if batch else None
        self.local_norm = MaskedBatchNorm(in_dim) if batch else None
        self.ffn = FeedForward(in_dim, ffn_ratio) if enabled else None
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, global_: Tensor, local: Tensor, mask: Tensor) -> Tensor:
        """global_ (B', Din), local (B', P, Din), mask (B',) valid items -> (B', tokens, Dout)."""
        if self.global_norm is not None and self.local_norm is not None:
            global_ = self.global_norm(global_, mask)
            local = self.local_norm(local, mask[:, None])
        x = local.transpose(1, 2)  # (B', Din, P)
        if self.grid:
            side = int(round(math.sqrt(x.shape[-1])))
            if side * side != x.shape[-1]:
                raise ValueError(f"vision tower gave {x.shape[-1]} patch tokens, not a square grid")
            out_side = int(round(math.sqrt(self.tokens)))
            x = x.reshape(*x.shape[:2], side, side)
            x = pool_rows_in_chunks(x, lambda part: F.adaptive_avg_pool2d(part, out_side)).flatten(2)
        else:
            x = pool_rows_in_chunks(x, lambda part: F.adaptive_avg_pool1d(part, self.tokens))
        x = x.transpose(1, 2)
        if self.ffn is not None:
            x = x + self.ffn(global_)[:, None, :]
        return self.proj(self.norm(x))


class TemporalConv(nn.Module):
    """Grouped 2-D convolution over (time, token): compresses frames `stride`-fold.

    The time axis is padded at the end to whole windows (the padding counts as masked frames),
    so every frame reaches a compressed token whatever the frame count. Masked frames are zeroed
    and each window's weighted sum is scaled by kernel / its valid frames, so that padding does
    not shrink a window; initialised as a temporal mean, the convolution starts as the mean over
    each window's valid frames. A window with no valid frame gives zeros and is masked. A
    compressed token's time is the mean time of the valid frames in its window.
    """

    def __init__(self, dim: int, window: TemporalConfig) -> None:
        super().__init__()
        self.window = window
        kernel, groups = window.kernel, window.groups
        self.conv = nn.Conv2d(dim, dim, kernel_size=(kernel, 1), stride=(window.stride, 1), groups=groups)
        with torch.no_grad():
            self.conv.weight.zero_()
            per_group = dim // groups
            channels = torch.arange(dim)
            self.conv.weight[channels, channels % per_group, :, 0] = 1.0 / kernel
            self.conv.bias.zero_()

    def forward(self, x: Tensor, times: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, N, L, D), times (B, N) seconds, mask (B, N) -> (B, N', L, D), (B, N'), (B, N')
        with N' = `TemporalConfig.steps(N)`."""
        n = x.shape[1]
        kernel, stride = self.window.kernel, self.window.stride
        pad = (self.window.steps(n) - 1) * stride + kernel - n
        mask = F.pad(mask.bool(), (0, pad), value=False)
        times = F.pad(times.float(), (0, pad))
        x = F.pad(x, (0, 0, 0, 0, 0, pad)) * mask[:, :, None, None].to(x.dtype)
        weighted = F.conv2d(x.permute(0, 3, 1, 2), self.conv.weight, None, self.conv.stride, groups=self.conv.groups)
        win_mask = mask.float().unfold(1, kernel, stride)  # (B, N', k)
        count = win_mask.sum(-1)
        valid = count > 0
        scale = torch.where(valid, kernel / count.clamp(min=1.0), torch.zeros_like(count))
        y = weighted.permute(0, 2, 3, 1) * scale[:, :, None, None].to(x.dtype)
        y = y + self.conv.bias * valid[:, :, None, None].to(x.dtype)
        mean_time = (times.unfold(1, kernel, stride) * win_mask).sum(-1) / count.clamp(min=1.0)
        return y, mean_time, valid


# Absolute-seconds features of the learnable time embedding: a sinusoid with periods of about 6 s
# to 10 min and log(1 + seconds), so that the MLP tells a minute from an hour as well.
SECONDS_FEATURES = 6
SECONDS_MAX_PERIOD = 1000.0
LOG_SECONDS_SCALE = math.log1p(3600.0)


def seconds_features(seconds: Tensor) -> Tensor:
    """(...,) seconds -> (..., SECONDS_FEATURES + 1): a slow sinusoid and a log scale of them."""
    seconds = seconds.float()
    log_scale = torch.log1p(seconds.clamp(min=0.0)) / LOG_SECONDS_SCALE
    return torch.cat([sinusoid(seconds, SECONDS_FEATURES, SECONDS_MAX_PERIOD), log_scale[..., None]], dim=-1)


class TimeEmbedding(nn.Module):
    """Sinusoid of absolute seconds + sinusoid of relative time + a learnable MLP over both.

    The MLP reads the relative time's sinusoid and a few features of the seconds themselves, so
    the learned embedding, not only the fixed ones, knows real time (a 3 s event in a 10 s clip
    and in a 10 min one are different things).
    """

    def __init__(self, dim: int, features: int = 32) -> None:
        super().__init__()
        self.dim = dim
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features + SECONDS_FEATURES + 1, dim), nn.GELU(), nn.Linear(dim, dim))
        self.gain = nn.Parameter(torch.full((2,), 0.5))

    def forward(self, seconds: Tensor, rel: Tensor) -> Tensor:
        """seconds, rel (B, L) -> (B, L, dim)."""
        absolute = sinusoid(seconds, self.dim, max_period=10_000.0)
        relative = relative_sinusoid(rel, self.dim)
        learned = self.mlp(torch.cat([relative_sinusoid(rel, self.features), seconds_features(seconds)], dim=-1))
        return self.gain[0] * absolute + self.gain[1] * relative + learned


def _relative(times: Tensor, duration: Tensor) -> Tensor:
    return times.float() / duration.float().clamp(min=1e-6)[:, None]


class MediaResidual(nn.Module):
    """Everything between the towers and the Fuseformer: residual, temporal pathway, time embeddings."""

    def __init__(self, cfg: DaMOConfig, vision_dim: int, audio_dim: int | None) -> None:
        super().__init__()
        d, r = cfg.fuseformer.hidden, cfg.residual
        self.video = GlobalResidual(vision_dim, d, r.video_tokens, True, r.enabled, r.ffn_ratio, r.feature_norm)
        self.temporal = TemporalConv(d, r.temporal)
        self.video_time = TimeEmbedding(d)
        self.audio = (
            GlobalResidual(audio_dim, d, r.audio_tokens, False, r.enabled, r.ffn_ratio, r.feature_norm) if audio_dim else None
        )
        self.audio_time = TimeEmbedding(d) if audio_dim else None

    def video_stream(
        self, vision_global: Tensor, vision_local: Tensor, frame_times: Tensor, frame_mask: Tensor, duration: Tensor
    ) -> Stream:
        """(B, N, Dv), (B, N, P, Dv) -> time-embedded stream of (N' x L') tokens per video."""
        b, n = vision_global.shape[:2]
        frame_mask = frame_mask.bool()
        x = self.video(vision_global.flatten(0, 1), vision_local.flatten(0, 1), frame_mask.flatten())
        x, times, mask = self.temporal(x.view(b, n, self.video.tokens, -1), frame_times, frame_mask)
        return self._stream(x, times, mask, duration, self.video_time)

    def audio_stream(
        self, audio_global: Tensor, audio_local: Tensor, audio_times: Tensor, audio_mask: Tensor, duration: Tensor
    ) -> Stream:
        """(B, M, Da), (B, M, Q, Da) -> time-embedded stream of (M x L'a) tokens per video."""
        assert self.audio is not None and self.audio_time is not None
        b, m = audio_global.shape[:2]
        mask = audio_mask.bool()
        x = self.audio(audio_global.flatten(0, 1), audio_local.flatten(0, 1), mask.flatten())
        x = x.view(b, m, self.audio.tokens, -1)
        return self._stream(x * mask[:, :, None, None].to(x.dtype), audio_times.float(), mask, duration, self.audio_time)

    @staticmethod
    def _stream(x: Tensor, times: Tensor, mask: Tensor, duration: Tensor, embed: TimeEmbedding) -> Stream:
        b, n, l, d = x.shape
        rel = _relative(times, duration)
        x = x + embed(times, rel)[:, :, None, :].to(x.dtype)
        return Stream(
            x.reshape(b, n * l, d),
            mask.repeat_interleave(l, dim=1),
            rel.repeat_interleave(l, dim=1),
        )
