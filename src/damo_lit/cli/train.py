"""damo-train: run one training stage from the composed Hydra config (conf/train.yaml).

    damo-train stage=stage3_temporal model=damo_tiny data=synthetic trainer.devices=2
    damo-train stage=stage4_dialogue stage.init_from=outputs/demo/stage3
    damo-train -m model.fuseformer.depth=1,2,4          # a sweep
    damo-train --help                                    # Hydra's help: groups and options

The run folder (hydra.run.dir) receives the composed config, checkpoints/ (Lightning, for exact
resume with resume_from=...), weights.safetensors + stage.json (what the next stage's
stage.init_from reads), adapter/ (LoRA, peft format) and metrics.json.

Resuming loads the checkpoint with torch.load(weights_only=True): tensors and plain containers
only, never arbitrary pickled objects. What resume_from names is checked before anything is built
(a run folder, a weights file, another stage's checkpoint, `last` without one: one line each), and
a new stage.optimizer.lr or weight_decay on the resume command replaces the checkpoint's.

On SIGTERM (preemption) the run saves checkpoints/preempted.ckpt after the current batch and exits
with PREEMPTED_EXIT_CODE (143, 128 + SIGTERM), so that a scheduler or a `&&` chain sees an
unfinished stage; see docs/reliability.md. A first Ctrl-C does the same with
checkpoints/interrupted.ckpt and INTERRUPTED_EXIT_CODE (130); a second one stops at once.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from damo_lit.cli.common import CONF_DIR, check_conf_dir, compose, register_resolvers, user_errors
from damo_lit.values import is_whole

log = logging.getLogger("damo_lit.train")

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: stopped early, resumable from checkpoints/preempted.ckpt
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: stopped by Ctrl-C, resumable from checkpoints/interrupted.ckpt
RESUME_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        number = float(value.item() if hasattr(value, "item") else value)
        if math.isfinite(number):
            out[key] = round(number, 6)
    return out


def quiet_console() -> None:
    """One line per message: Hydra's handlers already show Lightning's logs (no second copy), and
    no per-file weight-loading bars from transformers for the tiny parts."""
    import transformers

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logging.getLogger().handlers:
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    logger.removeHandler(handler)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def build_stage(cfg: Any, **overrides: Any) -> Any:
    """The stage module of a composed config; `overrides` replace keys of cfg.stage (init_from=...)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from damo_lit.data.timestamps import parse_spans

    parser = functools.partial(parse_spans, fmt=cfg.timestamps)
    return instantiate(cfg.stage, model_cfg=OmegaConf.to_container(cfg.model, resolve=True),
                       timestamps=cfg.timestamps, prompt_style=cfg.data.get("prompt_style", "plain"), span_parser=parser,
                       _convert_="partial", **overrides)  # fmt: skip


