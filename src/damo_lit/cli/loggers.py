"""Logger factories: W&B offline by default, online when the user has credentials."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any


def user_base_url() -> str | None:
    """The server `wandb login --host URL` (or `wandb init`) chose for this user: `base_url` in
    wandb's settings files, the global one in $WANDB_CONFIG_DIR or ~/.config/wandb, the local
    ./wandb/settings over it. wandb_logger points WANDB_CONFIG_DIR into the run folder, where
    wandb would no longer find it, so it is read first and handed on as WANDB_BASE_URL."""
    import configparser

    found = None
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    for settings in (config_dir / "settings", Path("wandb") / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(settings)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue  # wandb treats an unreadable settings file as empty too
        found = parser.get("default", "base_url", fallback=None) or found
    return found


def wandb_server() -> str | None:
    """The server a W&B run would talk to, when it is not wandb's default: WANDB_BASE_URL, else
    the user's settings."""
    return os.environ.get("WANDB_BASE_URL") or user_base_url()


def wandb_has_credentials() -> bool:
    """True when WANDB_API_KEY is set or `wandb login` left a key in the netrc file for the server
    wandb will use (WANDB_BASE_URL or the user's settings, else wandb's default: api.wandb.ai for
    older wandb versions, CoreWeave's forge host for 0.31, which also takes an api.wandb.ai entry).
    wandb's own reader knows its hosts and the NETRC variable; the plain netrc check serves a
    wandb without it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    server = wandb_server()
    try:
        from wandb.sdk.lib import urls
        from wandb.sdk.lib.wbauth import read_netrc_auth
    except ImportError:
        return _netrc_has_key(server or "https://api.wandb.ai")
    try:
        return read_netrc_auth(host=server or urls.DEFAULT_BASE_URL) is not None
    except Exception:  # a malformed entry or URL: wandb says what is wrong when the run starts online
        return False


def _netrc_has_key(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        path = os.environ.get("NETRC")
        return netrc.netrc(os.path.expanduser(path) if path else None).authenticators(urlsplit(url).hostname or "") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(project: str, save_dir: str, name: str | None = None, entity: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, mode: str = "auto",
                 log_predictions: int = 16, log_timelines: int = 4, **kwargs: Any):
    """A WandbLogger whose files all stay inside the run folder.

    mode: auto (online with credentials, else offline), online, offline or disabled.
    log_predictions / log_timelines: how many validation examples the stages put in the W&B
    predictions table and draw as timeline pictures (read by the stages from the logger).
    """
    from lightning.pytorch.loggers import WandbLogger

    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}")
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_credentials() else "offline")
    server = wandb_server()
    if server:  # the user's own server (wandb login --host), which the run folder's config folder lacks
        os.environ["WANDB_BASE_URL"] = server
    root = Path(save_dir).resolve()
    # Keep every W&B file inside the run folder: nothing leaks into $HOME.
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "wandb-cache"),
                     ("WANDB_DATA_DIR", "wandb-data"), ("WANDB_CONFIG_DIR", "wandb-config")):
        path = root / sub if sub else root
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)
    os.environ["WANDB_MODE"] = mode
    logger = WandbLogger(project=project, save_dir=str(root), name=name, entity=entity, group=group,
                         tags=list(tags or []), mode=mode, **kwargs)
    if logger._wandb_init.get("anonymous") is None:
        # Lightning 2.6 passes anonymous=None, which wandb 0.2x answers with a deprecation
        # warning in every stage's log; left out, wandb's default is the same
        logger._wandb_init.pop("anonymous", None)
    logger.damo_log_predictions = int(log_predictions)
    logger.damo_log_timelines = int(log_timelines)
    return logger
