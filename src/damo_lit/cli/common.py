"""What every command-line entry point shares: where the configs live, and Hydra composition."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

from damo_lit.values import is_whole

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROJECT_ROOT = Path(os.environ.get("DAMO_ROOT", PACKAGE_DIR.parents[1])).resolve()
CONF_DIR = PROJECT_ROOT / "conf"


def quiet_upstream_warnings() -> None:
    """Lightning 2.6's loops build torch's deprecated LeafSpec: a FutureWarning in every stage's
    log that a user can do nothing about."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


class _DropAdvertisement(logging.Filter):
    """Lightning 2.6 logs a tip to install its hosted logger at every Trainer's start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


quiet_upstream_warnings()
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertisement())
# litdata logs at INFO, for every dataset it writes or opens, the disk its download cache may take
# (damo-lit's streams are local: nothing is downloaded). Its warnings still show.
logging.getLogger("litdata.utilities.format").setLevel(logging.WARNING)


@contextlib.contextmanager
def quiet_inference_logs() -> Iterator[None]:
    """For the commands that print one JSON result (damo-eval, damo-predict): transformers' "Loading
    weights" bar for every part of the model and Lightning's hardware lines ("GPU available: ...")
    would bury it. Training keeps them, and so does a caller in the same process afterwards;
    warnings and errors still show."""
    import lightning  # noqa: F401  (importing it sets its loggers to INFO: after that, not before)
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def slurm_job_suffix() -> str:
    """`_job<SLURM_JOB_ID>[_<SLURM_ARRAY_TASK_ID>]` inside a SLURM job, else "": the jobs of an
    array start in the same second, and a run folder named by the time alone would be shared."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return ""
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"_job{job}" + (f"_{task}" if task else "")


def split_model_overrides(words: Sequence[str], prog: str) -> tuple[list[str], list[str]]:
    """(model.* overrides without the `model.` prefix, the other words) of an inference command
    line: the model config comes from the checkpoint, and `model.KEY=VALUE` changes a key of it
    (e.g. where the LM's weights are on this machine). `model=NAME` would replace it whole, which
    the checkpoint's weights would not fit: refused."""
    model, rest = [], []
    for word in words:
        bare, key = word.lstrip("+"), override_key(word)
        if key == "model":
            raise ValueError(f"{prog}: {word}: the model config is the checkpoint's; change single keys of it "
                             "with model.KEY=VALUE (e.g. model.llm.name_or_path=/local/copy)")
        if not key.startswith("model."):
            rest.append(word)
        elif bare.startswith("~"):
            raise ValueError(f"{prog}: {word}: a key of the checkpoint's model config cannot be removed; "
                             "set it with model.KEY=VALUE")
        else:
            model.append(bare[len("model."):])
    return model, rest


# The groups conf/train.yaml composes, as damo-train --help lists them (Hydra's own list also shows
# the other commands' groups, such as damo-augment's backend/, and files that are only included).
TRAIN_GROUPS = ("stage", "model", "data", "trainer", "logger", "callbacks", "experiment", "hparams_search", "paths")
INCLUDED_ONLY = {"data": {"common"}}  # bases that the group's options include, never picked alone


def train_config_groups() -> str:
    """`group: option, option, ...` per line: what damo-train's group=option words can pick."""
    lines = []
    for group in TRAIN_GROUPS:
        names = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if p.stem not in INCLUDED_ONLY.get(group, ()))
        lines.append(f"{group}: {', '.join(names)}")
    return "\n".join(lines)