def build_run(cfg: Any) -> tuple[Any, Any, Any]:
    """(stage module, datamodule, trainer) from a composed config; builds what is missing first."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from damo_lit.cli.model import ensure_model_parts

    quiet_console()
    L.seed_everything(int(cfg.seed), workers=True)
    check_trainer_counts(cfg.trainer)
    # the trainer first: a trainer key Lightning refuses (devices=abc, a GPU this machine lacks) is
    # named before a paper-size model has been loaded
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    # Lightning refuses a bar (a ModelCheckpoint) callback under enable_progress_bar=false
    # (enable_checkpointing=false): the configured one is left out then
    off = {name for name, key in (("progress_bar", "enable_progress_bar"), ("model_checkpoint", "enable_checkpointing"))
           if cfg.trainer.get(key) is False}  # fmt: skip
    callbacks = [instantiate(c) for name, c in (cfg.get("callbacks") or {}).items() if c is not None and name not in off]
    trainer = build_trainer(cfg.trainer, loggers, callbacks)
    ensure_model_parts(cfg.model)
    stage = build_stage(cfg)
    # An unset mandatory key (`???`, e.g. data.annotations) goes in as null: the datamodule then names
    # the key and what it takes, where OmegaConf would only say that a value is missing.
    unset = {key: None for key in cfg.data if OmegaConf.is_missing(cfg.data, key)}
    datamodule = instantiate(cfg.data, timestamps=cfg.timestamps, _convert_="partial", **unset)
    datamodule.set_tokenizer(stage.tokenizer)
    cache = datamodule.feature_cache_signature()
    if cache is not None:
        from damo_lit.data.features import check_tower_weights

        # a changed model key or decode setting is named as such, before the weights digest (which
        # such a change alters too) would blame the tower weights
        datamodule.check_feature_cache()
        check_tower_weights(cache[1], stage.model, cache[0])
    return stage, datamodule, trainer


def build_trainer(trainer_cfg: Any, loggers: list[Any], callbacks: list[Any]) -> Any:
    """The Lightning Trainer of `trainer_cfg`; Lightning's refusal of this machine (a GPU recipe
    without a GPU: "No supported gpu backend found!") names the trainer keys and the CPU recipes."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(trainer_cfg, logger=loggers or False, callbacks=callbacks, _convert_="partial")
    except InstantiationException as err:  # hydra's wrapper around what the Trainer raised
        cause = err.__cause__
        if not isinstance(cause, MisconfigurationException):
            raise
        if not re.search(r"gpu|cuda|accelerator|device", str(cause), re.IGNORECASE):
            raise ValueError(f"trainer: {cause}") from None  # Lightning's own words, without a wrapper
        raise ValueError(
            f"trainer.accelerator={trainer_cfg.get('accelerator')} trainer.devices={trainer_cfg.get('devices')}: "
            f"{cause} (trainer=gpu and trainer=fsdp need CUDA GPUs; on CPUs use trainer=cpu, or trainer=ddp "
            "trainer.accelerator=cpu)"
        ) from None


def check_trainer_counts(trainer_cfg: Any) -> None:
    """Trainer counts Lightning takes unchecked: accumulate_grad_batches=0 fails at the first step
    with a ZeroDivisionError, deep in the fit loop."""
    value = trainer_cfg.get("accumulate_grad_batches", 1)
    if not is_whole(value) or value < 1:
        raise ValueError(f"trainer.accumulate_grad_batches={value}: expected an integer >= 1")


def only_frozen_modules_in_eval_mode(module: Any) -> bool:
    """True when no module in eval mode holds a trainable parameter of its own."""
    return not any(
        p.requires_grad for m in module.modules() if not m.training for p in m.parameters(recurse=False)
    )


ERROR_FILE = "error.txt"  # the traceback of a run stopped by a mistake damo-train names in one line
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc")  # ckpt_path values that Lightning resolves itself


def check_resume_from(resume_from: str | None, last: Path | None = None) -> str | None:
    """The checkpoint to resume from, named before anything is built: a path that does not exist, a
    run folder, a stage weights file or a Lightning name that cannot resolve in a fresh run is the
    user's mistake (Lightning would fail at fit's start with a traceback, or start from scratch).

    `last`: this run's last checkpoint (RUN/checkpoints/last.ckpt), what `resume_from=last` means.
    `hpc` goes to Lightning: SLURM's requeue checkpoint in trainer.default_root_dir, which it finds
    (or says it lacks) itself; auto-requeue resumes it with resume_from=null."""
    from damo_lit.stages.weights import CheckpointError

    if resume_from is None or str(resume_from) == "hpc" or "://" in str(resume_from):
        return resume_from
    if str(resume_from) in LIGHTNING_CKPT_NAMES:
        return str(named_checkpoint(str(resume_from), last))
    path = Path(resume_from)
    if not path.exists():
        raise FileNotFoundError(f"resume_from={resume_from}: no such file; expected a checkpoint of an earlier run "
                                "(RUN/checkpoints/last.ckpt, or a sharded checkpoint folder under trainer=fsdp)")
    if path.is_dir():
        check_checkpoint_folder(path)
    elif path.suffix == ".safetensors":
        raise CheckpointError(f"resume_from={resume_from}: this is a stage weights file ({path.name}); resume_from "
                              f"takes a Lightning checkpoint ({path.parent / 'checkpoints' / 'last.ckpt'}); to start a "
                              f"stage from these weights use stage.init_from={path.parent}")
    return str(resume_from)


