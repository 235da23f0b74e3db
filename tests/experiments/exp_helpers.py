"""Loading the runners in tests: experiments/<name>/run.py as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `from experiments import common`, as the runners do


def load_runner(name: str) -> ModuleType:
    """experiments/<name>/run.py as a module (its main(argv) returns the exit code)."""
    path = REPO_ROOT / "experiments" / name / "run.py"
    spec = importlib.util.spec_from_file_location(f"experiment_runner_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module
