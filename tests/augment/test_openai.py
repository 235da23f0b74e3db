"""The openai backend against a local chat-completions server: retries, cache, resume."""

from __future__ import annotations

import email.utils
import errno
import http.client
import json
import logging
import re
import signal
import socket
import ssl
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from damo_lit.augment.backend import BackendError
from damo_lit.augment.items import QuestionSpec
from damo_lit.augment.openai_backend import OpenAIBackend, retry_after_seconds
from damo_lit.augment.output import OutputError, progress_path
from damo_lit.augment.pipeline import run_augment
from damo_lit.augment.sources import load_videos
from damo_lit.cli.augment import main, run
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
    # every request the server received is counted: the 429's and the 500's retries too
    assert summary.requests == chat_server.requests == 6 and summary.retries == 2 and summary.cache_hits == 0
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


@pytest.mark.parametrize("mode", ["malformed", "null_content"])
def test_malformed_replies_are_bounded(chat_server: FakeChatServer, anet_file: Path, tmp_path: Path, mode: str) -> None:
    # a well-formed chat-completions response whose content is no JSON list is the model's fault
    chat_server.script = [mode] * 6
    videos = load_videos(anet_file, "activitynet").videos
    backend = backend_for(chat_server, None, api_key_env=None, max_parse_retries=1, concurrency=1)
    summary = run_augment(videos, backend, QuestionSpec(), tmp_path / "bad.jsonl", source_format="activitynet",
                          progress=False)
    assert chat_server.requests == 6  # 2 tries for each of the 3 videos, no more
    assert summary.records == 0 and summary.rejects == {"malformed_reply": 3}


def test_a_reply_whose_content_is_not_text_is_cached_and_not_sent_again(
    chat_server: FakeChatServer, anet_file: Path, tmp_path: Path
) -> None:
    chat_server.script = ["null_content"]  # the first video's first reply, then good ones
    videos = load_videos(anet_file, "activitynet").videos[:1]
    cache = tmp_path / "cache"
    first = run_augment(videos, backend_for(chat_server, cache, api_key_env=None, concurrency=1), QuestionSpec(),
                        tmp_path / "first.jsonl", source_format="activitynet", progress=False)
    assert chat_server.requests == 2 and first.requests == 2  # the null content, then the re-ask
    again = run_augment(videos, backend_for(chat_server, cache, api_key_env=None, concurrency=1), QuestionSpec(),
                        tmp_path / "again.jsonl", source_format="activitynet", progress=False)
    assert chat_server.requests == 2 and again.requests == 0 and again.cache_hits == 2
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "first.jsonl").read_text()


def test_two_servers_of_one_model_name_share_neither_replies_nor_an_output(
    chat_server: FakeChatServer, other_chat_server: FakeChatServer, anet_file: Path, tmp_path: Path
) -> None:
    videos = load_videos(anet_file, "activitynet").videos
    cache, out = tmp_path / "cache", tmp_path / "one.jsonl"
    run_augment(videos, backend_for(chat_server, cache, api_key_env=None), QuestionSpec(), out,
                source_format="activitynet", progress=False)
    other = backend_for(other_chat_server, cache, api_key_env=None)
    summary = run_augment(videos, other, QuestionSpec(), tmp_path / "two.jsonl", source_format="activitynet",
                          progress=False)
    assert other_chat_server.requests == 3 and summary.cache_hits == 0
    with pytest.raises(OutputError, match="other settings: backend.endpoint"):
        run_augment(videos, other, QuestionSpec(), out, source_format="activitynet", progress=False)


def test_requests_in_flight_never_exceed_the_concurrency(
    chat_server: FakeChatServer, anet_file: Path, tmp_path: Path
) -> None:
    chat_server.delay = 0.5  # long enough for every worker's request to be held at once, even on a busy machine
    source = load_videos(anet_file, "activitynet").videos
    videos = [replace(v, video=f"{v.video}-{i}") for i in range(4) for v in source]
    summary = run_augment(videos, backend_for(chat_server, None, api_key_env=None, concurrency=3), QuestionSpec(),
                          tmp_path / "c.jsonl", source_format="activitynet", progress=False)
    assert chat_server.requests == 12 and summary.videos_done_now == 12
    assert chat_server.max_in_flight == 3


