"""Typed model configuration: dataclasses filled from a plain mapping (a Hydra node works too).

models/ knows nothing of Hydra: `DaMOConfig.from_mapping(cfg.model)` reads any Mapping (an
OmegaConf DictConfig is one) and checks every key and type, so that a typo in
`model.fuseformer.dept=4` fails with the dotted key and the keys that were expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

T = TypeVar("T")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ConfigError(ValueError):
    """A model config value that is missing, unknown or of the wrong type; names the dotted key."""


@dataclass
class PretrainedSpec:
    """Where a transformers part comes from: a hub name or folder, or architecture numbers.

    `name_or_path` is loaded with `from_pretrained` (`local_files_only` when `offline`).
    `arch` holds `model_type` plus the config numbers: it builds the part with no weights at
    all (random init, or on the meta device for summaries), so nothing is downloaded.
    """

    name_or_path: str | None = None
    arch: dict[str, Any] | None = None
    offline: bool = True
    dtype: str = "float32"
    trust_remote_code: bool = False


@dataclass
class VisionConfig(PretrainedSpec):
    kind: str = "clip"  # clip | siglip | eva_clip | resnet
    image_size: int = 224  # the frame size the data decodes to; the tower resizes to its own
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    trainable: bool = False
    # Frames per forward pass of the tower (0: every valid frame of the batch at once). A frozen
    # tower keeps no activations, so chunks bound its transient memory: one layer's attention and
    # MLP over thousands of frames is what runs out first at large batches (docs/scale.md).
    chunk_size: int = 0


# Tower keys that change memory, not outputs (items per forward pass: the same outputs in slices).
# Feature caches and experiment recipes ignore them, so that what was made before stays valid.
MEMORY_ONLY_TOWER_KEYS = ("chunk_size",)


@dataclass
class AudioConfig(PretrainedSpec):
    enabled: bool = True
    kind: str = "whisper"
    n_mels: int = 80
    segment_frames: int = 3000  # mel frames per segment: 2 * the encoder's max_source_positions
    trainable: bool = False
    chunk_size: int = 0  # audio segments per forward pass of the tower (0: all at once), as vision's


@dataclass
class TextEncoderConfig(PretrainedSpec):
    enabled: bool = True
    embed_dim: int = 256  # the shared video-text space of stage 1's contrastive loss
    pooling: str = "cls"  # cls (the pretrained pooler, as BLIP-2) | mean (masked mean of the tokens)
    trainable: bool = True  # informational: stage 1 trains it (STAGE_TRAINABLE)


@dataclass
class TemporalConfig:
    kernel: int = 2
    stride: int = 2
    groups: int = 1

    def steps(self, frames: int) -> int:
        """Compressed time steps from `frames` frames: the time axis is padded at the end to whole
        windows, so every frame reaches a step (ceil((frames - kernel) / stride) + 1, at least 1)."""
        return -(-max(frames - self.kernel, 0) // self.stride) + 1


@dataclass
class ResidualConfig:
    enabled: bool = True  # False: plain pooling without the FFN(global) term (ablation)
    video_tokens: int = 16  # L' per frame; a square number (the patch grid pools to sqrt x sqrt)
    audio_tokens: int = 8  # L' per audio segment
    ffn_ratio: float = 2.0
    # none | batch: standardise every tower feature over the batch's valid frames / segments
    # before the residual. Random-init towers give features whose content is a few percent of
    # their constant part; standardising lets that content through from the first step.
    feature_norm: str = "none"
    temporal: TemporalConfig = field(default_factory=TemporalConfig)


@dataclass
class FuseformerConfig:
    kind: str = "tfuseformer"  # tfuseformer | concat
    hidden: int = 768
    depth: int = 4
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    video_queries: int = 192
    audio_queries: int = 64
    fusion_tokens: int = 128
    time_anchors: bool = False  # bind query j of each set to relative time (j + 0.5) / count
    time_bias: bool = False  # per-head learnable -slope * |dt| attention bias where both ends have times
    # learned: queries and fusion tokens start as learned vectors (the paper); pooled: plus the
    # stream content of their time bin, so fusion starts where `kind=concat` ends
    query_init: str = "learned"
    layer_scale: float | None = None  # initial LayerScale of every residual branch; null: none (paper)


@dataclass
class ProjectorConfig:
    queries: int = 32  # K: the number of tokens the LLM receives per video
    layers: int = 2
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    inputs: str = "fusion"  # fusion | all (fusion + compressed video + audio tokens)
    time_anchors: bool = False
    time_bias: bool = False
    time_tokens: str = "relative"  # relative ("0".."99" of the duration) | seconds
    # Normalise the soft-prompt tokens and start their scale at the LLM's own embedding RMS, so that
    # they neither drown the word embeddings nor the time-token embeddings added to them.
    match_embedding_scale: bool = False
    # InstructBLIP-style: the queries also attend to the prompt's token embeddings (the question),
    # so that each soft token can say whether *the asked-for* event happens at its time.
    question_aware: bool = False
    # learned (BLIP-2) | pooled: query k also starts from the fusion tokens pooled to its time bin,
    # so that soft token k carries what happens at its time before the Q-Former has learned anything.
    query_init: str = "learned"


@dataclass
class LoraSettings:
    enabled: bool = True
    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class LLMConfig(PretrainedSpec):
    tokenizer: str | None = None  # defaults to name_or_path
    trainable: bool = False  # True: the base LM trains in every stage (random-init tiny LM)
    gradient_checkpointing: bool = False
    # Teacher-forced passes split the batch into this many groups of similar length (rows sorted by
    # length), each cut to its own longest row: less compute on padding where short and long
    # sequences share a batch (grounding answers beside dialogues). The loss is the same.
    length_buckets: int = 1
    lora: LoraSettings = field(default_factory=LoraSettings)
    # Random-init LMs only (damo-model build-tiny): `sinusoid` gives the number tokens "0".."99"
    # embeddings (input and output) that are sinusoids of their value, so that neighbouring times
    # start out similar, as in a pretrained LM; `random` leaves them as initialised.
    number_embeddings: str = "random"


@dataclass
class DaMOConfig:
    num_frames: int = 24
    num_audio_segments: int = 8
    vision: VisionConfig = field(default_factory=VisionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    fuseformer: FuseformerConfig = field(default_factory=FuseformerConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    seed: int = 0  # initialisation of everything not loaded from a checkpoint
    # Folder of the random-init tiny parts (damo-model build-tiny); null for real checkpoints.
    # The model never reads it: the CLI builds the folder before the model loads from it.
    tiny_dir: str | None = None
    # Training hints that the stage and data configs interpolate (e.g. recipe.lr): the random-init
    # tiny model wants a larger learning rate than the paper's pretrained parts. Not read here.
    recipe: dict[str, Any] = field(default_factory=dict)
    # Dotted class paths FSDP wraps (LLM decoder layers, Fuseformer blocks): conf/trainer/fsdp.yaml.
    fsdp_wrap_classes: list[str] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | "DaMOConfig", where: str = "model") -> "DaMOConfig":
        """Read a nested mapping (e.g. the Hydra node `cfg.model`); unknown keys are errors."""
        if isinstance(data, DaMOConfig):
            return data
        config = from_mapping(cls, data, where)
        config.validate(where)
        return config

    def validate(self, where: str = "model") -> None:
        """Cross-field checks that a type alone cannot express."""
        choices = {
            "vision.kind": (self.vision.kind, ("clip", "siglip", "eva_clip", "resnet")),
            "audio.kind": (self.audio.kind, ("whisper",)),
            "fuseformer.kind": (self.fuseformer.kind, ("tfuseformer", "concat")),
            "projector.inputs": (self.projector.inputs, ("fusion", "all")),
            "residual.feature_norm": (self.residual.feature_norm, ("none", "batch")),
            "fuseformer.query_init": (self.fuseformer.query_init, ("learned", "pooled")),
            "projector.time_tokens": (self.projector.time_tokens, ("relative", "seconds")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{where}.{key}: expected one of {', '.join(allowed)}, got {value!r}")
        self._check_counts(where)
        root = int(round(self.residual.video_tokens**0.5))
        if root * root != self.residual.video_tokens:
            raise ConfigError(
                f"{where}.residual.video_tokens: must be a square number (the patch grid pools to a "
                f"square), got {self.residual.video_tokens}"
            )
        if self.fuseformer.hidden % self.fuseformer.heads:
            raise ConfigError(
                f"{where}.fuseformer.hidden ({self.fuseformer.hidden}) must be divisible by "
                f"fuseformer.heads ({self.fuseformer.heads})"
            )
        if self.fuseformer.hidden % self.projector.heads:
            raise ConfigError(
                f"{where}.fuseformer.hidden ({self.fuseformer.hidden}) must be divisible by "
                f"projector.heads ({self.projector.heads})"
            )
        if self.fuseformer.hidden % self.residual.temporal.groups:
            raise ConfigError(
                f"{where}.residual.temporal.groups ({self.residual.temporal.groups}) must divide "
                f"fuseformer.hidden ({self.fuseformer.hidden})"
            )
        if self.residual.temporal.stride > self.residual.temporal.kernel:
            raise ConfigError(
                f"{where}.residual.temporal.stride ({self.residual.temporal.stride}) must be <= "
                f"residual.temporal.kernel ({self.residual.temporal.kernel}): frames between windows would be skipped"
            )
        if self.fuseformer.kind == "concat" and self.audio.enabled and self.fuseformer.fusion_tokens < 2:
            raise ConfigError(
                f"{where}.fuseformer.fusion_tokens: the concat fusion with audio pools each modality into "
                f"its own bins, so it needs >= 2, got {self.fuseformer.fusion_tokens}"
            )
        if self.fuseformer.depth < 1:  # also under kind=concat, which ignores it: a sweep's typo stays one
            raise ConfigError(f"{where}.fuseformer.depth: must be >= 1, got {self.fuseformer.depth}")
        if self.projector.layers < 1 and self.projector.query_init == "learned":
            raise ConfigError(f"{where}.projector.layers: must be >= 1 with projector.query_init=learned (with no "
                              f"layer the learned queries never see the video), got {self.projector.layers}")
        if self.projector.layers < 0:
            raise ConfigError(f"{where}.projector.layers: must be >= 0, got {self.projector.layers}")
        self._check_rates(where)
        for tower in ("vision", "audio"):
            if getattr(self, tower).chunk_size < 0:
                raise ConfigError(
                    f"{where}.{tower}.chunk_size: must be >= 0 (0 runs every item at once), "
                    f"got {getattr(self, tower).chunk_size}"
                )
        if len(self.vision.mean) != 3 or len(self.vision.std) != 3:
            raise ConfigError(f"{where}.vision.mean/std: expected 3 values (RGB) each")
        if not all(v > 0 and math.isfinite(v) for v in self.vision.std):
            raise ConfigError(f"{where}.vision.std: every value must be > 0 (frames are divided by it), "
                              f"got {list(self.vision.std)}")

    def _check_rates(self, where: str) -> None:
        """Widths as ratios must be > 0 (FeedForward would quietly build a 1-unit layer), dropouts
        probabilities below 1, and LoRA an adapter that changes something."""
        ratios = {"fuseformer.mlp_ratio": self.fuseformer.mlp_ratio, "projector.mlp_ratio": self.projector.mlp_ratio,
                  "residual.ffn_ratio": self.residual.ffn_ratio}  # fmt: skip
        for key, value in ratios.items():
            if not value > 0:
                raise ConfigError(f"{where}.{key}: must be > 0 (a width as a multiple of the hidden size), got {value}")
        dropouts = {"fuseformer.dropout": self.fuseformer.dropout, "projector.dropout": self.projector.dropout,
                    "llm.lora.dropout": self.llm.lora.dropout}  # fmt: skip
        for key, value in dropouts.items():
            if not 0 <= value < 1:
                raise ConfigError(f"{where}.{key}: a probability in [0, 1), got {value}")
        if self.text_encoder.enabled and self.text_encoder.embed_dim < 1:
            raise ConfigError(f"{where}.text_encoder.embed_dim: must be >= 1, got {self.text_encoder.embed_dim}")
        if self.vision.image_size < 1:
            raise ConfigError(f"{where}.vision.image_size: must be >= 1, got {self.vision.image_size}")
        lora = self.llm.lora
        if lora.enabled:
            if lora.r < 1:
                raise ConfigError(f"{where}.llm.lora.r: the adapters' rank must be >= 1, got {lora.r}")
            if not lora.alpha > 0:
                raise ConfigError(f"{where}.llm.lora.alpha: must be > 0 (the adapters are scaled by alpha / r), "
                                  f"got {lora.alpha}")
            if not lora.target_modules:
                raise ConfigError(f"{where}.llm.lora.target_modules: empty; name the LM's linear layers to adapt "
                                  "(e.g. [q_proj, k_proj, v_proj, o_proj]), or set llm.lora.enabled=false")

    def _check_counts(self, where: str) -> None:
        """Every count of tokens, items, heads and window sizes must be >= 1: a zero builds empty
        tensors that fail far from the config (or a zero video_tokens passes the square check)."""
        counts = {
            "num_frames": self.num_frames,
            "num_audio_segments": self.num_audio_segments,
            "residual.video_tokens": self.residual.video_tokens,
            "residual.audio_tokens": self.residual.audio_tokens,
            "residual.temporal.kernel": self.residual.temporal.kernel,
            "residual.temporal.stride": self.residual.temporal.stride,
            "residual.temporal.groups": self.residual.temporal.groups,
            "fuseformer.hidden": self.fuseformer.hidden,
            "fuseformer.heads": self.fuseformer.heads,
            "fuseformer.video_queries": self.fuseformer.video_queries,
            "fuseformer.audio_queries": self.fuseformer.audio_queries,
            "fuseformer.fusion_tokens": self.fuseformer.fusion_tokens,
            "projector.queries": self.projector.queries,
            "projector.heads": self.projector.heads,
        }
        for key, value in counts.items():
            if value < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {value}")


# ---------------------------------------------------------------------------------------------
# Generic mapping -> dataclass conversion with dotted-key errors.


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from `data`, recursively, checking keys and value types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in data.keys() if k not in known and not str(k).startswith("_"))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
        )
    values = {name: _coerce(hints[name], data[name], f"{where}.{name}") for name in known if name in data}
    return cls(**values)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must not be null")
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _plain(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _plain(value: Any) -> Any:
    """Mappings and sequences (OmegaConf containers included) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value
