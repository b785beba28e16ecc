"""Errors of malformed input, shared by the core formats and the data-preparation commands."""
from __future__ import annotations

import os


class CorpusError(ValueError):
    """Malformed corpus input. The message names the file, the line (where there is one) and
    what was expected."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        where = f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
        super().__init__(f"{where}: {message}")
        self.path = os.fspath(path)
        self.line = line
