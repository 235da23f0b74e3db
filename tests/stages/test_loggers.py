"""The W&B logger factory: files inside the run folder, offline without credentials, quiet."""

from __future__ import annotations

from pathlib import Path

import pytest

from damo_lit.cli.loggers import wandb_logger


@pytest.fixture
def clean_wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR",
                "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc: no credentials


def test_wandb_logger_keeps_its_files_in_the_run_folder_and_goes_offline(clean_wandb_env, tmp_path: Path) -> None:
    import os

    run = tmp_path / "run"
    logger = wandb_logger(project="p", save_dir=str(run), name="stage3", log_predictions=3)
    assert os.environ["WANDB_MODE"] == "offline"
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_CONFIG_DIR", "wandb-config")):
        assert Path(os.environ[var]) == (run / sub if sub else run).resolve()
    assert logger.damo_log_predictions == 3
    # Lightning's anonymous=None made wandb warn "The anonymous setting has no effect" in every stage
    assert "anonymous" not in logger._wandb_init


def test_wandb_logger_rejects_an_unknown_mode(clean_wandb_env, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="logger.wandb.mode must be auto, online, offline or disabled, got 'offlne'"):
        wandb_logger(project="p", save_dir=str(tmp_path), mode="offlne")


@pytest.mark.parametrize("credentials", ["api_key", "api.wandb.ai", "api.forge.coreweave.com"])
def test_wandb_logger_goes_online_with_credentials(clean_wandb_env, credentials: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A key (WANDB_API_KEY or `wandb login`'s ~/.netrc entry, for either host wandb has used as
    its default) makes mode=auto online; nothing is sent here: the run starts only when something
    is logged."""
    import os

    if credentials == "api_key":
        monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    else:
        home = tmp_path / "home"
        home.mkdir(parents=True, exist_ok=True)
        (home / ".netrc").write_text(f"machine {credentials}\n  login user\n  password " + "0" * 40 + "\n")
        (home / ".netrc").chmod(0o600)
    logger = wandb_logger(project="p", save_dir=str(tmp_path / "run"))
    assert logger._wandb_init["mode"] == "online" and os.environ["WANDB_MODE"] == "online"


def test_a_self_hosted_login_is_kept(clean_wandb_env, tmp_path: Path) -> None:
    """`wandb login --host https://wandb.example.com` leaves base_url in ~/.config/wandb/settings and
    the key in ~/.netrc under that host: the run goes online to that server, though its own config
    folder (inside the run folder) lacks the setting."""
    import os

    home = tmp_path / "home"
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".config" / "wandb" / "settings").write_text("[default]\nbase_url = https://wandb.example.com\n")
    (home / ".netrc").write_text("machine wandb.example.com\n  login user\n  password " + "0" * 40 + "\n")
    (home / ".netrc").chmod(0o600)
    logger = wandb_logger(project="p", save_dir=str(tmp_path / "run"))
    assert logger._wandb_init["mode"] == "online"
    assert os.environ["WANDB_BASE_URL"] == "https://wandb.example.com"


def test_wandb_mode_set_by_the_user_wins(clean_wandb_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_logger(project="p", save_dir=str(tmp_path / "a"))._wandb_init["mode"] == "offline"
    assert wandb_logger(project="p", save_dir=str(tmp_path / "b"), mode="disabled")._wandb_init["mode"] == "disabled"
