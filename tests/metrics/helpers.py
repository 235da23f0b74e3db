"""Shared by the metrics tests: walking nested result dicts leaf by leaf."""

from __future__ import annotations

import math
from typing import Any, Iterator


def leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, value) leaf of a nested dict."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, path + (key,))
    else:
        yield path, tree


def assert_same_tree(got: Any, expected: Any, tol: float = 0.01) -> None:
    """Same leaves, every number within `tol` (NaN only where NaN is expected)."""
    got_leaves, exp_leaves = dict(leaves(got)), dict(leaves(expected))
    assert set(got_leaves) == set(exp_leaves), sorted(set(got_leaves) ^ set(exp_leaves))
    for path, value in exp_leaves.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got_leaves[path]), "/".join(path)
        else:
            assert abs(got_leaves[path] - value) <= tol, ("/".join(path), got_leaves[path], value)
