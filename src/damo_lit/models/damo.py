"""DaMO, the composition: towers -> global residual + temporal pathway -> T-Fuseformer ->
Q-Former projector -> LLM (with LoRA). A plain nn.Module: no Lightning, no Hydra, no files.

The unit of "what trains" is the module group (`module_groups()`); `STAGE_TRAINABLE` says which
groups each training stage trains, and `trainable_groups(stage)` adds the towers and the base LM
when their `trainable` flags are set (the random-init tiny model trains them; the paper's are
frozen).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from damo_lit.models.config import ConfigError, DaMOConfig
from damo_lit.models.encoders import AudioTower, TextEncoder, VisionTower
from damo_lit.models.fuseformer import build_fusion
from damo_lit.models.llm import CausalLM, SplicedInputs, load_tokenizer, single_token_numbers
from damo_lit.models.media import MediaTokens
from damo_lit.models.pretrained import build_device
from damo_lit.models.projector import Projector
from damo_lit.models.residual import MediaResidual
from damo_lit.models.tokenizer import VIDEO_TOKEN

GROUPS = ("vision", "audio", "residual", "fuseformer", "projector", "llm", "lora", "text_encoder")

# Which module groups each stage trains (the towers and the base LM join when their
# `trainable` flag is set; see DaMO.trainable_groups). Stage 1 trains the projector too, since
# its VTG loss generates text through it.
# Groups that are whole modules: frozen, they run in eval mode (the LLM is not one: its frozen
# base holds the LoRA adapters that train).
FROZEN_IN_EVAL = ("vision", "audio", "text_encoder", "residual", "fuseformer", "projector")

STAGE_TRAINABLE: dict[str, tuple[str, ...]] = {
    "stage1": ("residual", "fuseformer", "projector", "text_encoder"),
    "stage2": ("residual", "fuseformer", "projector"),
    "stage3": ("residual", "fuseformer", "projector", "lora"),
    "stage4": ("fuseformer", "projector", "lora"),
}

# Relative timestamps are "0".."99" of the duration; seconds use as many whole numbers as the
# tokenizer has single tokens for, up to this many.
RELATIVE_TIME_TOKENS = 100
MAX_SECOND_TOKENS = 1000


class TowerFeatures:
    """What DaMO and EncoderTowers share: the towers' outputs, from their `vision` and `audio`."""

    vision: VisionTower
    audio: AudioTower | None

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    def encoder_features(
        self,
        frames: Tensor,
        audio_mel: Tensor | None = None,
        frame_mask: Tensor | None = None,
        audio_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The tower outputs, exactly what the frozen-feature cache stores (batch-contract keys)."""
        seen = self.vision(frames, frame_mask)
        out = {"vision_global": seen.global_, "vision_local": seen.local}
        if self.audio is not None:
            if audio_mel is None:
                raise ValueError("audio_mel is required: this model has an audio stream (model.audio.enabled=true)")
            heard = self.audio(audio_mel, audio_mask)
            out.update(audio_global=heard.global_, audio_local=heard.local)
        return out


class EncoderTowers(TowerFeatures, nn.Module):
    """The vision and audio towers alone, as DaMO holds them (same names, same weights): what the
    frozen-feature cache runs, without the 7.2B LLM of the paper size (nor the text encoder,
    Fuseformer and projector). Build it with `build_encoders(cfg)`."""

    def __init__(self, vision: VisionTower, audio: AudioTower | None) -> None:
        super().__init__()
        self.vision = vision
        self.audio = audio

    def module_groups(self) -> dict[str, nn.Module | list[nn.Parameter]]:
        """DaMO's two tower groups (so that stage weights load into it by name)."""
        return {"vision": self.vision, "audio": self.audio if self.audio is not None else []}


class DaMO(TowerFeatures, nn.Module):
    """The audio-visual video LLM. Build it with `build_damo(cfg)`; see docs/model.md."""

    def __init__(
        self,
        cfg: DaMOConfig,
        vision: VisionTower,
        audio: AudioTower | None,
        text_encoder: TextEncoder | None,
        llm: CausalLM,
        time_token_ids: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = vision
        self.audio = audio
        self.text_encoder = text_encoder
        self.residual = MediaResidual(cfg, vision.dim, audio.dim if audio is not None else None)
        self.fuseformer = build_fusion(cfg.fuseformer, audio is not None)
        self.projector = Projector(cfg.projector, cfg.fuseformer.hidden, llm.hidden_size)
        # Stage 1's video head into the shared video-text space. It sits in the `text_encoder`
        # group (the stage-1-only contrastive parts), so later stages train no unused weights.
        self.video_proj = (
            nn.Linear(cfg.fuseformer.hidden, cfg.text_encoder.embed_dim) if text_encoder is not None else None
        )
        self.llm = llm
        weight = llm.model.get_input_embeddings().weight
        if not weight.is_meta:
            self.projector.set_embedding_scale(float(weight.detach().float().pow(2).mean().sqrt()))
        self.time_token_ids = list(time_token_ids) if time_token_ids is not None else None
        ids = torch.tensor(self.time_token_ids or [], dtype=torch.long)
        self.register_buffer("_time_token_tensor", ids, persistent=False)  # follows .to(device)
        self.tokenizer: PreTrainedTokenizerBase | None = None  # set by build_damo (not a module)
        # Parameters a tower keeps fixed by design (Whisper's sinusoidal positions) stay frozen
        # even when the tower trains.
        self._fixed = {id(p) for p in (audio.fixed_parameters() if audio is not None else [])}
        self._frozen_modules: set[str] = set()
        self.set_trainable(set().union(*(self.trainable_groups(s) for s in STAGE_TRAINABLE)))

    # -- module groups and trainable flags ----------------------------------------------------
    def module_groups(self) -> dict[str, nn.Module | list[nn.Parameter]]:
        """The eight groups, always all present (an absent part is an empty list)."""
        return {
            "vision": self.vision,
            "audio": self.audio if self.audio is not None else [],
            "residual": self.residual,
            "fuseformer": self.fuseformer,
            "projector": self.projector,
            "llm": self.llm.base_parameters(),
            "lora": self.llm.lora_parameters(),
            "text_encoder": (
                [*self.text_encoder.parameters(), *self.video_proj.parameters()]
                if self.text_encoder is not None and self.video_proj is not None
                else []
            ),
        }

    def group_parameters(self, group: str) -> list[nn.Parameter]:
        if group not in GROUPS:
            raise KeyError(f"unknown module group {group!r}; expected one of {', '.join(GROUPS)}")
        members = self.module_groups()[group]
        return list(members.parameters()) if isinstance(members, nn.Module) else list(members)

    def trainable_groups(self, stage: str) -> list[str]:
        """STAGE_TRAINABLE[stage] plus the towers / base LM whose `trainable` flag is set."""
        if stage not in STAGE_TRAINABLE:
            raise KeyError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_TRAINABLE)}")
        groups = list(STAGE_TRAINABLE[stage])
        if self.cfg.vision.trainable:
            groups.append("vision")
        if self.audio is not None and self.cfg.audio.trainable:
            groups.append("audio")
        if self.llm.trainable:
            groups.append("llm")
        return groups

    def trainable_parameters(self, groups: Iterable[str]) -> list[nn.Parameter]:
        """The parameters of these groups that may train (fixed-by-design tower weights excluded)."""
        return [p for g in groups for p in self.group_parameters(g) if id(p) not in self._fixed]

    def set_trainable(self, groups: Iterable[str]) -> None:
        """requires_grad True exactly on these groups' parameters; frozen module groups (towers,
        and the residual, Fuseformer or projector when a stage freezes them) go to eval mode, so
        that their norms' running statistics stay as the earlier stage left them."""
        wanted = set(groups)
        unknown = wanted - set(GROUPS)
        if unknown:
            raise KeyError(f"unknown module group(s) {sorted(unknown)}; expected some of {', '.join(GROUPS)}")
        chosen = {id(p) for p in self.trainable_parameters(wanted)}
        for p in self.parameters():
            p.requires_grad_(id(p) in chosen)
        self._frozen_modules = {g for g in FROZEN_IN_EVAL if g not in wanted}
        self.train(self.training)

    def train(self, mode: bool = True) -> "DaMO":
        """Like nn.Module.train, but frozen module groups stay in eval mode (no dropout, fixed norms)."""
        super().train(mode)
        for name in self._frozen_modules:
            module = getattr(self, name)
            if module is not None:
                module.eval()
        return self

    # -- media encoding -----------------------------------------------------------------------
    def encode(
        self,
        frames: Tensor,
        frame_times: Tensor,
        frame_mask: Tensor | None = None,
        audio_mel: Tensor | None = None,
        audio_times: Tensor | None = None,
        audio_mask: Tensor | None = None,
        duration: Tensor | None = None,
    ) -> MediaTokens:
        """Raw media (batch contract) -> fused media tokens."""
        if frame_mask is None:
            frame_mask = torch.ones(frame_times.shape, dtype=torch.bool, device=frame_times.device)
        if self.audio is not None and audio_mask is None and audio_times is not None:
            audio_mask = torch.ones(audio_times.shape, dtype=torch.bool, device=audio_times.device)
        features = self.encoder_features(frames, audio_mel, frame_mask, audio_mask)
        return self.encode_features(
            **features,
            frame_times=frame_times,
            frame_mask=frame_mask,
            audio_times=audio_times,
            audio_mask=audio_mask,
            duration=duration,
        )

    def encode_features(
        self,
        vision_global: Tensor,
        vision_local: Tensor,
        audio_global: Tensor | None = None,
        audio_local: Tensor | None = None,
        frame_times: Tensor | None = None,
        frame_mask: Tensor | None = None,
        audio_times: Tensor | None = None,
        audio_mask: Tensor | None = None,
        duration: Tensor | None = None,
    ) -> MediaTokens:
        """Cached tower features -> fused media tokens (skips the towers)."""
        if frame_times is None or duration is None:
            raise ValueError("encode_features needs frame_times (B, N) and duration (B,)")
        dtype = self.residual.video.proj.weight.dtype
        if frame_mask is None:
            frame_mask = torch.ones(frame_times.shape, dtype=torch.bool, device=frame_times.device)
        video = self.residual.video_stream(
            vision_global.to(dtype), vision_local.to(dtype), frame_times, frame_mask, duration
        )
        audio = None
        if self.audio is not None:
            if audio_global is None or audio_local is None or audio_times is None:
                raise ValueError(
                    "audio_global, audio_local and audio_times are required: this model has an audio "
                    "stream (model.audio.enabled=true)"
                )
            if audio_mask is None:
                audio_mask = torch.ones(audio_times.shape, dtype=torch.bool, device=audio_times.device)
            audio = self.residual.audio_stream(
                audio_global.to(dtype), audio_local.to(dtype), audio_times, audio_mask, duration
            )
        return self.fuseformer(video, audio, duration)

    # -- projection into the LLM --------------------------------------------------------------
    def media_embeds(
        self,
        media: MediaTokens,
        duration: Tensor | None = None,
        prompt_ids: Tensor | None = None,
        prompt_mask: Tensor | None = None,
    ) -> Tensor:
        """Soft-prompt tokens (B, K, D_llm); with time anchors, plus the embeddings of their time tokens.

        A question-aware projector (model.projector.question_aware) also reads the prompt
        (prompt_ids, prompt_mask: the token ids before the answer, as the batch's prompt_ids).
        """
        prompt = None
        if self.cfg.projector.question_aware:
            if prompt_ids is None:
                raise ValueError(
                    "model.projector.question_aware=true: media_embeds needs prompt_ids and prompt_mask (the "
                    "batch's prompt_ids and prompt_attention_mask)"
                )
            video = prompt_ids == self.llm.video_token_id
            prompt = self.llm.embed_tokens(prompt_ids.masked_fill(video, 0))
            valid = torch.ones_like(prompt_ids, dtype=torch.bool) if prompt_mask is None else prompt_mask.bool()
            prompt_mask = valid & ~video
        embeds = self.projector.project(self.projector(media, prompt, prompt_mask))
        if self.cfg.projector.time_anchors:
            if not self.time_token_ids:
                raise ValueError(
                    "model.projector.time_anchors=true needs time_token_ids (the LLM's ids of the time "
                    "tokens); build_damo passes them from the tokenizer"
                )
            duration = media.duration if duration is None else duration
            ids = self._time_token_tensor
            index = self.projector.time_token_index(duration, len(ids))
            embeds = embeds + self.llm.embed_tokens(ids[index]).to(embeds.dtype)
        return embeds

    def pooled_video(self, media: MediaTokens) -> Tensor:
        """Stage 1's video embedding (B, text_encoder.embed_dim): mean Q-Former output, projected."""
        if self.video_proj is None:
            raise ValueError("model.text_encoder.enabled=false: there is no contrastive video head")
        return self.video_proj(self.projector(media).mean(1))

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Stage 1's text embedding (B, text_encoder.embed_dim) from the text encoder's own tokens."""
        if self.text_encoder is None:
            raise ValueError("model.text_encoder.enabled=false: there is no text encoder")
        return self.text_encoder(input_ids, attention_mask)

    # -- language model -----------------------------------------------------------------------
    def splice(
        self, input_ids: Tensor, attention_mask: Tensor, media_embeds: Tensor, labels: Tensor | None = None
    ) -> SplicedInputs:
        return self.llm.splice(input_ids, attention_mask, media_embeds, labels)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None, media_embeds: Tensor
    ) -> CausalLMOutputWithPast:
        """Teacher-forced LM pass with the media spliced in at `<video>`: (loss, logits)."""
        return self.llm(input_ids, attention_mask, labels, media_embeds)

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_attention_mask: Tensor,
        media_embeds: Tensor,
        max_new_tokens: int = 32,
        **kwargs: Any,
    ) -> Tensor:
        """New token ids (B, <= max_new_tokens) after left-padded prompts; greedy unless told otherwise."""
        return self.llm.generate(prompt_ids, prompt_attention_mask, media_embeds, max_new_tokens, **kwargs)

    @property
    def llm_tokens_per_video(self) -> int:
        return self.projector.num_tokens


def build_damo(
    cfg: DaMOConfig | Mapping[str, Any],
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    meta: bool = False,
) -> DaMO:
    """Build DaMO from its config (a DaMOConfig or the `model` mapping of the Hydra config).

    meta=True builds every part from the `arch` numbers on the meta device: no weights, no
    download, no tokenizer (for parameter summaries). Otherwise each transformers part loads
    from its `name_or_path` (or is random-initialised from `arch` when that is null), and the
    tokenizer (given, or loaded from `llm.tokenizer` / `llm.name_or_path`) provides `<video>`,
    pad, eos and the time-token ids. The result carries the tokenizer as `damo.tokenizer`.
    """
    cfg = DaMOConfig.from_mapping(cfg)
    if not meta and tokenizer is None:
        source = cfg.llm.tokenizer or cfg.llm.name_or_path
        if not source:
            raise ConfigError("model.llm.tokenizer: needed (or model.llm.name_or_path) to build a real model")
        tokenizer = load_tokenizer(source, offline=cfg.llm.offline)
    time_ids = None
    if tokenizer is not None and cfg.projector.time_anchors:
        time_ids = _time_token_ids(tokenizer, cfg.projector.time_tokens)
    with torch.random.fork_rng(devices=[]), build_device(meta):
        torch.manual_seed(cfg.seed)
        vision, audio = _build_towers(cfg, meta)
        text = TextEncoder(cfg.text_encoder, meta) if cfg.text_encoder.enabled else None
        llm = CausalLM(
            cfg.llm,
            meta=meta,
            vocab_size=len(tokenizer) if tokenizer is not None else None,
            video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN) if tokenizer is not None else None,
            pad_token_id=tokenizer.pad_token_id if tokenizer is not None else None,
            eos_token_id=tokenizer.eos_token_id if tokenizer is not None else None,
        )
        damo = DaMO(cfg, vision, audio, text, llm, time_ids)
    damo.tokenizer = tokenizer
    return damo


def build_encoders(cfg: DaMOConfig | Mapping[str, Any]) -> EncoderTowers:
    """The towers of `build_damo(cfg)` without the rest (no LLM, no tokenizer): built first, from
    the same seed, so that random-init towers come out identical to the full model's. Frozen,
    in eval mode."""
    cfg = DaMOConfig.from_mapping(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        towers = EncoderTowers(*_build_towers(cfg, meta=False))
    towers.requires_grad_(False)
    return towers.eval()


def _build_towers(cfg: DaMOConfig, meta: bool) -> tuple[VisionTower, AudioTower | None]:
    """The first parts build_damo makes after seeding (the order fixes random-init weights)."""
    return VisionTower(cfg.vision, meta), AudioTower(cfg.audio, meta) if cfg.audio.enabled else None


def _time_token_ids(tokenizer: PreTrainedTokenizerBase, unit: str) -> list[int]:
    """The LLM ids of the time tokens: "0".."99" (relative) or "0", "1", ... seconds."""
    needed = RELATIVE_TIME_TOKENS if unit == "relative" else 1
    ids = single_token_numbers(tokenizer, RELATIVE_TIME_TOKENS if unit == "relative" else MAX_SECOND_TOKENS)
    if len(ids) < needed:
        raise ConfigError(
            f"model.projector.time_anchors: {unit} time tokens need \"0\"..\"{needed - 1}\" as single "
            f"tokens, but this tokenizer splits {str(len(ids))!r}; turn time_anchors off for this LLM"
        )
    return ids
