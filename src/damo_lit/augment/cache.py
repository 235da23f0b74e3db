"""An on-disk cache of LLM replies, keyed by a hash of everything that decides the reply.

A rerun of the same input with the same model, prompt and generation parameters then sends
no request at all. One small file per reply, written atomically (temporary file + rename),
so that concurrent threads and a crash never leave a torn entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from damo_lit.augment.backend import BackendError


def cache_key(**parts: Any) -> str:
    """A stable SHA-256 of JSON-serialisable parts (model, messages, generation params, ...)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplyCache:
    """Replies stored as `<dir>/<key[:2]>/<key>.json`; a None directory disables caching."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory else None

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.json"

    def prepare(self) -> None:
        """Make the directory before any request is sent: a cache_dir that cannot hold replies (a
        file, a read-only folder) would otherwise fail in a worker once the reply came, losing it."""
        if self.directory is None:
            return
        if self.directory.exists() and not self.directory.is_dir():
            raise self._error("is a file, not a folder")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise self._error(f"cannot be made a folder ({err.strerror}: {err.filename})") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise self._error("is a folder that this user cannot write to")

    def _error(self, what: str) -> BackendError:
        return BackendError(f"backend.cache_dir={self.directory} {what}; expected a writable folder (made when "
                            "missing), or backend.cache_dir=null to turn the cache off")

    def get(self, key: str) -> str | None:
        """The cached reply text, or None (also for an unreadable entry, which is then regenerated)."""
        if self.directory is None:
            return None
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        reply = entry.get("reply") if isinstance(entry, dict) else None
        return reply if isinstance(reply, str) else None

    def put(self, key: str, reply: str, **info: Any) -> None:
        """Store a reply (and some context for people who read the cache) atomically."""
        if self.directory is None:
            return
        try:
            _write_atomically(self._path(key), {"reply": reply, **info})
        except OSError as err:  # the folder went away or filled up during the run
            raise self._error(f"could not store a reply ({err})") from None


def _write_atomically(path: Path, entry: dict[str, Any]) -> None:
    """A temporary file renamed into place: a reader never sees a half-written entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entry, handle, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
