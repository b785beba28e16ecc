"""Line-aligned text files: one strict reader, and all-or-nothing writing of a set of files.

Reading (:func:`read_lines`, :func:`iter_lines`, :func:`iter_stream_lines`)
    The project's corpus files are *line-aligned*: line i of ``train.src``, ``train.tgt``,
    ``train.knowledge``, ``train.align``, a reference file, ... all belong to example i. Only
    ``\\n`` ends a line (a ``\\r`` just before it, i.e. a CRLF line end, is removed with it); a
    final ``\\n`` ends the last line and does not start an empty one, so the line count equals
    ``wc -l`` (plus one for a last line without ``\\n``). Characters such as U+2028 or form
    feeds stay inside their line.

    A *lone* carriage return (``\\r`` not followed by ``\\n``) inside a line is an error
    (:class:`~informative_dialogue.errors.CorpusError` naming the file and the 1-based line),
    not a line break and not a character to keep: Python's text-mode reading (universal
    newlines) and therefore ``fairseq-preprocess``/``fairseq-interactive`` treat a lone ``\\r`` as a
    line end, so the same file would have one line more for them than for ``wc -l``, and every
    later pair would be shifted against its partner file. Refusing it is the one choice under
    which every reader agrees; clean such a file first (e.g. ``tr '\\r' ' '``).

    Bytes that are not UTF-8 are an error naming the file, the line and the column, never a
    bare ``UnicodeDecodeError``.

Writing (:class:`OutputSet`, :func:`staged_directory`, :func:`write_text_atomic`, :func:`write_json_atomic`)
    A command that writes several files (``{split}.src/.tgt/.knowledge``, ``stats.json``,
    an alignment file and its ``.stats.json``, ...) stages them under temporary names beside
    their destinations and moves them into place (``os.replace``, atomic per file) only when
    all were written. If the command fails, the temporary files are removed and the previous
    output is left exactly as it was: never a half-written file, never a new file next to a
    stale one from an earlier run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from typing import IO, Any, Iterable, Iterator

from informative_dialogue.errors import CorpusError

logger = logging.getLogger(__name__)

LONE_CR_MESSAGE = (
    "only \\n or \\r\\n may end a line of a line-aligned file "
    "(text-mode readers such as fairseq-preprocess would split the line here and shift every later line); "
    "remove it, e.g. with tr '\\r' ' '"
)


# --------------------------------------------------------------------------------------------
# reading


def decode_line(raw: bytes, path: str | os.PathLike, line_no: int) -> str:
    """One line's bytes (its ``\\n`` removed) as text: a trailing ``\\r`` is dropped; a lone
    ``\\r`` or bytes that are not UTF-8 raise :class:`CorpusError` naming ``path`` and
    ``line_no``."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    cr = raw.find(b"\r")
    if cr >= 0:
        column = len(raw[:cr].decode("utf-8", errors="replace")) + 1
        raise CorpusError(path, f"carriage return (\\r) inside the line at column {column}: {LONE_CR_MESSAGE}", line_no)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = len(raw[: exc.start].decode("utf-8", errors="replace")) + 1
        raise CorpusError(
            path, f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {column} ({exc.reason})", line_no
        ) from None


def iter_stream_lines(stream: IO[bytes], name: str | os.PathLike) -> Iterator[str]:
    """The lines of a binary stream (a file opened ``"rb"``, ``gzip.open(path)``,
    ``sys.stdin.buffer``), decoded and checked as described in the module docstring; ``name``
    is the file named in errors."""
    for line_no, raw in enumerate(stream, 1):
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        yield decode_line(raw, name, line_no)