@pytest.mark.parametrize(
    "mode, said",
    [("500", "HTTP 500"), ("html", "JSONDecodeError"), ("truncated", "JSONDecodeError"), ("no_choices", "KeyError")],
)
def test_endpoint_down_leaves_videos_to_retry(
    chat_server: FakeChatServer, anet_file: Path, tmp_path: Path, mode: str, said: str
) -> None:
    # a 200 whose body is no chat-completions response (a gateway's HTML page, JSON cut short, an
    # error object) says nothing about the model: retried like a 5xx, and the video is left undone
    chat_server.script = [mode] * 4  # the first video's 4 tries all fail
    videos = load_videos(anet_file, "activitynet").videos
    backend = backend_for(chat_server, None, api_key_env=None, concurrency=1, max_retries=3)
    waits: list[float] = []
    backend.sleep = waits.append
    out = tmp_path / "down.jsonl"
    first = run_augment(videos, backend, QuestionSpec(), out, source_format="activitynet", progress=False)
    assert first.videos_failed == 1 and first.videos_done_now == 2 and "gave up after 4 tries" in first.failures[0]
    assert said in first.failures[0] and "malformed_reply" not in first.rejects
    assert len(waits) == 3  # backoff between the tries, as for a 5xx
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


@pytest.mark.parametrize("mode, retries, failed, rejected", [("500", 1, 3, 0), ("429", 2, 3, 0), ("400", 0, 0, 3)])
def test_every_request_sent_is_counted(chat_server: FakeChatServer, anet_file: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture, mode: str, retries: int, failed: int,
                                       rejected: int) -> None:
    # retried tries, the tries of videos that end up not done, and requests the server refused
    chat_server.script = [mode] * 100
    videos = load_videos(anet_file, "activitynet").videos
    backend = backend_for(chat_server, None, api_key_env=None, concurrency=1, max_retries=retries)
    backend.sleep = lambda seconds: None
    summary = run_augment(videos, backend, QuestionSpec(), tmp_path / f"{mode}.jsonl", source_format="activitynet",
                          progress=False)
    assert chat_server.requests == 3 * (retries + 1)
    assert summary.requests == chat_server.requests and summary.retries == 3 * retries
    assert summary.videos_failed == failed and summary.rejects.get("request_rejected", 0) == rejected
    summary.print()
    said = " ".join(capsys.readouterr().err.split())
    retried = f" ({summary.retries} of them retries)" if retries else ""
    assert f"LLM requests sent: {summary.requests}{retried}, answered from cache: 0" in said