def register_resolvers() -> None:
    """OmegaConf resolvers used by conf/: ${project_root:} is the folder that holds conf/;
    ${slurm_job_suffix:} names the SLURM job in run folders (empty outside SLURM);
    ${train_config_groups:} lists damo-train's groups in its --help."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("slurm_job_suffix"):
        OmegaConf.register_new_resolver("slurm_job_suffix", slurm_job_suffix)
    if not OmegaConf.has_resolver("train_config_groups"):
        OmegaConf.register_new_resolver("train_config_groups", train_config_groups)


def check_conf_dir() -> None:
    if not (CONF_DIR / "paths").is_dir():
        raise SystemExit(
            f"damo-lit: config folder {CONF_DIR} not found. Install the project editable from its "
            "checkout (`make venv` does) or set DAMO_ROOT to the folder that holds conf/."
        )


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/<config_name>.yaml with Hydra overrides: in tests and tools, and inside a
    running @hydra.main app (damo-train), whose Hydra already knows conf/."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    check_conf_dir()
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


register_resolvers()


def compose_run(config_name: str, overrides: Sequence[str], output_dir: str | os.PathLike) -> DictConfig:
    """Compose a config as @hydra.main would for a run in `output_dir`, and make it current.

    `${hydra:runtime.output_dir}` resolves to `output_dir`, so in-process runs (tests, the demo,
    the experiments) write where they are told, exactly like `damo-train hydra.run.dir=...`.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register_resolvers()
    check_conf_dir()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(output_dir).resolve())
        cfg.hydra.run.dir = str(Path(output_dir).resolve())
    HydraConfig.instance().set_config(cfg)
    return cfg


# OmegaConf appends where in the tree an error happened; the message's first line already names the key.
_OMEGACONF_DETAIL = ("full_key:", "object_type=", "reference_type=")


def user_error_message(err: BaseException) -> str:
    """The text of a mistake the user can fix, without OmegaConf's internal detail lines and
    Hydra's config search path."""
    text = str(err).split("\nConfig search path:")[0]
    lines = [line for line in text.splitlines() if not line.strip().startswith(_OMEGACONF_DETAIL)]
    return "\n".join(lines).strip() or type(err).__name__


@contextlib.contextmanager
def user_errors(prog: str, *more: type[BaseException], traceback_to: Path | None = None) -> Iterator[None]:
    """Turn what a user can fix (a bad or missing override, a config value the model rejects, a
    path that does not exist, a checkpoint that cannot be used (refused as unsafe, unreadable, of
    weights that do not fit), and the command's own `more` kinds)
    into `prog: message` on stderr and exit status 1, not a traceback. DAMO_TRACEBACK=1 shows the
    traceback instead. With `traceback_to` (a run folder's file) the traceback is kept there, so
    that a long job stopped by a broad kind (damo-train's ValueError) can still be traced."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from damo_lit.cli.checkpoint import CheckpointError
    from damo_lit.models.config import ConfigError

    try:
        yield
    except (HydraException, OmegaConfBaseException, ConfigError, FileNotFoundError, CheckpointError, *more) as err:
        if os.environ.get("DAMO_TRACEBACK"):
            raise
        where = "(DAMO_TRACEBACK=1 shows where)"
        if traceback_to is not None:
            try:
                traceback_to.parent.mkdir(parents=True, exist_ok=True)
                traceback_to.write_text("".join(traceback.format_exception(err)))
                where = f"(the traceback: {traceback_to}; DAMO_TRACEBACK=1 shows it here)"
            except OSError:
                pass
        raise SystemExit(f"{prog}: {user_error_message(err)}\n{where}") from None


def integer_problem(cfg: Any, key: str, least: int) -> str | None:
    """`key=value: expected an integer >= least` when a command's own count key is no such integer
    (a bool, a word, a fraction), else None."""
    value = cfg.get(key)
    if not is_whole(value) or value < least:
        return f"{key}={value}: expected an integer >= {least}"
    return None


@contextlib.contextmanager
def stopped_by_ctrl_c(prog: str, what_stays: str) -> Iterator[None]:
    """Ctrl-C: `prog: interrupted; <what_stays>` on stderr (what was kept, how to go on) and exit
    status 130, the shell's for SIGINT, instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C); {what_stays}", file=sys.stderr)
        raise SystemExit(130) from None


def unwritable_reason(path: Path, err: OSError) -> str:
    """Why `path` (a folder to make, or the folder of a file to write) could not be made or
    written, in words: a file in the way is named, else the system's reason."""
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    return f"{blocking} is a file, not a folder" if blocking is not None else (err.strerror or str(err))


def override_key(word: str) -> str:
    """The config key of a Hydra override word (`+a.b=1` -> `a.b`)."""
    return word.lstrip("+~").split("=", 1)[0]


def overrides_under(words: Sequence[str], groups: Sequence[str]) -> list[str]:
    """The override words whose top-level key is one of `groups` (what another config understands)."""
    return [w for w in words if override_key(w).split(".", 1)[0] in groups]


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table; `|` inside a cell is escaped."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)
