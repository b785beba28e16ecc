"""The one console-script convention of the project's commands.

Every command module defines ``main(argv=None)``, which parses ``argv``, does the work and returns
its statistics (a dict or list, for callers and tests) or an int exit status, and ``cli = console_script(main)``, which
``setup.py`` names as the entry point. ``cli``:

- exits 0 on success, or with ``main``'s int status (setuptools' script runs ``sys.exit(entry())``, and ``sys.exit`` of a dict
  would print it and exit 1);
- on an expected input error (``ValueError`` such as :class:`~informative_dialogue.errors.CorpusError`,
  or ``OSError`` such as a missing file) prints one line, ``prog: message`` (the message names the
  file and line), and exits 2; ``--verbose`` on the command line shows the full traceback instead.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

EXIT_INPUT_ERROR = 2
EXPECTED_ERRORS = (ValueError, OSError)


LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


class CommandFormatter(logging.Formatter):
    """The log format of the commands; with ``prog``, an ERROR record (a command that reports an
    input error itself and returns 2) is the one line ``prog: message``, as
    :func:`console_script` prints it."""

    def __init__(self, prog: str | None = None):
        super().__init__(LOG_FORMAT)
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        if self.prog and record.levelno >= logging.ERROR and not record.exc_info:
            return f"{self.prog}: {record.getMessage()}"
        return super().format(record)


def setup_logging(verbose: bool = False, prog: str | None = None) -> None:
    """Configure root logging for a command-line entry point (once per process: nothing changes
    where the root logger already has a handler). ``prog``: see :class:`CommandFormatter`."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(CommandFormatter(prog))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def console_script(main: Callable[[], object]) -> Callable[[], None]:
    """The console entry point of ``main`` (see the module docstring)."""

    def entry() -> None:
        try:
            status = main()
        except EXPECTED_ERRORS as err:
            if "--verbose" in sys.argv[1:]:
                raise
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else main.__module__
            sys.stderr.write(f"{prog}: {err}\n")
            sys.exit(EXIT_INPUT_ERROR)
        if isinstance(status, int) and not isinstance(status, bool) and status != 0:
            sys.exit(status)

    entry.__doc__ = f"Console entry point of {main.__module__}.main (exit 0 on success, 2 on input errors)."
    return entry
