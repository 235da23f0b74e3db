"""Turn the key=value words given to `make` back into Hydra overrides, in the order typed.

make hands command-line variable assignments to recipes in $(MAKEOVERRIDES): in reverse order,
separated by spaces, with spaces inside a value escaped as `\\ `, backslashes doubled and `$` doubled. The Makefile
exports that string as DAMO_MAKE_OVERRIDES; this module parses it and runs the given command
with the overrides appended. Words whose key is an upper-case make variable (ARGS, PYTEST_ARGS,
...) are not Hydra overrides and are not forwarded; ARGS="..." is split like a shell line and
appended, for overrides that are not key=value words (`~logger`, `+key=...` with quoting).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys

ENV_VAR = "DAMO_MAKE_OVERRIDES"
_MAKE_VARIABLE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def split_make_overrides(raw: str) -> list[str]:
    """Split $(MAKEOVERRIDES) into words: unescaped spaces separate; make escapes a space as `\\ `
    and a backslash as `\\\\`, so a backslash gives the character after it (`a\\,b` typed arrives
    as `a\\\\,b` and goes on as `a\\,b`, as damo-train given it directly would get it)."""
    words: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            current.append(raw[i + 1])
            i += 2
            continue
        if ch == " ":
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
        i += 1
    if current:
        words.append("".join(current))
    return [w.replace("$$", "$") for w in words]


def hydra_overrides(raw: str) -> list[str]:
    """Hydra overrides in the order the user typed them, from make's reversed list."""
    forwarded: list[str] = []
    extra: list[str] = []
    for word in reversed(split_make_overrides(raw)):
        key, sep, value = word.partition("=")
        if not sep:
            continue
        if _MAKE_VARIABLE.match(key):
            if key == "ARGS":
                extra.extend(shlex.split(value))
            continue
        forwarded.append(word)
    return forwarded + extra


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        sys.exit("usage: python -m damo_lit.cli.makeargs -- COMMAND [ARG...]  (reads $" + ENV_VAR + ")")
    command = argv + hydra_overrides(os.environ.get(ENV_VAR, ""))
    if os.environ.get("DAMO_DRY_RUN"):
        print(json.dumps(command))
        return
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
