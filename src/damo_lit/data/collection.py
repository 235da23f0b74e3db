"""The records of a split, from one or several sources, as a data config describes them.

Used by the datamodule and by `damo-data stats`, so that both see the same records, the same
fix-ups and the same video paths.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from damo_lit.data.schema import TASKS, Record
from damo_lit.data.sources import Fixes, SourceSpec, load_source
from damo_lit.data.sources.base import SPLITS

SPEC_KEYS = ("format", "annotations", "video_dir", "durations", "splits", "video_ext", "on_bad_window",
             "on_bad_record", "weight", "name", "columns")
INHERITED = ("video_ext", "on_bad_window", "on_bad_record")  # a `sources` entry takes these from the top level


@dataclass(frozen=True)
class Sample:
    """A record and the absolute path of its video."""

    record: Record
    video_path: str
    source: str


@dataclass
class SplitRecords:
    """The samples of one split, with the fix-ups of every source counted."""

    split: str | None
    samples: list[Sample]
    fixes: Fixes
    per_source: dict[str, int] = field(default_factory=dict)

    def video_paths(self) -> list[str]:
        return sorted({s.video_path for s in self.samples})


def _as_tuple(value: Any, key: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, (str, Path)):
        return (str(value),)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key} must be a path or a list of paths, got {value!r}")
    return tuple(str(v) for v in value)


def _mapping(value: Any, key: str, expected: str) -> dict[str, Any]:
    """A config node that must be a mapping ({} when unset), or the error naming `key`."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a mapping ({expected}), got {value!r}")
    return dict(value)


def _spec(entry: Mapping[str, Any], where: str) -> SourceSpec:
    unknown = set(entry) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; a source takes {', '.join(SPEC_KEYS)}")
    if not entry.get("format"):
        raise ValueError(f"{where}: 'format' is required")
    splits = _mapping(entry.get("splits"), f"{where}.splits", "train/val/test: a file each")
    columns = _mapping(entry.get("columns"), f"{where}.columns", "video/caption/duration/...: a column name each")
    return SourceSpec(
        format=str(entry["format"]),
        annotations=str(entry["annotations"]) if entry.get("annotations") else None,
        video_dir=str(entry["video_dir"]) if entry.get("video_dir") else None,
        durations=_as_tuple(entry.get("durations"), f"{where}.durations"),
        splits={str(k): str(v) for k, v in splits.items() if v},
        video_ext=str(entry.get("video_ext") or ".mp4"),
        on_bad_window=str(entry.get("on_bad_window") or "clip"),
        on_bad_record=str(entry.get("on_bad_record") or "error"),
        weight=float(entry.get("weight", 1.0) if entry.get("weight") is not None else 1.0),
        name=str(entry["name"]) if entry.get("name") else None,
        columns={str(k): str(v) for k, v in columns.items() if v},
        key=where,
    )


def source_specs(options: Mapping[str, Any]) -> list[SourceSpec]:
    """The sources of a data config: `sources` (a mixture) or else the top-level keys (one source)."""
    sources = options.get("sources") or []
    if not isinstance(sources, (list, tuple)):
        raise ValueError(f"data.sources must be a list of sources ({{format, annotations, ...}} each), got {sources!r}")
    entries = list(sources)
    if not entries:
        return [_spec({k: options.get(k) for k in SPEC_KEYS if k in options}, "data")]
    specs: list[SourceSpec] = []
    for i, entry in enumerate(entries):
        merged = {k: options.get(k) for k in INHERITED if options.get(k) is not None}
        if not isinstance(entry, Mapping):
            raise ValueError(f"data.sources[{i}] must be a mapping (a source: {{format, annotations, ...}}), got {entry!r}")
        merged.update({k: v for k, v in dict(entry).items() if v is not None})
        spec = _spec(merged, f"data.sources[{i}]")
        twin = next((s for s in specs if spec.name and s.name == spec.name), None)
        if twin is not None:  # the name starts the ids the source makes (SourceSpec.id_prefix)
            raise ValueError(f"{spec.key}.name: {spec.name!r} is {twin.key}'s name too; each source of a "
                             "mixture needs its own name, which starts its records' ids")
        specs.append(spec)
    return specs


def check_tasks(tasks: Iterable[str], key: str) -> tuple[str, ...]:
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"{key} must be a non-empty list of {', '.join(TASKS)}, got {list(tasks)}")
    return tasks


def _weighted(samples: list[Sample], weight: float, rng: np.random.Generator) -> list[Sample]:
    """Each sample floor(weight) times, plus a seeded random share for the fraction."""
    whole = int(weight)
    out = samples * whole
    extra = int(round((weight - whole) * len(samples)))
    if extra:
        picks = np.sort(rng.permutation(len(samples))[:extra])
        out += [samples[int(i)] for i in picks]
    return out


def load_split(
    specs: Sequence[SourceSpec],
    split: str | None,
    tasks: Iterable[str] | None = None,
    weighted: bool = False,
    seed: int = 0,
) -> SplitRecords:
    """The samples of `split` (None: each source's single annotations file) filtered to `tasks`.

    With `weighted` (the training split), each source is repeated or subsampled by its weight.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected {', '.join(SPLITS)}")
    wanted = None if tasks is None else set(tasks)
    fixes = Fixes()
    samples: list[Sample] = []
    per_source: dict[str, int] = {}
    for index, spec in enumerate(specs):
        result = load_source(spec, split)
        fixes.merge(result.fixes)
        chosen = [
            Sample(r, str(result.video_root / r.video), spec.label)
            for r in result.records
            if wanted is None or r.task in wanted
        ]
        if weighted and spec.weight != 1.0:
            chosen = _weighted(chosen, spec.weight, np.random.default_rng([seed, index]))
        per_source[spec.label] = per_source.get(spec.label, 0) + len(chosen)
        samples += chosen
    return SplitRecords(split, samples, fixes, per_source)


def cap_samples(loaded: SplitRecords, limit: int) -> SplitRecords:
    """At most `limit` samples, each source keeping its share of them (the first ones of each,
    in their order): a smoke run over a mixture sees every source, not only the first."""
    if len(loaded.samples) <= limit:
        return loaded
    totals = Counter(s.source for s in loaded.samples)
    seen: Counter[str] = Counter()
    place: list[tuple[float, int]] = []  # (position within its source as a fraction, index)
    for index, sample in enumerate(loaded.samples):
        place.append((seen[sample.source] / totals[sample.source], index))
        seen[sample.source] += 1
    samples = [loaded.samples[i] for i in sorted(index for _, index in sorted(place)[:limit])]
    kept = Counter(s.source for s in samples)
    return SplitRecords(loaded.split, samples, loaded.fixes, {label: kept[label] for label in loaded.per_source})

