"""The `openai` backend: any OpenAI-compatible chat-completions endpoint, through urllib.

POST {base_url}/chat/completions with a bounded number of retries and exponential backoff
(with jitter) on 408, 429, 5xx, connection and read errors, and on a 200 whose body is not a
chat-completions response (an HTML page from a gateway, truncated JSON, no `choices`); a
Retry-After header is honoured up to `backoff_max`. A timeout per request; up to
`concurrency` requests at once (the pipeline runs that many threads). The reply is cached as
the whole response body; the base URL is part of the cache key and of the resume fingerprint.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from datetime import timezone
from typing import Any

from damo_lit.augment.backend import BackendError, Generation
from damo_lit.augment.llm import LLMBackend, Message, ReplyFormatError, RequestRejected, TransientFailure

log = logging.getLogger(__name__)

FATAL_STATUS = (401, 403, 404)
RETRY_STATUS = (408, 429)  # and every 5xx


class _Retry(Exception):
    """One try failed in a way that another try may fix (`wait`: what Retry-After asked for, if anything)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


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
        self.endpoint = str(base_url).rstrip("/")
        self.url = self.endpoint + "/chat/completions"
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)

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

    def retry_delay(self, retry: int, asked: float | None) -> float:
        """The wait before the next try: Retry-After when the server gave one, but never more than
        backoff_max (a server asking for a day would otherwise stall a worker for a day)."""
        if asked is None:
            return self.backoff(retry)
        if asked > self.backoff_max:
            log.warning("%s asked to retry after %.0f s; waiting backend.backoff_max=%g s instead",
                        self.url, asked, self.backoff_max)
            return self.backoff_max
        return asked

    def _complete(self, messages: list[Message], attempt: int, gen: Generation) -> str:
        body = json.dumps({"model": self.model, "messages": messages, **self.params}).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        last = _Retry("no try")
        for retry in range(self.max_retries + 1):
            if retry:  # after the last try nothing waits: no delay is worked out, nor warned about
                self.pause(self.retry_delay(retry - 1, last.wait))
            gen.sent(retry=retry > 0)
            try:
                return self._send(request)
            except _Retry as err:
                last = err
        raise TransientFailure(f"{self.url}: gave up after {self.max_retries + 1} tries (last: {last.reason})")

    def _key_hint(self) -> str:
        """What to check about the key when the server refuses: the variable, or that none was sent."""
        if self.api_key_env:
            return f"the key in ${self.api_key_env}"
        return "that no key was sent: set backend.api_key_env to the environment variable that holds one"

    def _send(self, request: urllib.request.Request) -> str:
        """One try: the response body, or _Retry for what another try may fix; the errors that
        retrying cannot fix (bad key or model, a request the server refuses) are raised as they are."""
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = _error_detail(err)
            if err.code in FATAL_STATUS:
                raise BackendError(
                    f"{self.url} answered {err.code} {err.reason}: {detail} "
                    f"(check backend.base_url, backend.model={self.model!r} and {self._key_hint()})"
                ) from None
            if err.code not in RETRY_STATUS and err.code < 500:
                raise RequestRejected(f"{self.url} answered {err.code}: {detail}") from None
            asked = retry_after_seconds(err.headers.get("Retry-After") if err.headers else None)
            raise _Retry(f"HTTP {err.code}", asked) from None
        except (http.client.HTTPException, OSError) as err:
            # refused or reset connections, timeouts, TLS errors, a body cut short (IncompleteRead)
            raise _Retry(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None
        text = raw.decode("utf-8", "replace")
        _message(text)  # a body that is no chat-completions response is retried, and never cached
        return text

    def reply_text(self, raw: str) -> str:
        """The message text of a chat-completions body. Content that is not text (null, a list of
        parts) is the model's fault: ReplyFormatError, asked again."""
        try:
            content = _message(raw).get("content")
        except _Retry as err:  # a cache entry that is no body (edited by hand): the reply is unusable
            raise ReplyFormatError(err.reason) from None
        if not isinstance(content, str):
            raise ReplyFormatError("the response's message content is not text")
        return content


def _message(body: str) -> dict[str, Any]:
    """The message of a chat-completions body. A body that is not one at all (a gateway's HTML
    page, truncated JSON, no `choices`) is the endpoint's failure: _Retry, like a 5xx."""
    try:
        message = json.loads(body)["choices"][0]["message"]
        if not isinstance(message, dict):
            raise TypeError("message is not an object")
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
        raise _Retry(f"HTTP 200 but not a chat-completions response ({type(err).__name__}; "
                     f"the body starts {body[:80].strip()!r})") from None
    return message


def _error_detail(err: urllib.error.HTTPError) -> str:
    """The start of an error response's body, for the message; empty when it cannot be read."""
    try:
        return err.read()[:300].decode("utf-8", "replace").strip() if err.fp else ""
    except (http.client.HTTPException, OSError):
        return ""
