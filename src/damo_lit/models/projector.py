"""The projector (module group `projector`): a Q-Former over the media tokens and a linear layer
into the LLM's embedding space, giving K soft-prompt tokens per video.

With `time_anchors`, query k stands for relative time (k + 0.5) / K: it carries the sinusoid of
that time, the memory tokens carry the sinusoids of theirs (so attention can match times), and
DaMO adds the LLM's own embedding of the matching time token ("0".."99") to projected token k.
The same Q-Former's mean query output is stage 1's video embedding (BLIP-2 style VTC over the
query outputs; the projection into the shared space belongs to the `text_encoder` group).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from damo_lit.models.config import ProjectorConfig
from damo_lit.models.layers import (
    REL_UNITS,
    TIME_GAIN_INIT,
    Attention,
    CrossBlock,
    anchor_times,
    masked_adaptive_pool,
    relative_sinusoid,
)
from damo_lit.models.media import MediaTokens


class QFormerLayer(nn.Module):
    """Self-attention among the queries (and the prompt tokens, when given), cross-attention to
    the memory, FFN."""

    def __init__(self, dim: int, cfg: ProjectorConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, cfg.heads, cfg.dropout, cfg.time_bias)
        self.cross = CrossBlock(dim, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.time_bias)

    def forward(
        self,
        queries: Tensor,
        memory: Tensor,
        mask: Tensor,
        q_times: Tensor | None,
        k_times: Tensor | None,
        prompt: Tensor | None = None,
        prompt_mask: Tensor | None = None,
    ) -> Tensor:
        x = self.norm(queries)
        if prompt is None:
            queries = queries + self.self_attn(x, q_times=q_times, k_times=q_times)
        else:
            # Prompt tokens are timeless keys (NaN time: no time bias); only the queries are updated.
            keys = torch.cat([x, prompt], 1)
            key_mask = torch.cat([torch.ones(x.shape[:2], dtype=torch.bool, device=x.device), prompt_mask.bool()], 1)
            key_times = None
            if q_times is not None:
                timeless = torch.full(prompt.shape[:2], float("nan"), dtype=q_times.dtype, device=q_times.device)
                key_times = torch.cat([q_times, timeless], 1)
            queries = queries + self.self_attn(x, keys, key_mask, q_times=q_times, k_times=key_times)
        return self.cross(queries, memory, mask, q_times, k_times)


class Projector(nn.Module):
    def __init__(self, cfg: ProjectorConfig, dim: int, llm_dim: int) -> None:
        super().__init__()
        if cfg.query_init not in ("learned", "pooled"):
            raise ValueError(f"model.projector.query_init must be learned or pooled, got {cfg.query_init!r}")
        self.cfg = cfg
        self.queries = nn.Parameter(torch.randn(cfg.queries, dim) * 0.02)
        self.time_gain = nn.Parameter(torch.full((1,), TIME_GAIN_INIT)) if cfg.time_anchors else None  # 1-D: FSDP refuses 0-dim
        self.register_buffer("query_times", anchor_times(cfg.queries), persistent=False)
        self.layers = nn.ModuleList(QFormerLayer(dim, cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, llm_dim)
        # With match_embedding_scale: LayerNorm on the projected tokens, its gain set to the LLM's
        # embedding RMS by DaMO once the LLM exists (set_embedding_scale).
        self.out_norm = nn.LayerNorm(llm_dim) if cfg.match_embedding_scale else None
        # With question_aware: the prompt's LLM token embeddings, brought to the Q-Former's width.
        self.prompt_in = nn.Sequential(nn.Linear(llm_dim, dim), nn.LayerNorm(dim)) if cfg.question_aware else None

    def set_embedding_scale(self, rms: float) -> None:
        if self.out_norm is not None:
            with torch.no_grad():
                self.out_norm.weight.fill_(rms)

    def project(self, states: Tensor) -> Tensor:
        """Q-Former outputs (B, K, D) -> soft-prompt tokens (B, K, D_llm)."""
        embeds = self.out(states)
        return self.out_norm(embeds) if self.out_norm is not None else embeds

    @property
    def num_tokens(self) -> int:
        return self.cfg.queries

    def forward(self, media: MediaTokens, prompt: Tensor | None = None, prompt_mask: Tensor | None = None) -> Tensor:
        """Q-Former query outputs (B, K, D) over the media tokens.

        prompt (B, L, D_llm) with prompt_mask (B, L): the prompt's token embeddings, read by a
        question-aware projector (ignored otherwise; without them the queries see the video only,
        as for stage 1's pooled video embedding).
        """
        memory = media.memory(self.cfg.inputs)
        b = memory.tokens.shape[0]
        queries = self.queries.expand(b, -1, -1)
        if self.cfg.query_init == "pooled":
            fusion_mask = media.fusion_mask
            if fusion_mask is None:
                fusion_mask = torch.ones(media.fusion.shape[:2], dtype=torch.bool, device=media.fusion.device)
            queries = queries + masked_adaptive_pool(media.fusion, fusion_mask, None, self.cfg.queries)[0]
        q_times = k_times = None
        tokens = memory.tokens
        if self.time_gain is not None:
            q_times = self.query_times.expand(b, -1)
            k_times = memory.times
            queries = queries + self.time_gain * relative_sinusoid(q_times, queries.shape[-1]).to(queries.dtype)
            tokens = tokens + self.time_gain * relative_sinusoid(k_times, tokens.shape[-1]).to(tokens.dtype)
        prompt_tokens = None
        if self.prompt_in is not None and prompt is not None:
            if prompt_mask is None:
                prompt_mask = torch.ones(prompt.shape[:2], dtype=torch.bool, device=prompt.device)
            prompt_tokens = self.prompt_in(prompt.to(queries.dtype))
        for layer in self.layers:
            queries = layer(queries, tokens, memory.mask, q_times, k_times, prompt_tokens, prompt_mask)
        return self.norm(queries)

    def time_token_index(self, duration: Tensor, available: int) -> Tensor:
        """(B, K) index into the time-token list of each query's time: percent or whole seconds."""
        rel = self.query_times[None, :].expand(duration.shape[0], -1)
        value = rel * REL_UNITS if self.cfg.time_tokens == "relative" else rel * duration.float()[:, None]
        return value.floor().long().clamp(0, available - 1)
