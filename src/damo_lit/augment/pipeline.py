"""The augmentation run: videos -> backend (in threads) -> validation -> resumable output -> summary."""

from __future__ import annotations

import concurrent.futures as cf
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from damo_lit.augment.backend import Backend, Generation
from damo_lit.augment.items import QuestionSpec, Video
from damo_lit.augment.output import ResumableOutput, summary_path
from damo_lit.augment.summary import Summary
from damo_lit.augment.validate import ValidationSettings, Validator
from damo_lit.data.schema import Record

VideoHook = Callable[[Video, list[Record]], None]


class RateColumn(ProgressColumn):
    """Videos per second (rich's own speed columns speak of bytes)."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- videos/s" if speed is None else f"{speed:.2f} videos/s", style="progress.data.speed")


def make_progress(enabled: bool = True, console: Console | None = None) -> Progress:
    """A rich progress bar with count, rate, elapsed time and ETA."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[records]} records"),
        console=console or Console(stderr=True),
        disable=not enabled,
    )


def validate_generation(
    video: Video, gen: Generation, settings: ValidationSettings, generator: str, source_format: str
) -> tuple[list[Record], dict[str, Any]]:
    """Validate one video's items; return its records and the statistics the progress file keeps."""
    validator = Validator(video, settings, generator, source_format)
    rejects = Counter(gen.rejects)
    records = []
    for item in gen.items:
        record, reason = validator.check(item)
        if record is None:
            rejects[reason] += 1
        else:
            records.append(record)
    stats = {
        "records": len(records),
        "tasks": dict(Counter(r.task for r in records)),
        "types": dict(Counter(r.meta["question_type"] for r in records)),
        "rejects": dict(rejects),
        "span_lengths": [round(e - s, 3) for r in records for s, e in r.spans],
        "requests": gen.requests,
        "retries": gen.retries,
        "cache_hits": gen.cache_hits,
    }
    return records, stats


def _generations(backend: Backend, videos: list[Video], spec: QuestionSpec) -> Iterator[tuple[Video, Generation]]:
    """(video, generation) as they finish, from `backend.concurrency` threads, with a bounded backlog.

    Left early (Ctrl-C, an error, the caller stopping), the backend is stopped: the worker
    threads give up their waits and exit, since the interpreter joins them before it exits.
    """
    if backend.concurrency <= 1:
        for video in videos:
            yield video, backend.generate(video, spec)
        return
    pending = iter(videos)
    pool = cf.ThreadPoolExecutor(max_workers=backend.concurrency, thread_name_prefix="augment")
    running: dict[cf.Future, Video] = {}
    try:
        for video in pending:
            running[pool.submit(backend.generate, video, spec)] = video
            if len(running) >= 2 * backend.concurrency:
                break
        while running:
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in done:
                video = running.pop(future)
                yield video, future.result()
                following = next(pending, None)
                if following is not None:
                    running[pool.submit(backend.generate, following, spec)] = following
    finally:
        if running:  # an error or an interrupt: start nothing queued, and end the waits before retries
            backend.stop()
        # a request in flight is not cut off: it ends within backend.timeout, and its reply is only cached
        pool.shutdown(wait=not running, cancel_futures=True)


def run_augment(
    videos: list[Video],
    backend: Backend,
    spec: QuestionSpec,
    out: str | Path,
    *,
    source_format: str,
    fingerprint: dict[str, Any] | None = None,
    settings: ValidationSettings | None = None,
    source_fixes: dict[str, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    console: Console | None = None,
    on_video_done: VideoHook | None = None,
) -> Summary:
    """Generate, validate and write grounded QA for every video not already done in `out`.

    Resumes from OUT.progress.jsonl when it exists (with the same `fingerprint`), writes each
    finished video as it completes, and finally OUT.summary.json. `on_video_done` is called
    after each video is written (tests use it to interrupt a run). On Ctrl-C the backend's
    workers are stopped and KeyboardInterrupt is raised again; what was written stays valid
    and the next run resumes from it.
    """
    settings = settings or ValidationSettings()
    console = console or Console(stderr=True)
    fingerprint = dict(fingerprint or {}, backend=backend.fingerprint(), spec=asdict(spec), validation=asdict(settings))
    backend.start()  # before anything is written: a backend that cannot work (its cache_dir) says so first
    output = ResumableOutput(Path(out), fingerprint, overwrite=overwrite).open()
    todo = [v for v in videos if v.video not in output.done]
    resumed = len(videos) - len(todo)
    if output.repaired:
        console.print(f"resume: dropped {output.repaired} unfinished line(s) from {out}")
    done_now, failures = 0, []
    sent = Generation()  # this run's requests, retries and cache hits, over every video (failed ones too)
    generations = _generations(backend, todo, spec)
    try:
        with make_progress(progress, console) as bar:
            task = bar.add_task(f"augment ({backend.generator})", total=len(todo), records=0)
            written = 0
            for video, gen in generations:
                sent.requests += gen.requests
                sent.retries += gen.retries
                sent.cache_hits += gen.cache_hits
                if not gen.complete:
                    failures.append(f"{video.video}: {gen.error}")
                    bar.advance(task)
                    continue
                records, stats = validate_generation(video, gen, settings, backend.generator, source_format)
                output.write_video(video.video, records, stats)
                done_now += 1
                written += len(records)
                bar.update(task, advance=1, records=written)
                if on_video_done is not None:
                    on_video_done(video, records)
    except KeyboardInterrupt:
        console.print(f"interrupted: {done_now} video(s) written by this run to {out}; "
                      "run the same command again to resume")
        raise
    finally:
        generations.close()  # stops the workers now, not whenever the generator is collected
        output.close()
        backend.close()
    summary = Summary.from_stats(
        output.done.values(),
        out=str(out),
        generator=backend.generator,
        source_format=source_format,
        videos_total=len(videos),
        videos_in_output=len(output.done),
        videos_resumed=resumed,
        videos_done_now=done_now,
        videos_failed=len(failures),
        source_fixes=dict(sorted((source_fixes or {}).items())),
        failures=failures,
    )
    summary.requests, summary.retries, summary.cache_hits = sent.requests, sent.retries, sent.cache_hits
    summary.write(summary_path(out))
    return summary