def named_checkpoint(name: str, last: Path | None) -> Path:
    """The file `resume_from=last` names: this run folder's last checkpoint, which exists only under
    a fixed hydra.run.dir (every run gets a new folder; Lightning would warn and train from step 0).
    `best` is known only to the process that saved it."""
    from damo_lit.stages.weights import CheckpointError

    if name == "last" and last is not None and last.exists():
        return last
    if name == "best":
        raise CheckpointError("resume_from=best: only the run that saved a checkpoint knows which was best; give "
                              "its path (resume_from=RUN/checkpoints/stepNNNNNN.ckpt)")
    raise CheckpointError(f"resume_from=last: this run's folder holds no last checkpoint ({last} does not exist). "
                          "Every damo-train run gets a new folder, so `last` finds one only under a fixed "
                          "hydra.run.dir (e.g. hydra.run.dir=outputs/stage3/job${oc.env:SLURM_JOB_ID}); else give "
                          "the checkpoint: resume_from=RUN/checkpoints/last.ckpt")


def check_checkpoint_folder(folder: Path) -> None:
    """A folder is a checkpoint only when sharded (FSDP: it holds DCP_METADATA); a run folder or its
    checkpoints/ folder is named with the file to give instead."""
    from damo_lit.cli.checkpoint import DCP_METADATA
    from damo_lit.stages.weights import CheckpointError

    if (folder / DCP_METADATA).is_file():
        return
    found = next((c for c in (folder / "checkpoints" / "last.ckpt", folder / "last.ckpt") if c.exists()), None)
    instead = f"resume_from={found}" if found else "RUN/checkpoints/last.ckpt (or preempted.ckpt, interrupted.ckpt, nonfinite.ckpt)"
    raise CheckpointError(f"resume_from={folder} is a folder, not a checkpoint; resume_from takes a Lightning "
                          f"checkpoint file: {instead}")


# Keys whose default is a number but which also take words Lightning reads (devices=auto).
OVERRIDE_TYPE_EXEMPT = ("trainer.devices",)


def check_override_types(cfg: Any, overrides: Sequence[str]) -> None:
    """Refuse a `key=value` override whose value is not of the kind the default it replaces is (a
    word for a number or a boolean: `trainer.max_steps=1O`, `seed=abc`, `test_after_fit=no`): it
    would fail deep inside Lightning or torch without naming the key, or be read as true. The
    defaults are the config composed with the same config groups (experiment included) and none
    of the single keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    keys = [o for o in parsed if not (o.is_add() or o.is_delete() or o.is_force_add())]
    groups = [o.input_line for o in parsed if (CONF_DIR / o.key_or_group.split("@")[0]).is_dir()]
    defaults = compose("train", groups)
    kinds = {bool: "true or false", int: "an integer", float: "a number"}
    for override in keys:
        key = override.key_or_group
        if key in OVERRIDE_TYPE_EXEMPT or (CONF_DIR / key).is_dir():
            continue
        default = OmegaConf.select(defaults, key, default=None, throw_on_resolution_failure=False)
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        kind = type(default) if type(default) in kinds else None
        if kind is None or value is None:
            continue
        fits = (isinstance(value, bool) if kind is bool else
                isinstance(value, int) and not isinstance(value, bool) if kind is int else
                isinstance(value, (int, float)) and not isinstance(value, bool))  # fmt: skip
        if not fits:
            raise ValueError(f"{override.input_line}: expected {kinds[kind]} (the default is {default})")


def check_run_folder(out_dir: Path, stage_name: str) -> None:
    """Refuse a run folder that holds another stage's finished run: its weights, stage.json and
    metrics would be replaced while its adapter/ and checkpoints stayed beside them, and
    `resume_from=last` would find its last.ckpt. (The same stage again, as `make demo` reruns, is
    a new run of that stage: its files replace the old ones.)"""
    from damo_lit.stages.weights import META_FILE, read_meta_file

    if not (out_dir / META_FILE).is_file():
        return
    other = read_meta_file(out_dir / META_FILE).get("stage")
    if other != stage_name:
        raise ValueError(f"hydra.run.dir={out_dir} holds a finished {other} run ({META_FILE}); a {stage_name} run "
                         "there would mix their files: give this run another folder")


def last_checkpoint(cfg: Any, out_dir: Path) -> Path:
    """Where this run's ModelCheckpoint keeps last.ckpt (RUN/checkpoints unless configured otherwise)."""
    from omegaconf import OmegaConf

    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    return Path(dirpath or out_dir / "checkpoints") / "last.ckpt"


