"""The `openai` backend: any OpenAI-compatible chat-completions endpoint, through urllib.

POST {base_url}/chat/completions with a bounded number of retries and exponential backoff
(with jitter) on 429, 5xx and connection errors, honouring a Retry-After header; a timeout
per request; up to `concurrency` requests at once (the pipeline runs that many threads).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from datetime import timezone
from typing import Any, Callable

from damo_lit.augment.backend import BackendError
from damo_lit.augment.llm import LLMBackend, Message, ReplyFormatError, RequestRejected, TransientFailure

FATAL_STATUS = (401, 403, 404)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class OpenAIBackend(LLMBackend):
    """Chat completions from an OpenAI-compatible server (OpenAI, vLLM, llama.cpp, TGI, ...)."""

    kind = "openai"

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.7,
        top_p: float | None = None,
        max_tokens: int = 2048,
        timeout: float = 60.0,
        concurrency: int = 4,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_parse_retries: int = 2,
        cache_dir: str | None = None,
        tolerance: float = 0.25,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, **dict(extra_body or {})}
        super().__init__(model, params, cache_dir, max_parse_retries, concurrency, tolerance)
        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise ValueError(f"backend.base_url must be an http(s) URL, got {base_url!r}")
        self.url = str(base_url).rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.sleep: Callable[[float], None] = time.sleep  # tests replace it to record the waits

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise BackendError(
                    f"backend.api_key_env names the environment variable {self.api_key_env}, which is not set; "
                    "export it, or set backend.api_key_env=null for a server that needs no key"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def backoff(self, retry: int) -> float:
        """Exponential backoff with equal jitter: between half and all of base * 2**retry (capped)."""
        delay = min(self.backoff_max, self.backoff_base * (2**retry))
        return delay / 2 + random.random() * delay / 2

    def _complete(self, messages: list[Message], attempt: int) -> str:
        body = json.dumps({"model": self.model, "messages": messages, **self.params}).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        last = ""
        for retry in range(self.max_retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._content(response.read())
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode("utf-8", "replace") if err.fp else ""
                if err.code in FATAL_STATUS:
                    raise BackendError(
                        f"{self.url} answered {err.code} {err.reason}: {detail.strip()} "
                        f"(check backend.base_url, backend.model={self.model!r} and ${self.api_key_env})"
                    ) from None
                if err.code != 429 and err.code < 500:
                    raise RequestRejected(f"{self.url} answered {err.code}: {detail.strip()}") from None
                last = f"HTTP {err.code}"
                wait = retry_after_seconds(err.headers.get("Retry-After") if err.headers else None)
                delay = self.backoff(retry) if wait is None else wait
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
                delay = self.backoff(retry)
            if retry < self.max_retries:
                self.sleep(delay)
        raise TransientFailure(f"{self.url}: gave up after {self.max_retries + 1} tries (last: {last})")

    @staticmethod
    def _content(raw: bytes) -> str:
        try:
            payload = json.loads(raw)
            content = payload["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as err:
            raise ReplyFormatError(f"not a chat-completions response ({type(err).__name__})") from None
        if not isinstance(content, str):
            raise ReplyFormatError("the response's message content is not text")
        return content
