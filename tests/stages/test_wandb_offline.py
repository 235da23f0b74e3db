"""W&B online (a key is set) with no server to reach: damo-train ends in one line that says how to
run offline, not in wandb's CommError under a Hydra traceback. No network is used: the server is
a closed port on this machine, and wandb.init gives up after WANDB_INIT_TIMEOUT."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def closed_port() -> int:
    """A local TCP port that nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_damo_train_names_an_unreachable_wandb_server_in_one_line(tiny_overrides: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # conftest's WANDB_MODE=offline too
    env.update({"WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}",
                "WANDB_INIT_TIMEOUT": "5", "WANDB_SILENT": "true", "HOME": str(tmp_path / "home"),
                "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"})  # fmt: skip
    out = tmp_path / "run"
    command = [sys.executable, "-m", "damo_lit.cli.train", f"hydra.run.dir={out}", "stage=stage3_temporal",
               *tiny_overrides, "logger=wandb", "trainer.max_steps=1", "test_after_fit=false"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("damo-train:")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("damo-train: W&B could not reach its server (") and "127.0.0.1" in lines[0]
    assert lines[0].endswith("): run offline with logger.wandb.mode=offline or WANDB_MODE=offline (upload later "
                             "with `wandb sync RUN/wandb`), or give a slow connection more time with "
                             "WANDB_INIT_TIMEOUT=SECONDS")
    assert "Traceback" not in done.stderr and "CommError" in (out / "error.txt").read_text()
    assert not (out / "weights.safetensors").exists()