def check_resume_checkpoint(resume_from: str | None, cfg: Any) -> None:
    """Refuse, before anything is built, a checkpoint this run cannot resume: another stage's (the
    optimizer groups would not fit: torch says only that a group's size differs) or one whose
    training loader state comes from a streaming data source when this run's data is not one
    (Lightning: "The CombinedLoader has 0 stateful loaders"). A sharded (FSDP) folder is not read
    here: its restore checks it."""
    from damo_lit.cli.checkpoint import load_weights_only, stage_meta_of
    from damo_lit.stages.weights import CheckpointError

    if resume_from is None or str(resume_from) in LIGHTNING_CKPT_NAMES or "://" in str(resume_from):
        return
    path = Path(resume_from)
    if not path.is_file():
        return
    where = f"resume_from={resume_from}"
    checkpoint = load_weights_only(path, where, mmap=True)  # tensors stay on disk until read
    saved = stage_meta_of(checkpoint.get("damo") if isinstance(checkpoint, dict) else None, where)["stage"]
    if saved != cfg.stage.name:
        config = stage_config_name(saved)
        fix = f"add stage={config}" if config else f"resume it with a stage config whose name is {saved}"
        raise CheckpointError(f"{where}: a {saved} checkpoint, and this run is {cfg.stage.name}: {fix}")
    if loader_states(checkpoint) and not streams_training_data(cfg.data):
        raise CheckpointError(f"{where}: its training loader state comes from a streaming data source "
                              f"(data=streaming), and this run's data (data={cfg.data.get('name')}) is not one: "
                              "resume with data=streaming and the data.streaming_dir it was saved with")


def stage_config_name(stage_name: str) -> str | None:
    """The conf/stage/ option whose stage.name is `stage_name` (stage1 -> stage1_align)."""
    from omegaconf import OmegaConf

    for path in sorted((CONF_DIR / "stage").glob("*.yaml")):
        if OmegaConf.select(OmegaConf.load(path), "stage.name", default=None) == stage_name:
            return path.stem
    return None


def loader_states(checkpoint: Any) -> int:
    """How many stateful training loaders (litdata's StreamingDataLoader) a checkpoint restores."""
    loops = checkpoint.get("loops") if isinstance(checkpoint, dict) else None
    fit_loop = (loops or {}).get("fit_loop") or {}
    return len((fit_loop.get("state_dict") or {}).get("combined_loader") or [])


def streams_training_data(data_cfg: Any) -> bool:
    """True when the data config trains from a streaming datamodule (data=streaming)."""
    from hydra.utils import get_class

    from damo_lit.data.streaming import StreamingDataModule

    return issubclass(get_class(data_cfg._target_), StreamingDataModule)


class WandbUnreachableError(ValueError):
    """W&B, online, could not start its run: a user's setting to change, not a bug."""

    def __init__(self, err: BaseException) -> None:
        from wandb.errors import AuthenticationError

        what = "did not accept the API key" if isinstance(err, AuthenticationError) else "could not reach its server"
        lines = [line.strip() for line in str(err).strip().splitlines()]  # wandb's own hint (init_timeout) last
        reason = " ".join(itertools.takewhile(lambda line: not line.startswith("Consider"), lines))
        reason = reason or type(err).__name__
        super().__init__(f"W&B {what} ({reason}): run offline with logger.wandb.mode=offline or WANDB_MODE=offline "
                         "(upload later with `wandb sync RUN/wandb`), or give a slow connection more time with "
                         "WANDB_INIT_TIMEOUT=SECONDS")


