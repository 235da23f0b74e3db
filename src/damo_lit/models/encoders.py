"""Encoder towers: vision (CLIP, SigLIP, EVA-CLIP, ResNet), audio (Whisper encoder), text (BERT).

Each tower turns the batch-contract inputs into a global feature and local tokens per frame or
per audio segment. Only valid frames/segments (mask True) go through the tower; the others
come back as zeros, so padding costs no compute and the frozen-feature cache holds exactly
what the tower would produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoModel,
    BertModel,
    CLIPVisionModel,
    PreTrainedModel,
    ResNetModel,
    SiglipVisionModel,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from damo_lit.models.config import AudioConfig, ConfigError, TextEncoderConfig, VisionConfig
from damo_lit.models.pretrained import config_dim, load_or_build

# Whisper checkpoints come as WhisperForConditionalGeneration ("model.encoder.*"), WhisperModel
# ("encoder.*") or a bare encoder; this maps all three onto WhisperEncoder without the decoder.
WHISPER_KEY_MAPPING = {r"^model\.encoder\.": "", r"^encoder\.": ""}


@dataclass
class TowerOutput:
    """Per item (frame or audio segment): the global feature and the local tokens."""

    global_: Tensor  # (B, N, D)
    local: Tensor  # (B, N, P, D)


def _in_chunks(fn, items: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """`fn` over `items` in slices of at most `chunk_size` along dim 0 (0: one call). Each slice's
    result is written into one preallocated output, so that the peak holds the output and one
    slice's work, not every slice's result as well (slice assignment keeps autograd's graph)."""
    if chunk_size <= 0 or items.shape[0] <= chunk_size:
        return fn(items)
    pieces = items.split(chunk_size)
    first_global, first_local = fn(pieces[0])
    glob = first_global.new_empty((items.shape[0], *first_global.shape[1:]))
    local = first_local.new_empty((items.shape[0], *first_local.shape[1:]))
    glob[: len(pieces[0])], local[: len(pieces[0])] = first_global, first_local
    del first_global, first_local
    start = len(pieces[0])
    for piece in pieces[1:]:
        glob[start : start + len(piece)], local[start : start + len(piece)] = fn(piece)
        start += len(piece)
    return glob, local


def _run_on_valid(
    fn, items: Tensor, mask: Tensor | None, dim: int, tokens: int, chunk_size: int = 0
) -> TowerOutput:
    """Apply `fn` to the valid items of (B, N, ...), `chunk_size` at a time, and scatter the
    results back (zeros elsewhere). With every item valid the tower's output is returned as it
    is: no second copy of the (large) local tokens."""
    b, n = items.shape[:2]
    flat = items.flatten(0, 1)
    if mask is None or bool(mask.all()):
        glob, local = _in_chunks(fn, flat, chunk_size)
        return TowerOutput(glob.view(b, n, dim), local.view(b, n, tokens, dim))
    valid = mask.flatten().bool()
    if not valid.any():
        return TowerOutput(flat.new_zeros((b, n, dim), dtype=torch.float32),
                           flat.new_zeros((b, n, tokens, dim), dtype=torch.float32))  # fmt: skip
    g, loc = _in_chunks(fn, flat[valid], chunk_size)
    glob, local = g.new_zeros((b * n, dim)), loc.new_zeros((b * n, tokens, dim))
    glob[valid], local[valid] = g, loc
    return TowerOutput(glob.view(b, n, dim), local.view(b, n, tokens, dim))


def _pooler_output(out: Any) -> Tensor | None:
    """The pooled output of a vision model's output (a ModelOutput, or a remote-code tuple)."""
    if isinstance(out, tuple):
        return out[1] if len(out) > 1 else None
    return getattr(out, "pooler_output", None)


class VisionTower(nn.Module):
    """A transformers vision model: uint8 frames in, CLS/pooled global + patch tokens out."""

    def __init__(self, cfg: VisionConfig, meta: bool = False, where: str = "model.vision") -> None:
        super().__init__()
        self.kind = cfg.kind
        self.trainable = cfg.trainable
        self.chunk_size = cfg.chunk_size
        if cfg.kind == "clip":
            load, build = CLIPVisionModel.from_pretrained, CLIPVisionModel
        elif cfg.kind == "siglip":
            load, build = SiglipVisionModel.from_pretrained, SiglipVisionModel
        elif cfg.kind == "resnet":
            load, build = ResNetModel.from_pretrained, ResNetModel
        else:  # eva_clip: remote code behind trust_remote_code
            if not cfg.trust_remote_code and cfg.name_or_path and not meta:
                raise ConfigError(f"{where}.trust_remote_code: EVA-CLIP checkpoints need remote code; set it to true")
            load, build = AutoModel.from_pretrained, AutoModel.from_config
        self.model: PreTrainedModel = load_or_build(cfg, where, meta=meta, load=load, build=build)
        config = self.model.config
        vision_config = getattr(config, "vision_config", None) or config
        self.dim = config_dim(config)
        if cfg.kind == "resnet":  # no image size of its own: frames keep the data's size
            self.input_size = cfg.image_size
            side = self.input_size
            halvings = 2 + len(config.depths) - (0 if config.downsample_in_first_stage else 1)
            for _ in range(halvings):  # stem conv, max-pool, then one per strided stage
                side = (side + 1) // 2
            self.num_tokens = side * side
        else:
            self.input_size = int(vision_config.image_size)
            self.num_tokens = (self.input_size // int(vision_config.patch_size)) ** 2
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, frames: Tensor) -> Tensor:
        """uint8 (B', 3, H, W) -> normalised float at the tower's own image size."""
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames: expected (B, N, 3, H, W) RGB, got a frame of shape {tuple(frames.shape)}")
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return x.to(next(self.model.parameters()).dtype)

    def _encode(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        pixels = self.preprocess(frames)
        if self.kind == "resnet":
            out = self.model(pixel_values=pixels)
            return out.pooler_output.flatten(1), out.last_hidden_state.flatten(2).transpose(1, 2)
        # EVA-CLIP's remote code may wrap the vision transformer in a full CLIP-style model
        tower = getattr(self.model, "vision_model", self.model) if self.kind == "eva_clip" else self.model
        out = tower(pixel_values=pixels)
        hidden, pooled = out[0], _pooler_output(out)
        if self.kind == "siglip":
            # No CLS; its last_hidden_state is already post-normed: the attention-pooling head's
            # output, or (a tower without the head) the mean of the normed patch tokens.
            return (pooled if pooled is not None else hidden.mean(1)), hidden
        # CLIP and EVA-CLIP: the global feature is the post-normed CLS (their pooler_output), the
        # local tokens the patch tokens after it.
        if pooled is None:
            post_norm = getattr(tower, "post_layernorm", None)
            pooled = hidden[:, 0] if post_norm is None else post_norm(hidden[:, 0])
        return pooled, hidden[:, 1:]

    def forward(self, frames: Tensor, frame_mask: Tensor | None = None) -> TowerOutput:
        """frames uint8 (B, N, 3, H, W) -> global (B, N, Dv), local (B, N, P, Dv)."""
        if frames.dim() != 5:
            raise ValueError(f"frames: expected uint8 (B, N, 3, H, W), got shape {tuple(frames.shape)}")
        return _run_on_valid(self._encode, frames, frame_mask, self.dim, self.num_tokens, self.chunk_size)


class AudioTower(nn.Module):
    """A Whisper encoder: log-mel segments in, mean-over-tokens global + tokens out."""

    def __init__(self, cfg: AudioConfig, meta: bool = False, where: str = "model.audio") -> None:
        super().__init__()
        self.trainable = cfg.trainable
        self.chunk_size = cfg.chunk_size
        self.model: WhisperEncoder = load_or_build(
            cfg,
            where,
            meta=meta,
            load=WhisperEncoder.from_pretrained,
            build=WhisperEncoder,
            key_mapping=WHISPER_KEY_MAPPING,
        )
        config = self.model.config
        self.dim = int(config.d_model)
        self.n_mels = int(config.num_mel_bins)
        self.segment_frames = 2 * int(config.max_source_positions)
        self.num_tokens = int(config.max_source_positions)
        if cfg.segment_frames != self.segment_frames:
            raise ConfigError(
                f"{where}.segment_frames={cfg.segment_frames}, but this Whisper encoder takes exactly "
                f"{self.segment_frames} mel frames (2 x max_source_positions={config.max_source_positions})"
            )
        if cfg.n_mels != self.n_mels:
            raise ConfigError(f"{where}.n_mels={cfg.n_mels}, but this Whisper encoder has {self.n_mels} mel bins")

    def fixed_parameters(self) -> list[nn.Parameter]:
        """Whisper's sinusoidal positions are fixed by design: they never train, even when the tower does."""
        return [self.model.embed_positions.weight]

    def _encode(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.model(mel.to(next(self.model.parameters()).dtype)).last_hidden_state
        return hidden.mean(1), hidden

    def forward(self, audio_mel: Tensor, audio_mask: Tensor | None = None) -> TowerOutput:
        """audio_mel (B, M, n_mels, T) -> global (B, M, Da), local (B, M, T/2, Da)."""
        if audio_mel.dim() != 4 or audio_mel.shape[2:] != (self.n_mels, self.segment_frames):
            raise ValueError(
                f"audio_mel: expected (B, M, {self.n_mels}, {self.segment_frames}) (model.audio.n_mels, "
                f"model.audio.segment_frames), got {tuple(audio_mel.shape)}"
            )
        return _run_on_valid(self._encode, audio_mel, audio_mask, self.dim, self.num_tokens, self.chunk_size)


class TextEncoder(nn.Module):
    """A BERT-style encoder for stage 1's contrastive loss: pooled CLS (or the masked mean of the
    tokens) -> shared embedding. A random-init encoder's CLS barely differs between similar
    captions, so the tiny model pools the mean instead."""

    def __init__(self, cfg: TextEncoderConfig, meta: bool = False, where: str = "model.text_encoder") -> None:
        super().__init__()
        self.model: PreTrainedModel = load_or_build(
            cfg, where, meta=meta, load=AutoModel.from_pretrained, build=AutoModel.from_config
        )
        if isinstance(self.model, BertModel) and self.model.pooler is None:
            raise ConfigError(f"{where}: the BERT model has no pooler; pooled CLS features need one")
        if cfg.pooling not in ("cls", "mean"):
            raise ConfigError(f"{where}.pooling must be cls or mean, got {cfg.pooling!r}")
        self.pooling = cfg.pooling
        if self.pooling == "mean" and getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # unused: no weights that never get a gradient
        self.dim = config_dim(self.model.config)
        self.proj = nn.Linear(self.dim, cfg.embed_dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Token ids (B, T) -> text features (B, embed_dim)."""
        return self.encode(input_ids, attention_mask)[1]

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids (B, T) -> (token states (B, T, dim), text features (B, embed_dim)) from one
        pass of the encoder: stage 1 contrasts the features and matches on the states."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "mean":
            weights = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1)
        else:
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = out.last_hidden_state[:, 0]
        return out.last_hidden_state, self.proj(pooled.float())

