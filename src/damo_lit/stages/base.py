"""What every training stage shares: the DaMO backbone, its trainable groups, the handoff from
the previous stage, the LM loss, the optimizer and schedule, lean checkpoints, and the guards
of a long run (docs/reliability.md).

A stage subclass adds only its loss and its validation metrics. Stages know nothing of file
formats: the CLI hands in the span parser (timestamp text -> spans) and the baseline prior.

Guards every stage gets:
- A NaN or infinite loss on any rank skips the optimizer step on every rank (the ranks
  all-reduce a flag, so that their weights stay equal) and is counted (`train/nonfinite_steps`);
  `max_nonfinite_steps` in a row stop the run with NonFiniteLossError
  (stages.callbacks.InterruptCheckpoint then saves the last good weights).
- Checkpoints hold the RNG states, restored at the first training batch after a resume, so that
  dropout draws what an uninterrupted run would have drawn; and a resume refuses a checkpoint
  that lacks any weight this stage trains (frozen pretrained weights are left out of
  checkpoints and rebuilt, so loading is not strict and would otherwise keep random weights).
- A resume takes the configured optimizer lr and weight decay where they differ from the
  checkpoint's (on_train_start), keeping its place in the LR schedule.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from damo_lit.models.damo import STAGE_TRAINABLE, DaMO, build_damo
from damo_lit.models.media import MediaTokens
from damo_lit.stages.fsdp import uses_fsdp
from damo_lit.stages.schedule import warmup_cosine
from damo_lit.stages.weights import (
    CARRIED_GROUPS, fitting_weights, inherited_groups, load_stage_weights, mismatch_error, model_config_change,
    persistent_names, written_by,
)  # fmt: skip

log = logging.getLogger(__name__)

SpanParser = Callable[[str, float], list[tuple[float, float]]]
FEATURE_KEYS = ("vision_global", "vision_local", "audio_global", "audio_local")


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite for stage.max_nonfinite_steps steps in a row."""


