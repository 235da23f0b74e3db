"""The Temporal-aware Fuseformer (module group `fuseformer`) and its `concat` ablation.

Each of `depth` blocks runs
1. temporal-aware unimodal attention: per modality, self-attention + FFN over the stream
   tokens, then that modality's learnable queries cross-attend to it (compression);
2. temporal-aware multimodal attention: the fusion tokens concatenated with the compressed
   video and audio queries, self-attention + FFN across all of them.
Streams, queries and fusion tokens are all carried from block to block.

Missing audio: a learned, timeless "no audio" token is appended to every audio stream and is
always valid, so attention over a sample whose audio is all masked has one key to attend to
(and says "there is no audio") instead of producing NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from damo_lit.models.config import FuseformerConfig
from damo_lit.models.layers import (
    TIME_GAIN_INIT,
    CrossBlock,
    SelfBlock,
    anchor_times,
    masked_adaptive_pool,
    relative_sinusoid,
)
from damo_lit.models.media import MediaTokens, Stream


def _with_no_audio(audio: Stream, token: Tensor) -> Stream:
    b = audio.tokens.shape[0]
    return Stream(
        torch.cat([audio.tokens, token.expand(b, -1, -1).to(audio.tokens.dtype)], dim=1),
        torch.cat([audio.mask, torch.ones(b, 1, dtype=torch.bool, device=audio.mask.device)], dim=1),
        torch.cat([audio.times, torch.full((b, 1), float("nan"), device=audio.times.device)], dim=1),
    )


class _Queries(nn.Module):
    """A learned token set, optionally bound to evenly spread relative times."""

    def __init__(self, count: int, dim: int, anchored: bool) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(count, dim) * 0.02)
        self.anchored = anchored
        self.time_gain = nn.Parameter(torch.full((1,), TIME_GAIN_INIT)) if anchored else None  # 1-D: FSDP refuses 0-dim
        self.register_buffer("times", anchor_times(count), persistent=False)

    def forward(self, batch: int) -> tuple[Tensor, Tensor | None]:
        tokens = self.tokens
        if self.time_gain is None:
            return tokens.expand(batch, -1, -1), None
        tokens = tokens + self.time_gain * relative_sinusoid(self.times, tokens.shape[-1]).to(tokens.dtype)
        return tokens.expand(batch, -1, -1), self.times.expand(batch, -1)


class UnimodalAttention(nn.Module):
    def __init__(self, cfg: FuseformerConfig) -> None:
        super().__init__()
        args = (cfg.hidden, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.time_bias, cfg.layer_scale)
        self.stream = SelfBlock(*args)
        self.compress = CrossBlock(*args)

    def forward(self, stream: Stream, queries: Tensor, q_times: Tensor | None) -> tuple[Stream, Tensor]:
        tokens = self.stream(stream.tokens, stream.mask, stream.times)
        stream = Stream(tokens, stream.mask, stream.times)
        queries = self.compress(queries, tokens, stream.mask, q_times, stream.times)
        return stream, queries


class FuseformerBlock(nn.Module):
    def __init__(self, cfg: FuseformerConfig, audio: bool) -> None:
        super().__init__()
        self.video = UnimodalAttention(cfg)
        self.audio = UnimodalAttention(cfg) if audio else None
        self.fusion = SelfBlock(cfg.hidden, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.time_bias, cfg.layer_scale)

    def forward(
        self,
        video: Stream,
        audio: Stream | None,
        tokens: list[Tensor],
        times: Tensor | None,
    ) -> tuple[Stream, Stream | None, list[Tensor]]:
        """tokens = [fusion, video queries(, audio queries)]; times: their concatenated times or None."""
        sizes = [t.shape[1] for t in tokens]
        split = None if times is None else list(times.split(sizes, dim=1))
        video, tokens[1] = self.video(video, tokens[1], None if split is None else split[1])
        if audio is not None and self.audio is not None:
            audio, tokens[2] = self.audio(audio, tokens[2], None if split is None else split[2])
        fused = self.fusion(torch.cat(tokens, dim=1), None, times)
        return video, audio, list(fused.split(sizes, dim=1))


class TFuseformer(nn.Module):
    """Hierarchical dual-stream fusion: `depth` blocks of unimodal then multimodal attention."""

    def __init__(self, cfg: FuseformerConfig, audio: bool) -> None:
        super().__init__()
        self.fusion_tokens = _Queries(cfg.fusion_tokens, cfg.hidden, cfg.time_anchors)
        self.video_queries = _Queries(cfg.video_queries, cfg.hidden, cfg.time_anchors)
        self.audio_queries = _Queries(cfg.audio_queries, cfg.hidden, cfg.time_anchors) if audio else None
        self.no_audio = nn.Parameter(torch.randn(1, 1, cfg.hidden) * 0.02) if audio else None
        self.blocks = nn.ModuleList(FuseformerBlock(cfg, audio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.pooled_init = cfg.query_init == "pooled"

    def forward(self, video: Stream, audio: Stream | None, duration: Tensor) -> MediaTokens:
        b = video.tokens.shape[0]
        sets = [self.fusion_tokens(b), self.video_queries(b)]
        if audio is not None and (self.audio_queries is None or self.no_audio is None):
            raise ValueError("audio stream given to a Fuseformer built without audio (model.audio.enabled=false)")
        if audio is not None and self.audio_queries is not None:
            sets.append(self.audio_queries(b))
        tokens = [t.to(video.tokens.dtype) for t, _ in sets]
        if self.pooled_init:
            tokens = [t + p for t, p in zip(tokens, self._pooled(video, audio, [t.shape[1] for t in tokens]))]
        if audio is not None and self.no_audio is not None:
            audio = _with_no_audio(audio, self.no_audio)
        anchored = all(tt is not None for _, tt in sets)
        times = torch.cat([tt for _, tt in sets], dim=1) if anchored else None
        for block in self.blocks:
            video, audio, tokens = block(video, audio, tokens, times)
        tokens = [self.norm(t) for t in tokens]
        set_times = [tt for _, tt in sets]
        return MediaTokens(
            fusion=tokens[0],
            video=tokens[1],
            audio=tokens[2] if audio is not None else None,
            duration=duration,
            fusion_times=set_times[0],
            video_times=set_times[1],
            audio_times=set_times[2] if audio is not None else None,
        )


    @staticmethod
    def _pooled(video: Stream, audio: Stream | None, counts: list[int]) -> list[Tensor]:
        """Time-ordered stream content pooled to each token set's size: [fusion, video(, audio)].

        Fusion token j starts from the video and audio content of its time bin, video and audio
        queries from their own stream's, so every query holds its time's content from step one.
        """

        def pool(stream: Stream, bins: int) -> Tensor:
            return masked_adaptive_pool(stream.tokens, stream.mask, None, bins)[0]

        fusion = pool(video, counts[0]) + (pool(audio, counts[0]) if audio is not None else 0)
        out = [fusion, pool(video, counts[1])]
        if audio is not None:
            out.append(pool(audio, counts[2]))
        return out


def share_bins(total: int, sizes: list[int]) -> list[int]:
    """Split `total` pooling bins between one or two modalities in proportion to their token
    counts, at least one bin each, so that no bin mixes the end of one with the start of another."""
    if len(sizes) == 1:
        return [total]
    if len(sizes) != 2 or total < 2:
        raise ValueError(f"fuseformer.fusion_tokens: {total} bins cannot give each of {len(sizes)} modalities its own")
    first = min(max(round(total * sizes[0] / sum(sizes)), 1), total - 1)
    return [first, total - first]


class ConcatFusion(nn.Module):
    """Ablation `fuseformer.kind=concat`: no attention, each stream average-pooled to the token
    counts; the fusion tokens are each modality pooled into its own share of the bins, in time order."""

    def __init__(self, cfg: FuseformerConfig, audio: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.no_audio = nn.Parameter(torch.randn(1, 1, cfg.hidden) * 0.02) if audio else None
        self.norm = nn.LayerNorm(cfg.hidden)

    def forward(self, video: Stream, audio: Stream | None, duration: Tensor) -> MediaTokens:
        streams = [video]
        if audio is not None:
            if self.no_audio is None:
                raise ValueError("audio stream given to a fusion built without audio (model.audio.enabled=false)")
            audio = _with_no_audio(audio, self.no_audio)
            streams.append(audio)

        def pool(stream: Stream, bins: int) -> tuple[Tensor, Tensor, Tensor | None]:
            pooled, mask, times = masked_adaptive_pool(stream.tokens, stream.mask, stream.times, bins)
            return self.norm(pooled), mask, times

        shares = share_bins(self.cfg.fusion_tokens, [s.tokens.shape[1] for s in streams])
        parts = [pool(stream, bins) for stream, bins in zip(streams, shares)]
        fusion, f_mask, f_times = (torch.cat(list(field), dim=1) for field in zip(*parts))
        vid, v_mask, v_times = pool(video, self.cfg.video_queries)
        aud = a_mask = a_times = None
        if audio is not None:
            aud, a_mask, a_times = pool(audio, self.cfg.audio_queries)
        return MediaTokens(fusion, vid, aud, duration, f_times, v_times, a_times, f_mask, v_mask, a_mask)


def build_fusion(cfg: FuseformerConfig, audio: bool) -> nn.Module:
    return TFuseformer(cfg, audio) if cfg.kind == "tfuseformer" else ConcatFusion(cfg, audio)
