"""Annotation sources: each maps a public annotation format to DaMO `Record`s, fix-ups counted.

`load_source(spec, split)` reads one source (SourceSpec: format, annotation file(s), video
folder, durations, policies) and returns its records with the count of every fix-up kind.
"""

from __future__ import annotations

from pathlib import Path

from damo_lit.data.schema import RecordError
from damo_lit.data.sources.base import (
    FIX_KINDS,
    BadRecordsError,
    Fixes,
    LoadResult,
    SourceSpec,
    collect,
)
from damo_lit.data.sources.formats import READERS

__all__ = ["FIX_KINDS", "BadRecordsError", "Fixes", "LoadResult", "SourceSpec", "READERS", "load_source"]


def load_source(spec: SourceSpec, split: str | None = None) -> LoadResult:
    """Records of `spec` for `split` (None: the single annotations file), fix-ups counted."""
    if spec.format not in READERS:
        raise ValueError(f"unknown data.format {spec.format!r}; known: {', '.join(sorted(READERS))}")
    path = spec.annotation_file(split)
    if not path.is_file():
        raise FileNotFoundError(f"source {spec.label}: annotation file {path} not found (data.annotations)")
    for csv_path in spec.durations:
        if not Path(csv_path).is_file():
            raise FileNotFoundError(f"source {spec.label}: durations file {csv_path} not found (data.durations)")
    fixes = Fixes()
    video_root = spec.video_root(path)
    try:
        records = collect(READERS[spec.format](spec, path), spec, video_root, fixes)
    except BadRecordsError:
        raise
    except RecordError as err:  # a whole-file problem (e.g. not JSON at all)
        raise BadRecordsError([err], whole_file=True) from None
    return LoadResult(records, fixes, [path], video_root)
