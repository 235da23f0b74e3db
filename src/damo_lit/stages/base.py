"""What every training stage shares: the DaMO backbone, its trainable groups, the handoff from
the previous stage, the LM loss, the optimizer and schedule, and lean checkpoints.

A stage subclass adds only its loss and its validation metrics. Stages know nothing of file
formats: the CLI hands in the span parser (timestamp text -> spans) and the baseline prior.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from damo_lit.models.damo import STAGE_TRAINABLE, DaMO, build_damo
from damo_lit.models.media import MediaTokens
from damo_lit.stages.schedule import warmup_cosine
from damo_lit.stages.weights import load_stage_weights, persistent_names

log = logging.getLogger(__name__)

SpanParser = Callable[[str, float], list[tuple[float, float]]]
FEATURE_KEYS = ("vision_global", "vision_local", "audio_global", "audio_local")


def plain(value: Any) -> Any:
    """A DictConfig/ListConfig as plain Python containers (checkpoints hold no OmegaConf objects)."""
    if isinstance(value, (DictConfig,)) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


class DaMOStage(L.LightningModule):
    """One training stage over the shared DaMO backbone.

    Args:
        model_cfg: the `model` config mapping (what `build_damo` takes); saved in checkpoints so
            that the frozen pretrained parts can be rebuilt from their names or paths.
        name: stage1 .. stage4; selects the default trainable groups (models.damo.STAGE_TRAINABLE).
        optimizer: a partial optimizer (Hydra `_partial_: true`) taking the parameter groups.
        scheduler: {warmup_ratio | warmup_steps, min_lr_ratio} for warmup + cosine decay.
        trainable: module groups to train instead of the stage's default (null: the default).
        init_from: the previous stage's weights (its run folder or weights.safetensors).
        timestamps: relative | seconds, the timestamp text format (for the record in checkpoints).
        span_parser: (text, duration) -> spans in seconds; handed in by the CLI.
    """

    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        name: str,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        trainable: Sequence[str] | None = None,
        init_from: str | None = None,
        timestamps: str = "relative",
        span_parser: SpanParser | None = None,
        **stage_options: Any,
    ) -> None:
        super().__init__()
        if name not in STAGE_TRAINABLE:
            raise ValueError(f"stage.name must be one of {', '.join(STAGE_TRAINABLE)}, got {name!r}")
        self.model_cfg = plain(model_cfg)
        self.stage_name = name
        self.timestamps = timestamps
        self.save_hyperparameters(
            {"model_cfg": self.model_cfg, "name": name, "scheduler": plain(scheduler), "timestamps": timestamps,
             "trainable": plain(trainable), "init_from": init_from, **{k: plain(v) for k, v in stage_options.items()}}
        )
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(plain(scheduler) or {})
        self.model: DaMO = build_damo(self.model_cfg)
        self.tokenizer = self.model.tokenizer
        self.trainable_groups = self._resolve_trainable(trainable)
        self.model.set_trainable(self.trainable_groups)
        self.span_parser = span_parser
        self.init_report = load_stage_weights(self.model, init_from) if init_from else None
        if self.init_report is not None:
            log.info("%s: loaded %d tensors from %s", name, len(self.init_report.loaded), self.init_report.path)
        # Frozen pretrained parts are rebuilt from model_cfg: Lightning checkpoints skip them.
        self.strict_loading = False

    # -- set-up ---------------------------------------------------------------------------------
    def _resolve_trainable(self, trainable: Sequence[str] | None) -> list[str]:
        groups = list(self.model.trainable_groups(self.stage_name))
        if trainable is not None:
            flagged = set(groups) - set(STAGE_TRAINABLE[self.stage_name])  # towers marked trainable
            groups = list(dict.fromkeys(list(trainable) + sorted(flagged)))
        return groups

    def persistent_names(self) -> set[str]:
        """State-dict names (relative to self.model) this stage saves: see stages/weights.py."""
        return persistent_names(self.model, self.trainable_groups)

    def stage_meta(self) -> dict[str, Any]:
        return {"stage": self.stage_name, "model_cfg": self.model_cfg, "timestamps": self.timestamps,
                "trainable": self.trainable_groups}

    # -- the shared forward passes ---------------------------------------------------------------
    def media(self, batch: Mapping[str, Any]) -> MediaTokens:
        """Batch (raw media or cached encoder features) -> fused media tokens."""
        common = {k: batch.get(k) for k in ("frame_times", "frame_mask", "audio_times", "audio_mask", "duration")}
        if "vision_global" in batch:
            towers = [g for g in ("vision", "audio") if g in self.trainable_groups]
            if towers:
                raise ValueError(
                    f"stage {self.stage_name}: the batch carries cached tower features (data.features) but the "
                    f"{' and '.join(towers)} tower(s) train in this stage; set "
                    f"{' '.join(f'model.{g}.trainable=false' for g in towers)} and leave them out of stage.trainable"
                )
            return self.model.encode_features(**{k: batch.get(k) for k in FEATURE_KEYS}, **common)
        return self.model.encode(frames=batch["frames"], audio_mel=batch.get("audio_mel"), **common)

    def lm_loss(self, batch: Mapping[str, Any], embeds: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Next-token loss on the answer tokens, media spliced in at <video>. Returns (loss, embeds)."""
        if embeds is None:
            embeds = self.soft_prompt(batch)
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["labels"], embeds)
        return out.loss, embeds

    def generate_text(self, batch: Mapping[str, Any], embeds: Tensor, max_new_tokens: int) -> list[str]:
        """Greedy answers to the batch's prompts (prompt_ids: everything before the final answer)."""
        new_ids = self.model.generate(batch["prompt_ids"], batch["prompt_attention_mask"], embeds, max_new_tokens)
        return [t.strip() for t in self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)]

    def batch_size_of(self, batch: Mapping[str, Any]) -> int:
        return int(batch["duration"].shape[0])

    def log_metrics(self, split: str, values: Mapping[str, Any], batch_size: int | None = None,
                    **kwargs: Any) -> None:
        """Log every metric as {split}/{name}."""
        for key, value in values.items():
            self.log(f"{split}/{key}", value, batch_size=batch_size, **kwargs)

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError(f"stage {self.stage_name}: no optimizer configured (stage.optimizer)")
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        if not decay and not no_decay:
            raise ValueError(f"stage {self.stage_name}: nothing to train (trainable groups: {self.trainable_groups})")
        optimizer = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        total = int(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            raise ValueError("the LR schedule needs a finite number of steps: set trainer.max_steps or max_epochs")
        scheduler = warmup_cosine(
            optimizer,
            total_steps=total,
            warmup_ratio=float(self.scheduler_cfg.get("warmup_ratio", 0.05)),
            min_lr_ratio=float(self.scheduler_cfg.get("min_lr_ratio", 0.0)),
            warmup_steps=self.scheduler_cfg.get("warmup_steps"),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- lean checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the weights that cannot be rebuilt from model_cfg (frozen pretrained parts go)."""
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            keep = {"model." + n for n in self.persistent_names()}
            extra = {k for k in state if not k.startswith("model.")}  # stage heads (e.g. VTM)
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep or k in extra}
        checkpoint["damo"] = self.stage_meta()
    def soft_prompt(self, batch: Mapping[str, Any], media: MediaTokens | None = None) -> Tensor:
        """The batch's media as soft-prompt tokens for the LLM (a question-aware projector also
        reads the batch's prompt_ids)."""
        media = self.media(batch) if media is None else media
        return self.model.media_embeds(media, batch["duration"], batch.get("prompt_ids"),
                                       batch.get("prompt_attention_mask"))

