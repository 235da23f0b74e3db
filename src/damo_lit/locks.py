"""An inter-process lock per folder, for work that fills a shared folder (the synthetic set, the
tiny model parts): two runs started side by side (e.g. `exp.jobs=2` on a fresh clone) would
otherwise build the same files at once and replace each other's folder while it is read."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


@contextmanager
def folder_lock(folder: Path, activity: str) -> Iterator[None]:
    """Hold `.{folder name}.{activity}.lock` beside `folder` for the block; a second process
    waits (and says so once) until the first is done."""
    from filelock import FileLock, Timeout

    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.parent / f".{folder.name}.{activity}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is %s %s; waiting for it", activity, folder)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
