"""The end-of-run summary: items per question type, span lengths, rejects by reason, source fixes.

It aggregates the per-video statistics kept in the progress file, so that a resumed run
reports on the whole output, not only on the videos of its last stretch.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

SPAN_BINS = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


def histogram(lengths: Iterable[float], edges: tuple[float, ...] = SPAN_BINS) -> dict[str, int]:
    """Counts of span lengths (seconds) per bin, labelled "lo-hi s" (the last bin is open)."""
    labels = [f"{lo:g}-{hi:g} s" for lo, hi in zip(edges, edges[1:])] + [f">={edges[-1]:g} s"]
    counts = dict.fromkeys(labels, 0)
    for length in lengths:
        k = max(i for i, lo in enumerate(edges) if length >= lo) if length >= edges[0] else 0
        counts[labels[k]] += 1
    return counts


@dataclass
class Summary:
    """What a run produced; written to OUT.summary.json and printed as tables."""

    out: str
    generator: str
    source_format: str
    videos_total: int = 0  # in this run's input (after limit=)
    videos_in_output: int = 0  # finished videos in OUT, over all runs that wrote it
    videos_resumed: int = 0
    videos_done_now: int = 0
    videos_failed: int = 0
    records: int = 0
    records_per_task: dict[str, int] = field(default_factory=dict)
    items_per_type: dict[str, int] = field(default_factory=dict)
    span_length_histogram: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)
    source_fixes: dict[str, int] = field(default_factory=dict)
    requests: int = 0  # every LLM request this run sent: retries, re-asks, failed and refused ones too
    retries: int = 0  # of those, the ones that repeated a failed try (408, 429, 5xx, network errors)
    cache_hits: int = 0  # replies this run took from the cache
    failures: list[str] = field(default_factory=list)

    @classmethod
    def from_stats(cls, stats: Iterable[dict[str, Any]], **fields: Any) -> "Summary":
        """Aggregate per-video stats ({records, tasks, types, rejects, span_lengths}) of the whole output."""
        summary = cls(**fields)
        tasks, types, rejects, lengths = Counter(), Counter(), Counter(), []
        for entry in stats:
            summary.records += int(entry.get("records", 0))
            tasks.update(entry.get("tasks", {}))
            types.update(entry.get("types", {}))
            rejects.update(entry.get("rejects", {}))
            lengths += entry.get("span_lengths", [])
        summary.records_per_task = dict(sorted(tasks.items()))
        summary.items_per_type = dict(sorted(types.items()))
        summary.rejects = dict(sorted(rejects.items()))
        summary.span_length_histogram = histogram(lengths)
        return summary

    def problem(self) -> str | None:
        """Why the run did not do its job, in one message (damo-augment then exits 1), or None.

        Videos left to retry (an endpoint down, requests that kept failing) come first: a rerun
        of the same command resumes and asks only for them. An output with no record at all
        comes next: its videos are marked done, so only other input or settings help.
        """
        if self.videos_failed:
            first = f" (first: {self.failures[0]})" if self.failures else ""
            return (
                f"{self.videos_failed} of {self.videos_total} video(s) not done{first}; {self.out} holds "
                f"{self.records} record(s) from {self.videos_in_output} video(s). Run the same command again "
                f"to resume: the videos already written are kept and only those not done are tried again"
            )
        if self.records == 0:
            why = (f"every item was rejected ({', '.join(f'{k}={n}' for k, n in self.rejects.items())})"
                   if self.rejects else "no item was generated")
            return (
                f"no record written to {self.out}: {why} for the {self.videos_in_output} video(s) of the input. "
                f"They are marked done, so the same command again would write nothing: check the input "
                f"(format=, the events it holds) and the question / validation settings, then rerun with overwrite=true"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    def print(self, console: Console | None = None) -> None:
        console = console or Console(stderr=True)
        console.print(
            f"[bold]damo-augment[/bold] {self.generator} on {self.source_format}: {self.records} records "
            f"from {self.videos_in_output} videos -> {self.out}\n"
            f"this run: {self.videos_total} input videos, {self.videos_resumed} already done, "
            f"{self.videos_done_now} done now, {self.videos_failed} to retry"
        )
        if self.requests or self.cache_hits:
            retries = f" ({self.retries} of them retries)" if self.retries else ""
            console.print(f"LLM requests sent: {self.requests}{retries}, answered from cache: {self.cache_hits}")
        for title, counts in (
            ("items per question type", self.items_per_type),
            ("span lengths", self.span_length_histogram),
            ("rejects by reason", self.rejects),
            ("source fixes", self.source_fixes),
        ):
            if not counts:
                continue
            console.print(f"[bold]{title}[/bold]")
            table = Table()
            table.add_column("what")
            table.add_column("count", justify="right")
            for key, value in counts.items():
                table.add_row(key, str(value))
            console.print(table)
        for failure in self.failures[:5]:
            console.print(f"[yellow]not done, will be retried on the next run:[/yellow] {failure}")
