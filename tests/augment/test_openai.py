"""The openai backend against a local chat-completions server: retries, cache, resume."""

from __future__ import annotations

import email.utils
import json
from pathlib import Path

import pytest

from damo_lit.augment.backend import BackendError
from damo_lit.augment.items import QuestionSpec
from damo_lit.augment.openai_backend import OpenAIBackend, retry_after_seconds
from damo_lit.augment.output import progress_path
from damo_lit.augment.pipeline import run_augment
from damo_lit.augment.sources import load_videos
from damo_lit.cli.augment import run
from damo_lit.cli.common import compose

from .conftest import ANET_CLEAN, FakeChatServer
from .helpers import check_grounding, read_valid


def backend_for(server: FakeChatServer, cache: Path | None, **kwargs) -> OpenAIBackend:
    settings = dict(model="fake-llm", base_url=server.url, api_key_env="DAMO_TEST_KEY", backoff_base=0.01,
                    max_retries=3, max_parse_retries=1, concurrency=3, cache_dir=str(cache) if cache else None)
    return OpenAIBackend(**{**settings, **kwargs})


def test_retries_then_valid_items_then_cache(
    chat_server: FakeChatServer, anet_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAMO_TEST_KEY", "secret")
    chat_server.api_key = "secret"
    chat_server.script = ["429", "500", "malformed"]
    chat_server.retry_after = "7"
    videos = load_videos(anet_file, "activitynet").videos
    backend = backend_for(chat_server, tmp_path / "cache")
    waits: list[float] = []
    backend.sleep = waits.append
    out = tmp_path / "llm.jsonl"
    summary = run_augment(videos, backend, QuestionSpec(), out, source_format="activitynet", progress=False)

    # 3 videos = 3 good replies, plus the 429, the 500 and the malformed reply asked again
    assert chat_server.requests == 6
    assert 7.0 in waits  # Retry-After honoured
    # the 500's backoff: base 0.01 s doubled per retry (it may be its request's first or second retry), jittered
    assert len(waits) == 2 and all(0.005 <= w <= 0.02 for w in waits if w != 7.0)
    records = read_valid(out)
    check_grounding(records, ANET_CLEAN)
    # per video: one "when" per event, plus "order" and a dialogue where there are two events
    assert summary.items_per_type == {"dialogue": 2, "order": 2, "when": 8}
    assert summary.rejects == {"duplicate": 3, "malformed_item": 3, "outside_video": 3}
    assert summary.requests == 4 and summary.cache_hits == 0  # model calls; HTTP retries are not counted
    whens = [r for r in records if r.meta["question_type"] == "when"]
    assert {r.turns[1].content for r in whens} == {"It happens {span:0}."}  # seconds became placeholders
    assert all(r.meta["generator"] == "openai:fake-llm" for r in records)

    # the same run again on a fresh output: everything from the cache, not one request
    before = chat_server.requests
    again = run_augment(videos, backend_for(chat_server, tmp_path / "cache"), QuestionSpec(), tmp_path / "again.jsonl",
                        source_format="activitynet", progress=False)
    assert chat_server.requests == before
    assert again.requests == 0 and again.cache_hits == 4  # the cached malformed reply, then its retry
    # the same records (threads may finish the videos in another order)
    assert sorted((tmp_path / "again.jsonl").read_text().splitlines()) == sorted(out.read_text().splitlines())


def test_malformed_replies_are_bounded(chat_server: FakeChatServer, anet_file: Path, tmp_path: Path) -> None:
    chat_server.script = ["malformed"] * 6
    videos = load_videos(anet_file, "activitynet").videos
    backend = backend_for(chat_server, None, api_key_env=None, max_parse_retries=1, concurrency=1)
    summary = run_augment(videos, backend, QuestionSpec(), tmp_path / "bad.jsonl", source_format="activitynet",
                          progress=False)
    assert chat_server.requests == 6  # 2 tries for each of the 3 videos, no more
    assert summary.records == 0 and summary.rejects == {"malformed_reply": 3}


def test_endpoint_down_leaves_videos_to_retry(chat_server: FakeChatServer, anet_file: Path, tmp_path: Path) -> None:
    chat_server.script = ["500"] * 4  # the first video's 4 tries all fail
    videos = load_videos(anet_file, "activitynet").videos
    backend = backend_for(chat_server, None, api_key_env=None, concurrency=1, max_retries=3)
    backend.sleep = lambda _: None
    out = tmp_path / "down.jsonl"
    first = run_augment(videos, backend, QuestionSpec(), out, source_format="activitynet", progress=False)
    assert first.videos_failed == 1 and first.videos_done_now == 2 and "gave up after 4 tries" in first.failures[0]
    second = run_augment(videos, backend_for(chat_server, None, api_key_env=None), QuestionSpec(), out,
                         source_format="activitynet", progress=False)
    assert second.videos_resumed == 2 and second.videos_done_now == 1 and second.videos_failed == 0
    records = read_valid(out)
    assert {r.meta["source_video"] for r in records} == set(ANET_CLEAN)


def test_bad_key_stops_the_run(chat_server: FakeChatServer, anet_file: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    chat_server.api_key = "right"
    monkeypatch.setenv("DAMO_TEST_KEY", "wrong")
    videos = load_videos(anet_file, "activitynet").videos
    with pytest.raises(BackendError, match="401"):
        run_augment(videos, backend_for(chat_server, None), QuestionSpec(), tmp_path / "x.jsonl",
                    source_format="activitynet", progress=False)
    monkeypatch.delenv("DAMO_TEST_KEY")
    with pytest.raises(BackendError, match="DAMO_TEST_KEY"):
        run_augment(videos, backend_for(chat_server, None), QuestionSpec(), tmp_path / "y.jsonl",
                    source_format="activitynet", progress=False, overwrite=True)


def test_retry_after_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    date = email.utils.formatdate(1_000_060.0, usegmt=True)
    assert retry_after_seconds(date, now=1_000_000.0) == pytest.approx(60.0)


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes(chat_server: FakeChatServer, anet_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume.jsonl"
    overrides = [f"input={anet_file}", "format=activitynet", f"out={out}", "backend=openai", "progress=false",
                 f"backend.base_url={chat_server.url}", "backend.model=fake-llm", "backend.api_key_env=null",
                 "backend.cache_dir=null", "backend.backoff_base=0.01", "backend.concurrency=1",
                 "backend.temperature=0.2", "backend.extra_body={seed: 3, response_format: {type: json_object}}"]
    finished: list[str] = []

    def stop_after_two(video, records) -> None:
        finished.append(video.video)
        if len(finished) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(compose("augment", overrides), on_video_done=stop_after_two)
    partial = read_valid(out)
    assert {r.meta["source_video"] for r in partial} == set(finished)
    assert chat_server.requests == 2
    assert chat_server.bodies[0]["model"] == "fake-llm" and chat_server.bodies[0]["temperature"] == 0.2
    assert chat_server.bodies[0]["seed"] == 3 and chat_server.bodies[0]["response_format"] == {"type": "json_object"}
    assert "top_p" not in chat_server.bodies[0]  # null settings are not sent
    lines = progress_path(out).read_text().splitlines()
    assert [json.loads(line)["video"] for line in lines[1:]] == finished

    summary = run(compose("augment", overrides))
    assert chat_server.requests == 3  # only the unfinished video was asked for
    assert summary.videos_resumed == 2 and summary.videos_done_now == 1
    records = read_valid(out)
    assert len({r.id for r in records}) == len(records)
    assert {r.meta["source_video"] for r in records} == set(ANET_CLEAN)
    assert records[: len(partial)] == partial
    check_grounding(records, ANET_CLEAN)

    # other settings on the same output are refused rather than mixed in
    with pytest.raises(SystemExit, match="other settings: backend.generator"):
        run(compose("augment", overrides + ["backend.model=other-llm"]))