def fit(trainer: Any, stage: Any, datamodule: Any, resume_from: str | None) -> None:
    """trainer.fit, resuming from `resume_from` with weights_only loading; a SIGTERM ends the
    process with PREEMPTED_EXIT_CODE once the interrupt checkpoint is written."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from wandb.errors import CommError

    from damo_lit.cli.checkpoint import DCP_METADATA, UnsafeCheckpointError
    from damo_lit.stages.callbacks import interrupt_checkpoint, interrupted_by_user
    from damo_lit.stages.fsdp import uses_fsdp

    # A sharded (FSDP) folder: the FSDP strategy checks it for pickled objects before loading it.
    if resume_from is not None and (Path(resume_from) / DCP_METADATA).is_file() and not uses_fsdp(trainer):
        raise ValueError(f"resume_from={resume_from} is a sharded checkpoint folder, which only FSDP reads: "
                         "resume it with trainer=fsdp (and the devices it was saved with)")
    try:
        with warnings.catch_warnings():
            # Lightning warns that a plain DataLoader cannot resume mid-epoch; the datamodule's
            # EpochSampler and saved training position do exactly that (docs/reliability.md).
            warnings.filterwarnings("ignore", message=RESUME_WARNING)
            if only_frozen_modules_in_eval_mode(stage):
                # the frozen towers stay in eval mode on purpose (DaMO.train); the warning is
                # kept for a module that would train in eval mode by mistake
                warnings.filterwarnings("ignore", message=EVAL_MODE_WARNING)
            trainer.fit(stage, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"resume_from={resume_from}", err) from None
    except SIGTERMException:
        saved = interrupt_checkpoint(trainer)
        where = f"resume with resume_from={saved}" if saved else "no checkpoint saved (callbacks.interrupt_checkpoint is off)"
        by_user = interrupted_by_user(trainer)
        log.warning("stopped by %s at step %d: %s", "Ctrl-C" if by_user else "SIGTERM", trainer.global_step, where)
        raise SystemExit(INTERRUPTED_EXIT_CODE if by_user else PREEMPTED_EXIT_CODE) from None
    except CommError as err:  # an online W&B run starts at fit's set-up (wandb.init, after WANDB_INIT_TIMEOUT)
        raise WandbUnreachableError(err) from err


def retire_requeue_checkpoints(trainer: Any) -> list[Path]:
    """After a finished fit on SLURM, rename Lightning's requeue checkpoints (default_root_dir/
    hpc_ckpt_N.ckpt) to requeue_N.ckpt. Lightning loads the newest hpc_ckpt into every later
    trainer.test or validate of the job (an older state than the final weights) when it finds one."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect() or not trainer.state.finished:
        return []
    renamed: list[Path] = []
    if trainer.is_global_zero:
        for path in sorted(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
            target = path.with_name(path.name.replace("hpc_ckpt_", "requeue_", 1))
            path.rename(target)
            renamed.append(target)
        if renamed:
            log.info("fit finished: renamed %d SLURM requeue checkpoint(s) to requeue_N.ckpt in %s",
                     len(renamed), trainer.default_root_dir)
    trainer.strategy.barrier("retire_requeue_checkpoints")
    return renamed


def stage_for_test_after_fsdp(cfg: Any, trainer: Any, out_dir: Path) -> Any:
    """A fresh stage from the weights fit just wrote, for trainer.test under FSDP.

    After fit the module holds FSDP units of its own, so Lightning's next setup takes it for a
    hand-wrapped model and leaves out the root unit, whose parameters stay flat shards (a test
    step then fails in the first convolution). A fresh build is wrapped whole again, and it tests
    exactly what the next stage and damo-eval will load."""
    import gc

    from damo_lit.stages.weights import WEIGHTS_FILE

    trainer.strategy.barrier("stage weights written")  # rank 0 writes them in StageArtifacts.on_fit_end
    if not (out_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{out_dir / WEIGHTS_FILE}: testing after FSDP needs the stage weights "
                                "(callbacks.stage_artifacts must stay on)")  # fmt: skip
    gc.collect()
    log.info("FSDP: testing a fresh build from %s", out_dir / WEIGHTS_FILE)
    return build_stage(cfg, init_from=str(out_dir))


def run(cfg: Any) -> dict[str, float]:
    """Fit, then test, one stage; write metrics.json into the run folder and return the metrics."""
    from hydra.core.hydra_config import HydraConfig

    from damo_lit.stages.fsdp import uses_fsdp

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    check_override_types(cfg, list(HydraConfig.get().overrides.task))
    check_run_folder(out_dir, str(cfg.stage.name))
    resume_from = check_resume_from(cfg.get("resume_from"), last_checkpoint(cfg, out_dir))
    check_resume_checkpoint(resume_from, cfg)
    testing = cfg.get("test_after_fit", True)
    if not isinstance(testing, bool):  # bool("no") would be true
        raise ValueError(f"test_after_fit={testing}: expected true or false")
    stage, datamodule, trainer = build_run(cfg)
    if testing:
        datamodule.fit_also_sets_up = ("test",)
    if getattr(stage, "init_report", None) is not None:
        report = stage.init_report
        log.info("started from %s: %d tensors loaded, %d not in this model",
                 report.path, len(report.loaded), len(report.unexpected))
    elif stage.stage_name != "stage1" and resume_from is None:
        log.warning("%s starts without stage.init_from: what earlier stages train (the projector, the "
                    "Fuseformer, ...) starts untrained here (make demo and the experiments hand each stage the "
                    "previous one's run folder)", stage.stage_name)
    fit(trainer, stage, datamodule, resume_from)
    retire_requeue_checkpoints(trainer)
    metrics = _plain_metrics(dict(trainer.callback_metrics))
    if testing:
        write_metrics(trainer, out_dir, metrics)  # fit's own figures survive a failing test
        if uses_fsdp(trainer):
            stage = stage_for_test_after_fsdp(cfg, trainer, out_dir)
        if hasattr(stage, "span_prior"):
            prior = datamodule.train_span_prior()
            stage.span_prior = (prior.start, prior.end) if prior is not None else None
            best = prior is not None and prior.best_start is not None
            stage.best_span_prior = (prior.best_start, prior.best_end) if best else None
        trainer.test(stage, datamodule=datamodule)
        metrics.update(_plain_metrics(dict(trainer.callback_metrics)))
    write_metrics(trainer, out_dir, metrics)
    log.info("metrics: %s", out_dir / "metrics.json")
    return metrics


def write_metrics(trainer: Any, out_dir: Path, metrics: dict[str, float]) -> None:
    """metrics.json in the run folder, from rank 0 only."""
    if trainer.is_global_zero:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))


