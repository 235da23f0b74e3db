"""Fixtures for the augmentation tests: a small ActivityNet Captions file with quirks, and a
fake OpenAI-compatible chat-completions server on 127.0.0.1 that can be told to fail."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

# Three videos in the real format {vid: {duration, timestamps, sentences}}. Quirks: a window
# that runs past the end (clipped), one that starts after the end (dropped), a reversed one
# (swapped under on_bad_window=clip), one starting before 0 (clipped), overlapping windows,
# and a sentence with stray spaces and a final full stop.
ANET = {
    "v_gym": {
        "duration": 60.0,
        "timestamps": [[0.0, 10.5], [8.0, 25.0], [24.0, 70.0], [30.0, 28.0], [61.0, 65.0]],
        "sentences": [
            "A man walks into the gym.",
            "  He lifts a heavy barbell over his head. ",
            "He drops it and celebrates loudly.",
            "A reversed window.",
            "A window after the end.",
        ],
    },
    "v_kitchen": {
        "duration": 95.4,
        "timestamps": [[2.3, 20.0], [21.0, 48.6], [50.0, 90.0]],
        "sentences": [
            "A woman chops onions on a board.",
            "She fries them in a pan.",
            "She serves the dish to two kids.",
        ],
    },
    "v_short": {"duration": 12.0, "timestamps": [[-1.0, 6.0]], "sentences": ["The camera pans over a lake."]},
}
# The windows once cleaned (clipped to the video, bad ones dropped), by video and event index.
ANET_CLEAN = {
    "v_gym": {0: (0.0, 10.5), 1: (8.0, 25.0), 2: (24.0, 60.0), 3: (28.0, 30.0)},
    "v_kitchen": {0: (2.3, 20.0), 1: (21.0, 48.6), 2: (50.0, 90.0)},
    "v_short": {0: (0.0, 6.0)},
}


@pytest.fixture()
def anet_file(tmp_path: Path) -> Path:
    path = tmp_path / "anet_val.json"
    path.write_text(json.dumps(ANET), encoding="utf-8")
    return path


_EVENT = re.compile(r"^\[(\d+)\] ([\d.]+)-([\d.]+): (.*)$", re.MULTILINE)
_DURATION = re.compile(r"Video duration: ([\d.]+) seconds")


def fake_reply(prompt: str) -> str:
    """What a well-behaved LLM might answer, built from the prompt's event list.

    Per video: one "when" item per event with the times written out in seconds (to be turned
    into placeholders), an "order" item and a dialogue with placeholders, plus three items that
    validation or parsing must drop: one outside the video, a duplicate question, a malformed item.
    """
    duration = float(_DURATION.search(prompt).group(1))
    events = [(int(i), float(s), float(e), text.split(" / ")[0]) for i, s, e, text in _EVENT.findall(prompt)]
    items = [
        {
            "type": "when",
            "question": f"When does this happen: {text}?",
            "answer": f"It happens from {s} to {e} seconds.",
            "spans": [[s, e]],
            "events": [i],
        }
        for i, s, e, text in events
    ]
    if len(events) >= 2:
        (i0, s0, e0, t0), (i1, s1, e1, t1) = events[0], events[1]
        items.append(
            {
                "type": "order",
                "question": f"Which comes first: {t1}, or {t0}?",
                "answer": f"{t0} comes first {{span:0}}, then {t1} {{span:1}}.",
                "spans": [[s0, e0], [s1, e1]],
                "events": [i0, i1],
            }
        )
        items.append(
            {
                "type": "dialogue",
                "turns": [
                    {"question": "What happens first?", "answer": f"{t0}, {{span:0}}."},
                    {"question": "And then?", "answer": f"Then {t1} ({{span:1}})."},
                ],
                "spans": [[s0, e0], [s1, e1]],
                "events": [i0, i1],
            }
        )
    items.append({"type": "when", "question": "When do the credits roll?", "answer": "{span:0}",
                  "spans": [[duration + 5, duration + 10]]})
    items.append(dict(items[0]))  # the same question again
    items.append({"type": "when"})  # no question, no spans
    return "Here are the items:\n```json\n" + json.dumps(items) + "\n```"


@dataclass
class FakeChatServer:
    """A chat-completions endpoint whose first replies follow `script`: an HTTP status ("400",
    "408", "429", "500"), a 200 that is no chat-completions response ("html", "truncated",
    "no_choices"), a model answer that is no JSON list ("malformed", "null_content"), or "ok".
    Each request takes `delay` seconds; `max_in_flight` is the most requests it held at once."""

    url: str
    script: list[str] = field(default_factory=list)
    retry_after: str = "0"
    api_key: str | None = None
    delay: float = 0.0
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prompts: list[str] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_mode(self) -> str:
        with self.lock:
            self.requests += 1
            return self.script.pop(0) if self.script else "ok"

    def hold(self) -> None:
        """Hold one request in flight for `delay` seconds. It counts as done before its answer is
        written: a client that has read the answer may send its next request at once, before this
        thread would get to count the last one done (which counted 4 in flight at concurrency 3)."""
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture()
def chat_server() -> Iterator[FakeChatServer]:
    with serve_chat() as state:
        yield state


@pytest.fixture()
def other_chat_server() -> Iterator[FakeChatServer]:
    """A second server, at another URL, that serves the same model names."""
    with serve_chat() as state:
        yield state


@contextlib.contextmanager
def serve_chat() -> Iterator[FakeChatServer]:
    state = FakeChatServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _send(self, code: int, body: dict | str, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            raw = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(raw)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:
            state.hold()
            self._answer()

        def _answer(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            if state.api_key is not None and self.headers.get("Authorization") != f"Bearer {state.api_key}":
                return self._send(401, {"error": {"message": "bad key"}})
            mode = state.next_mode()
            if mode == "429":
                return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": state.retry_after})
            if mode in ("400", "408", "500"):
                said = {"400": "prompt too long", "408": "timed out", "500": "overloaded"}[mode]
                return self._send(int(mode), {"error": {"message": said}})
            if mode == "html":  # a proxy's error page, sent with 200
                return self._send(200, "<html><body>502 Bad Gateway</body></html>", content_type="text/html")
            if mode == "no_choices":  # some gateways report errors in a 200 body
                return self._send(200, {"error": {"message": "upstream overloaded"}})
            prompt = body["messages"][-1]["content"]
            with state.lock:
                state.prompts.append(prompt)
                state.bodies.append(body)
            content = {"malformed": "Sorry, I cannot help with that.", "null_content": None}.get(mode, "")
            reply = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
            }
            if content == "":
                reply["choices"][0]["message"]["content"] = fake_reply(prompt)
            if mode == "truncated":  # the JSON cut short, with a Content-Length that matches
                return self._send(200, json.dumps(reply)[:60])
            self._send(200, reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    # a short poll interval: shutdown() waits up to one interval, at every test's teardown
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
