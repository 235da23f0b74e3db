"""What changed between two nested configs, as the lines a message lists."""

from __future__ import annotations

from typing import Any


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """`key (was OLD, now NEW)` for every leaf that differs, keys dotted from `prefix`, sorted."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')} (was {old!r}, now {new!r})"]
