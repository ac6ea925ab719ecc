"""Command line: argument parsing only; every command calls the library.

Every bad value ends in one line on stderr (``longtail: error: ...``) and exit code 2. An option
not given is not passed on: the configuration dataclasses (``longtail.config``) hold every
default, and the help texts show them from there.

- ``longtail.cli.options``: the options several commands share, and the defaults their help states;
- ``longtail.cli.parser``: ``build_parser``, each command and its own options;
- ``longtail.cli.commands``: the command bodies (``COMMANDS``) and what to do after Ctrl-C (``INTERRUPTED``).

Each command runs under the process's host memory policy (``longtail.allocator.keep_freed_memory``).
"""

from __future__ import annotations

import sys

from longtail.allocator import keep_freed_memory
from longtail.cli.commands import COMMANDS, INTERRUPTED, INTERRUPTED_DEFAULT
from longtail.cli.parser import build_parser
from longtail.errors import LongtailError

__all__ = ["COMMANDS", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    command = None
    keep_freed_memory()
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        COMMANDS[command](args)
    except LongtailError as error:
        message = " ".join(part.strip() for part in str(error).splitlines() if part.strip())  # always one line
        print(f"longtail: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"longtail: interrupted; {INTERRUPTED.get(command, INTERRUPTED_DEFAULT)}", file=sys.stderr)
        return 130
    return 0