def test_a_cache_dir_that_is_a_file_fails_before_any_request(chat_server: FakeChatServer, anet_file: Path,
                                                            tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    out = tmp_path / "c.jsonl"
    args = [f"input={anet_file}", f"out={out}", "backend=openai", "progress=false", f"backend.base_url={chat_server.url}",
            "backend.model=fake-llm", "backend.api_key_env=null", f"backend.cache_dir={cache}"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value)
    assert message.startswith(f"damo-augment: backend.cache_dir={cache} is a file, not a folder")
    assert "expected a writable folder" in message and "\n" not in message
    assert chat_server.requests == 0 and not out.exists()  # nothing sent, nothing written
    with pytest.raises(SystemExit, match=f"backend.cache_dir={cache}/sub cannot be made a folder"):
        main(args + [f"backend.cache_dir={cache}/sub"])  # under a file
    assert chat_server.requests == 0


def test_a_refused_request_without_a_key_says_no_key_was_sent(chat_server: FakeChatServer, anet_file: Path,
                                                              tmp_path: Path) -> None:
    chat_server.api_key = "needed"
    videos = load_videos(anet_file, "activitynet").videos[:1]
    with pytest.raises(BackendError, match="401") as raised:
        run_augment(videos, backend_for(chat_server, None, api_key_env=None), QuestionSpec(), tmp_path / "k.jsonl",
                    source_format="activitynet", progress=False)
    assert "no key was sent: set backend.api_key_env" in str(raised.value) and "$None" not in str(raised.value)


def test_retry_after_is_capped_by_backoff_max(
    chat_server: FakeChatServer, anet_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chat_server.script = ["429", "429"]
    chat_server.retry_after = "86400"  # a day
    video = load_videos(anet_file, "activitynet").videos[:1]
    backend = backend_for(chat_server, None, api_key_env=None, concurrency=1, backoff_max=2.5)
    waits: list[float] = []
    backend.sleep = waits.append
    with caplog.at_level(logging.WARNING, logger="damo_lit.augment.openai_backend"):
        summary = run_augment(video, backend, QuestionSpec(), tmp_path / "capped.jsonl", source_format="activitynet",
                              progress=False)
    assert waits == [2.5, 2.5] and summary.videos_done_now == 1
    assert "86400 s" in caplog.text and "backoff_max=2.5" in caplog.text

    # after the last try nothing waits, and nothing is said about waiting
    caplog.clear()
    chat_server.script = ["429", "429"]
    backend = backend_for(chat_server, None, api_key_env=None, concurrency=1, backoff_max=2.5, max_retries=1)
    backend.sleep = waits.append
    with caplog.at_level(logging.WARNING, logger="damo_lit.augment.openai_backend"):
        summary = run_augment(video, backend, QuestionSpec(), tmp_path / "last.jsonl", source_format="activitynet",
                              progress=False)
    assert waits == [2.5, 2.5, 2.5] and summary.videos_failed == 1
    assert caplog.text.count("waiting backend.backoff_max") == 1


def test_timeouts_and_read_errors_are_retried(
    chat_server: FakeChatServer, anet_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what a flaky network raises below HTTP: TLS errors, resets, a body cut short, any OSError
    errors: list[Exception] = [
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        http.client.IncompleteRead(b'{"id": "chatcmpl', 120),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
    ]
    real_urlopen = urllib.request.urlopen

    def flaky_urlopen(request, timeout):
        if errors:
            raise errors.pop(0)
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", flaky_urlopen)
    chat_server.script = ["408"]  # then the server answers
    videos = load_videos(anet_file, "activitynet").videos
    backend = backend_for(chat_server, None, api_key_env=None, concurrency=1, max_retries=5)
    waits: list[float] = []
    backend.sleep = waits.append
    summary = run_augment(videos, backend, QuestionSpec(), tmp_path / "flaky.jsonl", source_format="activitynet",
                          progress=False)
    assert not errors and len(waits) == 5  # the first video's 6 tries
    assert summary.videos_done_now == 3 and summary.videos_failed == 0
    assert "request_rejected" not in summary.rejects  # 408 is retried, not taken as a refusal
    assert chat_server.requests == 4  # the 408, then one good reply per video


@pytest.mark.parametrize("concurrency", [1, 3])
def test_interrupt_stops_workers_waiting_to_retry(
    chat_server: FakeChatServer, anet_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture, concurrency: int
) -> None:
    # one video gets its reply; then the server only answers 429 with Retry-After: one hour
    chat_server.script = ["ok"] + ["429"] * 1000
    chat_server.retry_after = "3600"
    videos = load_videos(anet_file, "activitynet").videos
    out, cache = tmp_path / "stopped.jsonl", tmp_path / "cache"
    backend = backend_for(chat_server, cache, api_key_env=None, concurrency=concurrency, backoff_max=3600.0)
    waiting, written, finished = threading.Event(), threading.Event(), threading.Event()
    wait = backend.sleep
    sleepers: set[threading.Thread] = set()

    def sleep(seconds: float) -> object:
        sleepers.add(threading.current_thread())
        waiting.set()
        return wait(seconds)

    backend.sleep = sleep
    sent: list[float] = []

    def press_ctrl_c() -> None:  # as a terminal would, once a video is written and a retry waits
        waiting.wait(10)
        written.wait(10)
        # a signal sent just as the main thread goes to sleep can be lost: it must be asleep by now,
        # and should it still be lost, press again rather than hang the tests for an hour
        while not finished.wait(0.3):
            sent.append(time.monotonic())
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            finished.wait(3.0)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_augment(videos, backend, QuestionSpec(), out, source_format="activitynet", progress=False,
                        on_video_done=lambda video, records: written.set())
        stopped = time.monotonic()
    finally:
        finished.set()
        signal.signal(signal.SIGINT, previous)
    assert waiting.is_set() and written.is_set() and sent
    assert stopped - sent[0] < 30.0, "stopped by the interrupt, not by the hour-long Retry-After"  # slack for a busy CI
    workers = sleepers | {t for t in threading.enumerate() if t.name.startswith("augment")}
    assert all(t.name.startswith("augment") for t in sleepers) == (concurrency > 1)
    for worker in workers - {threading.main_thread()}:
        worker.join(timeout=2.0)
    assert not [t for t in workers - {threading.main_thread()} if t.is_alive()]  # nothing for the exit to wait for
    assert "run the same command again to resume" in " ".join(capsys.readouterr().err.split())

    # what was written stays valid, the cache too, and the same backend resumes the run
    partial = read_valid(out)
    assert len({r.meta["source_video"] for r in partial}) == 1
    assert all(json.loads(p.read_text())["reply"] for p in cache.rglob("*.json"))
    chat_server.script.clear()
    summary = run_augment(videos, backend, QuestionSpec(), out, source_format="activitynet", progress=False)
    assert summary.videos_resumed == 1 and summary.videos_done_now == 2 and summary.videos_failed == 0
    records = read_valid(out)
    assert records[: len(partial)] == partial
    check_grounding(records, ANET_CLEAN)


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

    # other settings on the same output are refused rather than mixed in, also those that only
    # change how a reply is read (how often a malformed one is asked again, how times are matched)
    for changed, named in (("backend.model=other-llm", "backend.generator"),
                           ("backend.max_parse_retries=5", "backend.max_parse_retries (was 2, now 5)"),
                           ("backend.tolerance=1.0", "backend.tolerance (was 0.25, now 1.0)")):
        with pytest.raises(SystemExit, match=f"other settings: {re.escape(named)}"):
            run(compose("augment", overrides + [changed]))


def test_videos_left_to_retry_fail_the_command_and_a_rerun_resumes(chat_server: FakeChatServer, anet_file: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "retry.jsonl"
    args = [f"input={anet_file}", f"out={out}", "backend=openai", "progress=false", f"backend.base_url={chat_server.url}",
            "backend.model=fake-llm", "backend.api_key_env=null", "backend.cache_dir=null", "backend.max_retries=0",
            "backend.concurrency=1"]
    chat_server.script = ["500"]  # the first video's only try fails; the other two are written
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value)
    assert message.startswith("damo-augment: 1 of 3 video(s) not done (first: v_gym: ") and "HTTP 500" in message
    assert f"{out} holds" in message and "from 2 video(s)" in message
    assert "Run the same command again to resume" in message
    assert {r.meta["source_video"] for r in read_valid(out)} == {"v_kitchen", "v_short"}

    main(args)  # the rerun asks only for the video not done, leaves none to retry: exit status 0
    assert chat_server.requests == 4
    assert {r.meta["source_video"] for r in read_valid(out)} == set(ANET_CLEAN)


def test_endpoint_not_listening_exits_non_zero(anet_file: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "closed.jsonl"
    with pytest.raises(SystemExit) as exit_info:  # SystemExit(message): the interpreter prints it, exits 1
        main([f"input={anet_file}", f"out={out}", "backend=openai", "progress=false", "limit=1",
              f"backend.base_url=http://127.0.0.1:{port}/v1", "backend.model=fake-llm", "backend.api_key_env=null",
              "backend.cache_dir=null", "backend.max_retries=0"])
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("damo-augment: 1 of 1 video(s) not done (first: v_gym: ")
    assert "Connection refused" in message and "0 record(s) from 0 video(s)" in message
    assert "Run the same command again to resume" in message