@dataclass
class NonFiniteSteps:
    """Skipped steps: in all, in a row now, and the global step the current run of them began at."""

    total: int = 0
    streak: int = 0
    first: int = -1


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states as tensors and plain containers
    (loadable with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": _as_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Undo rng_state()."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_as_tuples(state["python"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("resume: the checkpoint has CUDA RNG states of %d device(s), this node %d; not restored",
                        len(cuda), torch.cuda.device_count())


def _as_lists(value: Any) -> Any:
    return [_as_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def running_stats(module: torch.nn.Module) -> list[Tensor]:
    """The buffers a training forward pass updates: running statistics (`running_*`, e.g. of batch
    norms, torch's and models.layers.MaskedBatchNorm, and `num_batches_tracked`)."""
    return [buffer for name, buffer in module.named_buffers()
            if name.rpartition(".")[2].startswith("running_") or name.endswith("num_batches_tracked")]  # fmt: skip


def _skips_nonfinite(step: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a stage's training_step: its loss goes through DaMOStage.guard_loss, and a skipped step
    also takes back what its forward pass did to the running statistics."""

    @functools.wraps(step)
    def training_step(self: "DaMOStage", *args: Any, **kwargs: Any) -> Any:
        stats = running_stats(self)
        before = [t.clone() for t in stats]

        def restore() -> None:
            with torch.no_grad():
                for tensor, value in zip(stats, before):
                    tensor.copy_(value)

        return self.guard_loss(step(self, *args, **kwargs), restore)

    training_step._skips_nonfinite = True  # type: ignore[attr-defined]
    return training_step


MEDIA_KEYS = ("frames", "frame_times", "frame_mask", "audio_mel", "audio_times", "audio_mask", "duration", *FEATURE_KEYS)


def shared_videos(keys: Sequence[str] | None) -> tuple[Tensor, Tensor] | None:
    """(first row of each distinct video, each row's video) when some rows share a video, else None."""
    if not keys or len(set(keys)) == len(keys):
        return None
    position: dict[str, int] = {}
    first: list[int] = []
    inverse = []
    for row, key in enumerate(keys):
        if key not in position:
            position[key] = len(first)
            first.append(row)
        inverse.append(position[key])
    return torch.tensor(first, dtype=torch.long), torch.tensor(inverse, dtype=torch.long)


def select_rows(batch: Mapping[str, Any], rows: Tensor) -> dict[str, Any]:
    """The media keys of `batch` at `rows` (what encoding reads)."""
    return {k: batch[k].index_select(0, rows) for k in MEDIA_KEYS if batch.get(k) is not None}


def learning_rates(optimizers: Sequence[torch.optim.Optimizer]) -> dict[str, float]:
    """{"lr": rate} when every parameter group steps at one rate (the stages' decay / no-decay
    groups differ in weight decay only), else {"lr_<group name>": rate} per group."""
    groups = [group for optimizer in optimizers for group in optimizer.param_groups]
    rates = {str(group.get("name") or f"pg{i}"): float(group["lr"]) for i, group in enumerate(groups, start=1)}
    if len(set(rates.values())) == 1:
        return {"lr": next(iter(rates.values()))}
    return {f"lr_{name}": rate for name, rate in rates.items()}


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, float]]:
    """Each parameter group's peak learning rate and weight decay, as configure_optimizers set them."""
    return [{"lr": float(g["lr"]), "weight_decay": float(g["weight_decay"])} for g in optimizer.param_groups]


def schedule_factor(group: Mapping[str, Any], scheduler: Any, index: int) -> float:
    """Where the schedule stands now, as a fraction of the group's peak rate (for a peak of 0, the
    LambdaLR's own factor at its step)."""
    peak = float(group.get("initial_lr", group["lr"]))
    if peak:
        return float(group["lr"]) / peak
    lambdas = getattr(scheduler, "lr_lambdas", None)
    return float(lambdas[index](scheduler.last_epoch)) if lambdas else 1.0


def apply_group_settings(optimizer: torch.optim.Optimizer, scheduler: Any,
                         configured: Sequence[Mapping[str, float]]) -> list[str]:
    """Give each parameter group its configured peak rate and weight decay where a restored
    checkpoint holds others: the current rate keeps its place in the schedule (same step, new
    peak), and the scheduler's base_lrs follow. Returns the changes in words, e.g.
    `lr 0.001 -> 0.0003 (decay, no_decay)`; none when the checkpoint was saved with these."""
    changes: dict[tuple[str, float, float], list[str]] = {}
    for index, (group, want) in enumerate(zip(optimizer.param_groups, configured)):
        name = str(group.get("name") or f"pg{index + 1}")
        peak = float(group.get("initial_lr", group["lr"]))
        if not math.isclose(peak, want["lr"], rel_tol=1e-9):
            group["lr"] = want["lr"] * schedule_factor(group, scheduler, index)
            group["initial_lr"] = want["lr"]
            if scheduler is not None:
                scheduler.base_lrs[index] = want["lr"]
            changes.setdefault(("lr", peak, want["lr"]), []).append(name)
        if not math.isclose(float(group["weight_decay"]), want["weight_decay"], rel_tol=1e-9):
            changes.setdefault(("weight_decay", float(group["weight_decay"]), want["weight_decay"]), []).append(name)
            group["weight_decay"] = want["weight_decay"]
    if changes and scheduler is not None:
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return [f"{key} {old:g} -> {new:g} ({', '.join(names)})" for (key, old, new), names in changes.items()]


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
        prompt_style: plain | chat, how the data rendered prompts (data.prompt_style; recorded in
            checkpoints so that damo-eval and damo-predict ask questions as the run was trained).
        span_parser: (text, duration) -> spans in seconds; handed in by the CLI.
        max_nonfinite_steps: steps in a row with a NaN or infinite loss (each skipped) that stop the run.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every stage's own training_step gets the non-finite guard, without each stage calling it.
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("training_step")
        if step is not None and not getattr(step, "_skips_nonfinite", False):
            cls.training_step = _skips_nonfinite(step)  # type: ignore[method-assign]

    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        name: str,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        trainable: Sequence[str] | None = None,
        init_from: str | None = None,
        timestamps: str = "relative",
        prompt_style: str = "plain",
        span_parser: SpanParser | None = None,
        max_nonfinite_steps: int = 10,
        **stage_options: Any,
    ) -> None:
        super().__init__()
        if name not in STAGE_TRAINABLE:
            raise ValueError(f"stage.name must be one of {', '.join(STAGE_TRAINABLE)}, got {name!r}")
        if int(max_nonfinite_steps) < 1:
            raise ValueError(f"stage.max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.nonfinite = NonFiniteSteps()
        self._rng_to_restore: dict[str, Any] | None = None
        self._skip_optimizer_step = False
        self.model_cfg = plain(model_cfg)
        self.stage_name = name
        self.timestamps = timestamps
        self.prompt_style = prompt_style
        self.save_hyperparameters(
            {"model_cfg": self.model_cfg, "name": name, "scheduler": plain(scheduler), "timestamps": timestamps,
             "prompt_style": prompt_style,
             "trainable": plain(trainable), "init_from": init_from, "max_nonfinite_steps": self.max_nonfinite_steps,
             **{k: plain(v) for k, v in stage_options.items()}}
        )
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(plain(scheduler) or {})
        self.configured_groups: list[dict[str, float]] | None = None  # group_settings at configure_optimizers
        self.model: DaMO = build_damo(self.model_cfg)
        self.tokenizer = self.model.tokenizer
        self.trainable_groups = self._resolve_trainable(trainable)
        self.model.set_trainable(self.trainable_groups)
        self.span_parser = span_parser
        self.init_report = load_stage_weights(self.model, init_from) if init_from else None
        self.resumed_groups: list[str] = []  # carried groups a resumed checkpoint held (on_load_checkpoint)
        if self.init_report is not None:
            log.info("%s: loaded %d tensors from %s", name, len(self.init_report.loaded), self.init_report.path)
            if warning := self.init_report.missing_warning():
                log.warning("%s: %s", name, warning)
        # Frozen pretrained parts are rebuilt from model_cfg: Lightning checkpoints skip them.
        self.strict_loading = False

    # -- set-up ---------------------------------------------------------------------------------
    def _resolve_trainable(self, trainable: Sequence[str] | None) -> list[str]:
        groups = list(self.model.trainable_groups(self.stage_name))
        if isinstance(trainable, str):  # stage.trainable=fuseformer: one group, not its letters
            trainable = [trainable]
        if trainable is not None:
            flagged = set(groups) - set(STAGE_TRAINABLE[self.stage_name])  # towers marked trainable
            groups = list(dict.fromkeys(list(trainable) + sorted(flagged)))
        return groups

    def persistent_names(self) -> set[str]:
        """State-dict names (relative to self.model) this stage saves: what it trains, plus the
        towers / base LM it started from a previous stage's weights (stages/weights.py), whether
        from stage.init_from or from the checkpoint a run resumed (which carried them on)."""
        return persistent_names(self.model, [*self.trainable_groups, *self.carried_groups()])

    def carried_groups(self) -> list[str]:
        """The towers / base LM this stage started from earlier weights of (stage.init_from, or the
        checkpoint it resumed), which it saves on whether it trains them or not."""
        inherited = inherited_groups(self.model, self.init_report.loaded) if self.init_report is not None else []
        return list(dict.fromkeys([*inherited, *self.resumed_groups]))

    def stage_meta(self) -> dict[str, Any]:
        return {"stage": self.stage_name, "model_cfg": self.model_cfg, "timestamps": self.timestamps,
                "prompt_style": self.prompt_style, "trainable": self.trainable_groups}

    # -- the shared forward passes ---------------------------------------------------------------
    def media(self, batch: Mapping[str, Any]) -> MediaTokens:
        """Batch (raw media or cached encoder features) -> fused media tokens, one row per sample.

        Samples of the same video (the batch's `video` keys; data.group_by_video puts them side by
        side) are encoded once and share the result.
        """
        shared = shared_videos(batch.get("video"))
        if shared is not None:
            first, inverse = (t.to(batch["duration"].device) for t in shared)
            return self._encode(select_rows(batch, first)).take(inverse)
        return self._encode(batch)

    def _encode(self, batch: Mapping[str, Any]) -> MediaTokens:
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

    def soft_prompt(self, batch: Mapping[str, Any], media: MediaTokens | None = None) -> Tensor:
        """The batch's media as soft-prompt tokens for the LLM (a question-aware projector also
        reads the batch's prompt_ids)."""
        media = self.media(batch) if media is None else media
        return self.model.media_embeds(media, batch["duration"], batch.get("prompt_ids"),
                                       batch.get("prompt_attention_mask"))

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
        optimizer = self.optimizer_factory([{"params": decay, "name": "decay"},
                                            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}])
        self.configured_groups = group_settings(optimizer)  # a resume restores the checkpoint's over these
        total = float(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            raise ValueError(f"the LR schedule needs a number of steps > 0, and this run's comes to {total:g} "
                             f"(trainer.max_steps={self.trainer.max_steps}, trainer.max_epochs={self.trainer.max_epochs},"
                             f" trainer.limit_train_batches={self.trainer.limit_train_batches}): set trainer.max_steps "
                             "> 0, or -1 with trainer.max_epochs > 0")
        total = int(total)
        scheduler = warmup_cosine(
            optimizer,
            total_steps=total,
            warmup_ratio=float(self.scheduler_cfg.get("warmup_ratio", 0.05)),
            min_lr_ratio=float(self.scheduler_cfg.get("min_lr_ratio", 0.0)),
            warmup_steps=self.scheduler_cfg.get("warmup_steps"),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def log_learning_rates(self) -> None:
        """Log the rates of this step as train/lr (see `learning_rates`): Lightning's
        LearningRateMonitor would name them `lr-AdamW/pg1`, outside the {split}/{metric} scheme."""
        self.log_metrics("train", learning_rates(self.trainer.optimizers), on_step=True, on_epoch=False,
                         batch_size=1)

    def on_train_start(self) -> None:
        """On resume, the configured stage.optimizer.lr and weight_decay win: Lightning restores the
        checkpoint's param groups (lr, initial_lr, weight_decay) and the scheduler's base_lrs after
        configure_optimizers, which would silently keep the old ones (and make "resume from
        nonfinite.ckpt with a lower lr" do nothing). Nothing changes when they are the same, so an
        unchanged command still resumes exactly."""
        if self.configured_groups is None or not self.trainer.optimizers:
            return
        optimizer = self.trainer.optimizers[0]
        scheduler = next((c.scheduler for c in self.trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer),
                         None)  # fmt: skip
        changes = apply_group_settings(optimizer, scheduler, self.configured_groups)
        if changes and self.trainer.is_global_zero:
            log.info("%s: the configured optimizer settings replace the checkpoint's: %s; the schedule goes on from "
                     "step %d", self.stage_name, "; ".join(changes), self.global_step)

    # -- non-finite losses -----------------------------------------------------------------------
    def guard_loss(self, output: Any, restore: Callable[[], None] | None = None) -> Any:
        """The training step's output, unchanged. When the loss is NaN or infinite on any rank, the
        optimizer step that follows is skipped on every rank (on_before_optimizer_step drops the
        gradients) and `restore` undoes the rest of the forward pass; NonFiniteLossError after
        max_nonfinite_steps in a row.

        Backward still runs on a skipped step: under DDP every rank must take part in the gradient
        all-reduce, and Lightning refuses a training_step that returns None in distributed training."""
        loss = output.get("loss") if isinstance(output, Mapping) else output
        if not isinstance(loss, Tensor):
            return output
        bad = (~torch.isfinite(loss.detach())).any().to(torch.float32).reshape(1)
        trainer = self._trainer
        # Every rank must agree: a rank that skipped alone would hang the others in the gradient all-reduce.
        bad_ranks = int(trainer.strategy.reduce(bad, reduce_op="sum").item()) if trainer is not None else int(bad.item())
        count = self.nonfinite
        if bad_ranks:
            count.total += 1
            count.streak += 1
            count.first = self.global_step if count.first < 0 else count.first
        else:
            count.streak, count.first = 0, -1
        self.log("train/nonfinite_steps", float(count.total), on_step=True, on_epoch=False, batch_size=1)
        if not bad_ranks:
            return output
        if restore is not None:
            restore()
        world = trainer.world_size if trainer is not None else 1
        if trainer is None or trainer.is_global_zero:
            log.warning("%s: step %d has a non-finite loss on %d of %d rank(s) (here: %s); skipped on every rank "
                        "(%d in a row, %d in all; stage.max_nonfinite_steps=%d)", self.stage_name, self.global_step,
                        bad_ranks, world, float(loss.detach().float().mean()), count.streak, count.total,
                        self.max_nonfinite_steps)
        if count.streak >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"stage {self.stage_name}: the loss was NaN or infinite for {count.streak} steps in a row (global steps "
                f"{count.first}-{self.global_step}; {count.total} skipped in all), which is stage.max_nonfinite_steps="
                f"{self.max_nonfinite_steps}. The weights are those of the last good step (saved as checkpoints/"
                "nonfinite.ckpt by the interrupt_checkpoint callback). Resume from it with a lower stage.optimizer.lr "
                "(the configured rate replaces the checkpoint's), keep trainer.gradient_clip_val on, or look at the "
                "data of these steps."
            )
        self._skip_optimizer_step = True
        return output

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the step of a non-finite loss: without gradients the optimizer changes nothing (no
        update, no weight decay, no moment update). Under fp16 with a fused AdamW the gradients are
        not unscaled yet here, and fp16's grad scaler must find an inf to skip the step (with no
        gradient at all, its update asserts that it checked none): they are made NaN instead, and
        the scaler skips the step and lowers its scale."""
        if not self._skip_optimizer_step:
            return
        self._skip_optimizer_step = False
        if self._fused_step_scaler(optimizer) is None:
            optimizer.zero_grad(set_to_none=True)
            return
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    param.grad = torch.full_like(param, float("nan"))
                else:
                    param.grad.fill_(float("nan"))

    def _fused_step_scaler(self, optimizer: torch.optim.Optimizer) -> Any:
        """fp16's grad scaler when `optimizer` is a fused one (its step unscales the gradients
        itself, so Lightning leaves them scaled until then), else None."""
        if self._trainer is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
            return None
        return getattr(self._trainer.precision_plugin, "scaler", None)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """trainer.gradient_clip_val under every recipe the configs ship. Lightning refuses two of
        them: FSDP ('norm' unsupported: a per-rank norm over shards is wrong) and a fused AdamW under
        mixed precision (a fused step unscales fp16 gradients itself, so Lightning leaves them scaled
        and will not clip them). Under FSDP the root module's clip_grad_norm_ takes the norm over all
        shards; with a fused AdamW the gradients are unscaled here first when fp16's grad scaler
        scaled them (torch's scaler then steps the fused AdamW on unscaled gradients, skipping a step
        with infs as ever; bf16 has no scaler), and torch clips them; everything else is Lightning's."""
        if not gradient_clip_val:
            return
        by_norm = gradient_clip_algorithm in (None, "norm")
        if uses_fsdp(self.trainer) and by_norm:
            self.trainer.strategy.model.clip_grad_norm_(float(gradient_clip_val))
            return
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler = self._fused_step_scaler(optimizer)
            if scaler is not None:
                scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if by_norm:
                torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))
            else:
                torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)  # fmt: skip

    # -- lean, complete checkpoints --------------------------------------------------------------
    def checkpoint_keys(self, state_keys: Sequence[str]) -> set[str]:
        """The keys of a module state dict a checkpoint keeps: everything that cannot be rebuilt from
        model_cfg (the persistent groups) plus the stage's own heads; frozen pretrained parts go."""
        keep = {"model." + n for n in self.persistent_names()}
        return {k for k in state_keys if k in keep or not k.startswith("model.")}

    def check_complete(self, state: Mapping[str, Any], source: str, meta: Mapping[str, Any] | None = None) -> None:
        """Refuse weights that lack anything this stage trains or keeps: loading is not strict (the
        frozen parts are rebuilt), so a gap would silently keep freshly initialised weights. `meta`
        (the checkpoint's 'damo' entry) names the model keys it was saved with that differ."""
        missing = sorted(self.checkpoint_keys(list(self.state_dict().keys())) - set(state))
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            changed = model_config_change(meta or {}, self.model_cfg)
            cause = (f"{changed}: resume with the model config that saved it" if changed else
                     "it was saved by another stage or model config (stage.trainable, model.*.trainable): resume "
                     "with the config that saved it")  # fmt: skip
            raise ValueError(
                f"{source}: lacks {len(missing)} weight(s) that stage {self.stage_name} trains or keeps ({shown}); "
                + cause
            )

    def check_fits(self, state: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Refuse a checkpoint of another model config (a deeper Fuseformer, more queries) with the
        config keys that differ: Lightning would stop on a tensor's size, or later on an optimizer
        group's, naming neither."""
        _, unexpected = fitting_weights(self.state_dict(), state, "the checkpoint", meta, self.model_cfg)
        if unexpected:
            raise mismatch_error("the checkpoint", [f"{k}: not in this model" for k in unexpected], meta,
                                 self.model_cfg)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the weights that cannot be rebuilt from model_cfg (frozen pretrained parts go),
        and add the stage meta, the non-finite step counts and the RNG states (all plain values).

        Under FSDP the state stays whole: Lightning resumes a sharded checkpoint by loading every
        key of the module's state dict (torch.distributed.checkpoint refuses a partial one). The
        stage's own weights.safetensors stays lean either way."""
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and not uses_fsdp(self._trainer):
            keep = self.checkpoint_keys(list(state))
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep}
        checkpoint["damo"] = {**self.stage_meta(), **written_by(), "carried": self.carried_groups()}
        checkpoint["damo_resume"] = {"nonfinite": asdict(self.nonfinite), "rng": rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint has every trained weight; restore the counts; keep the RNG states
        for the first training batch (restoring them now would be undone by the set-up in between)."""
        if isinstance(checkpoint.get("state_dict"), dict):  # (FSDP sharded checkpoints load weights apart)
            self.check_fits(checkpoint["state_dict"], checkpoint.get("damo") or {})
            self.check_complete(checkpoint["state_dict"], "the checkpoint", checkpoint.get("damo") or {})
            # the towers / base LM the interrupted run carried on are saved on after the resume too
            # (a checkpoint that does not list them says so by its keys)
            carried = [key.removeprefix("model.") for key in checkpoint["state_dict"] if key.startswith("model.")]
            self.resumed_groups = inherited_groups(self.model, carried)
        listed = (checkpoint.get("damo") or {}).get("carried")  # (an FSDP sharded checkpoint: only the list)
        if isinstance(listed, list):
            named = [group for group in map(str, listed) if group in CARRIED_GROUPS]
            self.resumed_groups = list(dict.fromkeys([*self.resumed_groups, *named]))
        resume = checkpoint.get("damo_resume") or {}
        if "nonfinite" in resume:
            self.nonfinite = NonFiniteSteps(**resume["nonfinite"])
        self._rng_to_restore = resume.get("rng")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.log_learning_rates()
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
