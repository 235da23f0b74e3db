"""`damo-cache kind=stream ...` (its main, the words given) whose first stored item presses Ctrl-C:
the litdata writer process that stores it sends SIGINT to its whole process group, as a
terminal does (run by test_stream_writes.py as a script, in a session of its own)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from damo_lit.data.streaming import StreamItem


class InterruptingItem(StreamItem):
    """StreamItem that, in the writer process, sends SIGINT to the process group after its item."""

    def __call__(self, entry: tuple[str, str, str]) -> dict[str, Any]:
        item = super().__call__(entry)
        os.killpg(os.getpgrp(), signal.SIGINT)
        return item


def main() -> int:
    # A job started in the background gets SIGINT ignored: a terminal's command has Python's handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import damo_lit.data.streaming as streaming
    from damo_lit.cli.cache import main as damo_cache
    from stream_interrupt_worker import InterruptingItem as Importable  # by module name: the writer unpickles it

    streaming.StreamItem = Importable  # type: ignore[misc]
    return damo_cache(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
