"""Structured values passed between the model's parts: token streams and the fused media tokens."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Stream:
    """One modality's tokens on their way into the Fuseformer.

    times are relative (seconds / duration, 0..1); NaN marks a timeless token.
    """

    tokens: Tensor  # (B, L, D)
    mask: Tensor  # (B, L) bool, True = valid
    times: Tensor  # (B, L) float


@dataclass
class MediaTokens:
    """What the Fuseformer hands the projector (and stage 1's contrastive head).

    Times are relative (0..1 of the duration) where the tokens are bound to a time, else None;
    masks are None when every token is valid.
    """

    fusion: Tensor  # (B, F, D)
    video: Tensor  # (B, Qv, D)
    audio: Tensor | None  # (B, Qa, D); None when the model has no audio stream
    duration: Tensor  # (B,) seconds
    fusion_times: Tensor | None = None
    video_times: Tensor | None = None
    audio_times: Tensor | None = None
    fusion_mask: Tensor | None = None
    video_mask: Tensor | None = None
    audio_mask: Tensor | None = None

    def memory(self, inputs: str) -> Stream:
        """The tokens the projector reads: `fusion` only (the paper) or `all` (fusion + video + audio)."""
        parts = [(self.fusion, self.fusion_mask, self.fusion_times)]
        if inputs == "all":
            parts.append((self.video, self.video_mask, self.video_times))
            if self.audio is not None:
                parts.append((self.audio, self.audio_mask, self.audio_times))
        tokens = torch.cat([p[0] for p in parts], dim=1)
        b = tokens.shape[0]
        masks = [m if m is not None else torch.ones(b, t.shape[1], dtype=torch.bool, device=t.device) for t, m, _ in parts]
        times = [
            tt if tt is not None else torch.full((b, t.shape[1]), float("nan"), device=t.device) for t, _, tt in parts
        ]
        return Stream(tokens, torch.cat(masks, dim=1), torch.cat(times, dim=1))

    def take(self, index: Tensor) -> "MediaTokens":
        """Rows `index` of every tensor (B' = len(index)): one video's tokens shared by several samples."""
        return replace(self, **{f.name: getattr(self, f.name).index_select(0, index) for f in fields(self)
                                if getattr(self, f.name) is not None})