def iter_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of the file ``path``, one at a time (see the module docstring). A missing file
    is a ``FileNotFoundError`` naming it."""
    with open(path, "rb") as f:
        yield from iter_stream_lines(f, os.fspath(path))


def read_lines(path: str | os.PathLike) -> list[str]:
    """All lines of the file ``path`` (see the module docstring): ``[]`` for an empty file."""
    return list(iter_lines(path))


def not_utf8_error(path: str | os.PathLike, stream: IO[bytes] | None = None) -> CorpusError:
    """The CorpusError (file, line, column) for the first line of ``path`` (or of ``stream``,
    read from its start, e.g. a ``gzip.open`` of ``path``) that is not UTF-8. For readers that
    decode whole chunks (``csv``, ``json``) and only learn of a bad byte without its line;
    a generic CorpusError naming the file if every line decodes."""
    owned = stream is None
    f = open(path, "rb") if owned else stream
    try:
        for line_no, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                try:
                    decode_line(raw.rstrip(b"\r\n"), path, line_no)
                except CorpusError as err:
                    return err
        return CorpusError(path, "not UTF-8 text")
    finally:
        if owned:
            f.close()


def count_lines(path: str | os.PathLike) -> int:
    """The number of lines :func:`read_lines` would return (the file is checked the same way)."""
    return sum(1 for _ in iter_lines(path))


# --------------------------------------------------------------------------------------------
# all-or-nothing writing


def _temp_name(dest: str) -> str:
    """``dir/.name.<pid>.<random>.partial`` beside ``dest`` (not created: the writer creates it
    with the usual permissions)."""
    directory, name = os.path.split(os.path.abspath(dest))
    return os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.partial")


class OutputSet:
    """Files written all together or not at all.

    ``path(dest)`` returns a temporary file name beside ``dest`` to write to; ``directory(dest_dir)``
    returns a temporary folder inside ``dest_dir`` whose files (at any depth) stand for the files at
    the same relative paths under ``dest_dir``. :meth:`commit` moves every staged file onto its
    destination with ``os.replace``; :meth:`abort` removes them all. As a context manager the set
    commits when the block ends normally and aborts on any exception (``KeyboardInterrupt``
    included), which it re-raises::

        with OutputSet() as out:
            stage = out.directory(args.output)
            write_split(stage, "train", examples)   # writes stage/train.src, ...
            write_stats(stage, stats)
        # here every file is in args.output; after an error none is, and the old ones are intact

    Temporary names start with ``.`` (``glob('*')`` does not see them) and end in ``.partial``.
    """

    def __init__(self) -> None:
        self._files: dict[str, str] = {}  # destination -> temporary file
        self._dirs: dict[str, str] = {}  # destination folder -> temporary folder
        self._created: list[str] = []  # destination folders this set created (removed if left empty)
        self._done = False

    def _make_parent(self, directory: str) -> None:
        missing = []
        d = directory
        while d and not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        os.makedirs(directory, exist_ok=True)
        self._created.extend(reversed(missing))

    def path(self, dest: str | os.PathLike) -> str:
        """A temporary file name beside ``dest`` (the caller creates the file) that becomes
        ``dest`` on commit. Its name does not end like ``dest`` (``np.save`` would append
        ``.npy``: write through an open file object)."""
        dest = os.path.abspath(os.fspath(dest))
        if dest in self._files:
            return self._files[dest]
        self._make_parent(os.path.dirname(dest))
        self._files[dest] = _temp_name(dest)
        return self._files[dest]

    def directory(self, dest_dir: str | os.PathLike) -> str:
        """A temporary folder (inside ``dest_dir``, created) standing for ``dest_dir``."""
        dest_dir = os.path.abspath(os.fspath(dest_dir))
        if dest_dir in self._dirs:
            return self._dirs[dest_dir]
        self._make_parent(dest_dir)
        self._dirs[dest_dir] = tempfile.mkdtemp(prefix=".staging.", suffix=".partial", dir=dest_dir)
        return self._dirs[dest_dir]

    def _pending(self) -> list[tuple[str, str]]:
        """(temporary, destination) of every staged file."""
        moves = [(tmp, dest) for dest, tmp in self._files.items()]
        for dest_dir, stage in self._dirs.items():
            for root, dirs, files in os.walk(stage):
                dirs.sort()
                rel = os.path.relpath(root, stage)
                for name in sorted(files):
                    moves.append((os.path.join(root, name), os.path.normpath(os.path.join(dest_dir, rel, name))))
        return moves

    def commit(self) -> list[str]:
        """Move every staged file into place; returns the destinations. Each file is flushed to
        disk first, so the destinations only ever hold complete files."""
        if self._done:
            raise RuntimeError("this OutputSet was already committed or aborted")
        moves = self._pending()
        for tmp, dest in moves:
            if not os.path.isfile(tmp):
                raise RuntimeError(f"{dest}: staged output {tmp} was never written")
            if os.path.isdir(dest):
                raise IsADirectoryError(f"{dest}: a folder is in the way of an output file")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        for tmp, dest in moves:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(tmp, dest)
        for stage in self._dirs.values():
            shutil.rmtree(stage, ignore_errors=True)
        self._done = True
        return [dest for _, dest in moves]

    def abort(self) -> None:
        """Remove every staged file (the destinations are untouched, except any a failed
        :meth:`commit` already moved)."""
        for tmp in self._files.values():
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
        for stage in self._dirs.values():
            shutil.rmtree(stage, ignore_errors=True)
        for d in reversed(self._created):  # folders made for outputs that never came
            try:
                os.rmdir(d)
            except OSError:
                break
        self._done = True

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done:
            return
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
            if not isinstance(exc, Exception):
                logger.warning("interrupted: no output written, earlier output left as it was")


def staged_directory(dest_dir: str | os.PathLike) -> "StagedDirectory":
    """``with staged_directory(out) as stage:`` write into ``stage``; the files move into ``out``
    when the block ends normally (see :class:`OutputSet`)."""
    return StagedDirectory(dest_dir)


class StagedDirectory:
    """Context manager of :func:`staged_directory`: an :class:`OutputSet` with one folder."""

    def __init__(self, dest_dir: str | os.PathLike):
        self.outputs = OutputSet()
        self.dest_dir = dest_dir

    def __enter__(self) -> str:
        return self.outputs.directory(self.dest_dir)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.outputs.__exit__(exc_type, exc, tb)


def write_text_atomic(path: str | os.PathLike, lines: Iterable[str]) -> int:
    """Write ``lines`` (each followed by ``\\n``) to ``path`` all or nothing; returns the count."""
    n = 0
    with OutputSet() as out:
        with open(out.path(path), "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
                n += 1
    return n


def write_json_atomic(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``obj`` as JSON (default: indented, sorted keys) to ``path`` all or nothing."""
    kwargs = {"indent": 2, "sort_keys": True, **dump_kwargs}
    with OutputSet() as out:
        with open(out.path(path), "w", encoding="utf-8") as f:
            json.dump(obj, f, **kwargs)
            f.write("\n")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes (read ``chunk`` bytes at a time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
