"""Helpers shared by the scale tests."""

from __future__ import annotations

import pytest


def cache_error(*words: str) -> str:
    """The one-line message damo-cache exits with for these command words."""
    from damo_lit.cli.cache import main as damo_cache

    with pytest.raises(SystemExit) as info:
        damo_cache(list(words))
    assert isinstance(info.value.code, str), info.value.code
    return info.value.code
