"""`make stage3 a.b=1 c=2` hands exactly those Hydra overrides on, in the order typed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest


def _make(repo_root, *words: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if not (repo_root / ".venv" / ".installed").is_file():
        pytest.skip(".venv/.installed is absent: run `make venv` first")
    env = {**os.environ, "DAMO_DRY_RUN": "1"}
    # -o .venv/.installed: never (re)install the virtualenv from a test
    proc = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", *words], cwd=repo_root, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_stage3_forwards_overrides_in_order(repo_root):
    argv = _make(repo_root, "stage3", "a.b=1", "c=2", "d=x y")
    assert argv[0].endswith("damo-train")
    assert argv[1:] == ["stage=stage3_temporal", "a.b=1", "c=2", "d=x y"]


def test_backslashes_reach_hydra_as_typed(repo_root):
    """make doubles a backslash in MAKEOVERRIDES: `a\\,b` (Hydra's escaped comma) must go on as it was
    typed, as damo-train given the same word directly gets it."""
    typed = ["logger.wandb.group=a\\,b", "paths.x=C:\\data", "tag=a\\ b", "y=x\\\\y"]
    assert _make(repo_root, "stage3", *typed)[1:] == ["stage=stage3_temporal", *typed]


@pytest.mark.parametrize(
    ("target", "command"),
    [
        ("demo", ["-m", "damo_lit.cli.demo"]),
        ("eval", ["damo-eval"]),
        ("predict", ["damo-predict"]),
        ("bench", ["experiments/throughput/run.py"]),
        ("exp-fusion-depth", ["experiments/fusion_depth/run.py"]),
        ("exp-ablations", ["experiments/ablations/run.py"]),
        ("exp-data-efficiency", ["experiments/data_efficiency/run.py"]),
    ],
)
def test_every_forwarding_target_runs_its_program_with_the_overrides(repo_root, target: str, command: list[str]):
    """Each target that forwards key=value words runs the program it names (which exists), overrides last."""
    argv = _make(repo_root, target, "exp.jobs=2", "model.fuseformer.depth=1,2")
    program, args = argv[: len(argv) - 2], argv[len(argv) - 2 :]
    assert args == ["exp.jobs=2", "model.fuseformer.depth=1,2"]
    assert program[-len(command) :] == command or program[-1].endswith("/" + command[-1]), program
    if command[-1].endswith(".py"):
        assert (repo_root / command[-1]).is_file()
    else:
        assert os.access(program[0], os.X_OK), program


def test_make_variables_and_args_are_not_mixed_up(repo_root):
    argv = _make(repo_root, "stage1", "z=1", "PYTEST_ARGS=-x", "ARGS=~logger +k='v w'", "y.q=$HOME")
    assert argv[1:] == ["stage=stage1_align", "z=1", "y.q=$HOME", "~logger", "+k=v w"]


def test_torch_index_reaches_the_torch_install_only(repo_root):
    """TORCH_INDEX picks torch's index (a CPU build where pip reaches PyPI); nothing else changes."""
    def install_lines(*words: str) -> list[str]:
        done = subprocess.run(["make", "-n", "-B", ".venv/.installed", *words], cwd=repo_root, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [line.rstrip() for line in done.stdout.splitlines() if "pip install" in line]

    url = "https://download.pytorch.org/whl/cpu"
    plain, chosen = install_lines(), install_lines(f"TORCH_INDEX={url}")
    assert any(line.endswith("pip install -q torch==2.13.0") for line in plain)
    assert any(line.endswith(f"pip install -q torch==2.13.0 --index-url {url}") for line in chosen)
    assert [line for line in chosen if "torch==" not in line] == [line for line in plain if "torch==" not in line]


def test_torch_is_installed_before_the_project(repo_root):
    """torch==2.13.0 (CPU) goes in first, so that no dependency of the project can pull another build."""
    done = subprocess.run(["make", "-n", "-B", ".venv/.installed"], cwd=repo_root, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    installs = [line for line in done.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert "torch==2.13.0" in installs[0] and "-e '.[test]'" in installs[1], installs
    assert "--no-deps litdata" in installs[2], "litdata without its torchvision dependency"


def test_make_help_lists_every_target_with_one_line(repo_root):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-s", "help"], cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0]: line.split(None, 1)[1] for line in done.stdout.splitlines() if line.strip()}
    for target in ("demo", "test", "test-slow", "stage1", "stage2", "stage3", "stage4", "eval", "predict", "bench",
                   "exp-fusion-depth", "exp-ablations", "exp-data-efficiency"):
        assert len(listed.get(target, "")) > 10, f"make help: no line for {target}: {done.stdout}"
