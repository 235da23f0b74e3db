"""The environment DEVELOPERS.md describes: no torchvision anywhere, litdata pinned alike in the
Makefile and in the document that explains why it is installed apart."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"pip install (?:-q )?--no-deps litdata==([0-9.]+)")


def test_torchvision_is_not_installed() -> None:
    assert importlib.util.find_spec("torchvision") is None, (
        "torchvision is importable: something pulled it in (it drags a CUDA torch); see DEVELOPERS.md"
    )


def test_litdata_pin_is_the_same_in_the_makefile_and_developers_md() -> None:
    makefile = PIN.findall((ROOT / "Makefile").read_text())
    developers = PIN.findall((ROOT / "DEVELOPERS.md").read_text())
    assert len(makefile) == 1 and developers, (makefile, developers)
    assert set(developers) == set(makefile), f"Makefile pins litdata {makefile[0]}, DEVELOPERS.md says {developers}"


def test_no_dependency_names_torchvision() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.findall(r'^\s*"([A-Za-z0-9_.\-]+)', text, flags=re.M)
    assert deps and not [d for d in deps if d.lower().startswith("torchvision")]
