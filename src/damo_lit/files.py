"""One wording, everywhere, for an input path that is not a file to read."""

from __future__ import annotations

from pathlib import Path


def not_a_file(path: str | Path) -> str | None:
    """Why `path` cannot be read as a file ("no such file", "is a folder; expected a file"), or
    None when it is one: a folder given where a file goes is named as a folder, not as missing."""
    path = Path(path)
    if path.is_dir():
        return "is a folder; expected a file"
    if not path.is_file():
        return "no such file"
    return None
