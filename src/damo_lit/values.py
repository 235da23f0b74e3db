"""What counts as a number where a file or a config gives one: JSON's and YAML's `true` is a bool,
which Python would take for 1, and "10" is text."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_number(value: Any) -> bool:
    """A real number (int or float, numpy's too), not a boolean or a string."""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def is_whole(value: Any) -> bool:
    """A whole number given as one (int, numpy's too): not a boolean, a float or a string."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))
