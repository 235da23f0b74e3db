"""Resumable output: a torn line or an unfinished video's records are repaired away on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from damo_lit.augment.items import QuestionSpec
from damo_lit.augment.output import OutputError, ResumableOutput, progress_path
from damo_lit.augment.pipeline import run_augment
from damo_lit.augment.sources import load_videos
from damo_lit.augment.template import TemplateBackend

from .helpers import read_valid


def test_resume_repairs_a_crashed_write(anet_file: Path, tmp_path: Path) -> None:
    videos = load_videos(anet_file, "activitynet").videos
    out = tmp_path / "qa.jsonl"
    full = tmp_path / "full.jsonl"
    run_augment(videos, TemplateBackend(), QuestionSpec(), full, source_format="activitynet", progress=False)
    reference = full.read_text().splitlines()

    run_augment(videos[:1], TemplateBackend(), QuestionSpec(), out, source_format="activitynet", progress=False)
    first = out.read_text()
    # simulate a crash in the middle of the second video: its records are (partly) in OUT,
    # the last one torn, and it is not in the progress file
    second = [line for line in reference if json.loads(line)["meta"]["source_video"] == videos[1].video]
    with out.open("a") as handle:
        handle.write("\n".join(second[:2]) + "\n" + second[2][:40])
    with progress_path(out).open("a") as handle:
        handle.write('{"video": "v_kit')  # a torn progress line too

    summary = run_augment(videos, TemplateBackend(), QuestionSpec(), out, source_format="activitynet", progress=False)
    assert summary.videos_resumed == 1 and summary.videos_done_now == 2
    text = out.read_text()
    assert text.startswith(first) and text.endswith("\n")
    assert sorted(text.splitlines()) == sorted(reference)
    read_valid(out)
    assert len(progress_path(out).read_text().splitlines()) == 1 + len(videos)


def test_existing_output_without_progress_is_not_clobbered(tmp_path: Path) -> None:
    out = tmp_path / "someone_elses.jsonl"
    out.write_text('{"id": "x"}\n')
    with pytest.raises(OutputError, match="overwrite=true"):
        ResumableOutput(out, {}).open()
    assert out.read_text() == '{"id": "x"}\n'
    opened = ResumableOutput(out, {"a": 1}, overwrite=True).open()
    opened.close()
    assert out.read_text() == ""
    with pytest.raises(OutputError, match=r"a \(was 1, now 2\)"):
        ResumableOutput(out, {"a": 2}).open()


def test_progress_bar_shows_count_rate_eta_and_records(anet_file: Path, tmp_path: Path) -> None:
    """The bar a long run shows: videos done of total, videos/s, elapsed, ETA and records written."""
    import io

    from rich.console import Console

    videos = load_videos(anet_file, "activitynet").videos
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=True, width=160, color_system=None)
    summary = run_augment(videos, TemplateBackend(), QuestionSpec(), tmp_path / "qa.jsonl",
                          source_format="activitynet", progress=True, console=console)  # fmt: skip
    final = sink.getvalue().rsplit("\r", 1)[-1]  # the last redraw of the live bar
    assert f"{len(videos)}/{len(videos)}" in final
    assert "videos/s" in final and "-- videos/s" not in final and "ETA" in final
    assert f"{summary.records} records" in final and summary.records > 0
    assert "augment (template)" in final


def test_an_output_that_is_a_directory_is_refused_before_anything(tmp_path: Path) -> None:
    folder = tmp_path / "outputs"
    folder.mkdir()
    for overwrite in (False, True):  # overwrite=true must not be offered, nor end in IsADirectoryError
        with pytest.raises(OutputError, match=rf"out={folder}: {folder} is a directory; expected the path of a JSONL"):
            ResumableOutput(folder, {}, overwrite=overwrite).open()
    progress_path(tmp_path / "qa.jsonl").mkdir()
    with pytest.raises(OutputError, match=r"qa\.jsonl\.progress\.jsonl is a directory"):
        ResumableOutput(tmp_path / "qa.jsonl", {}).open()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs", "qa.jsonl.progress.jsonl"]