@contextlib.contextmanager
def train_errors() -> Iterator[None]:
    """user_errors for damo-train: a mistake the user can fix (ValueError covers the data's and the
    config's own errors, as damo-predict and damo-data catch them) and a run stopped by non-finite
    losses (its checkpoint is saved; the message says what to change) end in `damo-train: message`. In
    a multirun the job fails with that message instead, so that the sweep runs its other jobs and
    Hydra prints the message, not a traceback, at the end."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import CompactHydraException
    from hydra.types import RunMode

    from damo_lit.stages.base import NonFiniteLossError

    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    kept = run_dir / ERROR_FILE if run_dir else None
    try:
        # ValueError is broad (a bug may raise one too): the traceback is kept in the run folder
        with user_errors("damo-train", ValueError, NonFiniteLossError, traceback_to=kept):
            yield
    except SystemExit as stop:
        if isinstance(stop.code, str) and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise CompactHydraException(stop.code) from None
        raise


def main() -> None:
    import hydra

    register_resolvers()
    check_conf_dir()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
    def _main(cfg: Any) -> float | None:
        with train_errors():
            metrics = run(cfg)
        # A sweeper (hparams_search) optimises the value returned here.
        target = cfg.get("optimized_metric")
        return metrics.get(target) if target else None

    _main()


if __name__ == "__main__":
    sys.exit(main())
