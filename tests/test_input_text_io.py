"""informative_dialogue.text_io: the strict line reader of line-aligned files and all-or-nothing
writing of a set of files (issue #17)."""
from __future__ import annotations

import gzip
import io
import os
import stat
from pathlib import Path

import pytest

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from informative_dialogue.text_io import OutputSet, read_lines, staged_directory, write_json_atomic


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------ reading


def test_only_newline_ends_a_line(tmp_path: Path) -> None:
    assert read_lines(write(tmp_path / "a", b"")) == []
    assert read_lines(write(tmp_path / "a", b"x\ny\n")) == ["x", "y"]
    assert read_lines(write(tmp_path / "a", b"x\ny")) == ["x", "y"]  # last line without \n
    assert read_lines(write(tmp_path / "a", b"x\n\n")) == ["x", ""]  # an empty line is a line
    assert read_lines(write(tmp_path / "a", b"x\r\ny\r\n")) == ["x", "y"]  # CRLF line ends
    # U+2028, form feed and vertical tab stay inside their line (str.splitlines would split)
    text = "a\u2028b\x0cc\x0bd\u0085e"
    assert read_lines(write(tmp_path / "a", (text + "\n").encode())) == [text]


def test_lone_carriage_return_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "valid.src", b"a b\nc \rd\n")  # the repro
    with pytest.raises(CorpusError, match=r"valid\.src:2: carriage return \(\\r\) inside the line at column 3"):
        read_lines(path)
    with pytest.raises(CorpusError, match=r"b:1: carriage return"):
        read_lines(write(tmp_path / "b", b"x\r\r\n"))  # text mode would read "x", ""
    assert read_lines(write(tmp_path / "c", b"x\r")) == ["x"]  # at the very end: one line for every reader
    try:
        read_lines(path)
    except CorpusError as err:
        assert (err.path, err.line) == (str(path), 2)


def test_non_utf8_is_an_error_naming_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tgt", "ok\ncafé\n".encode() + b"caf\xe9 au lait\n")
    with pytest.raises(CorpusError, match=r"t\.tgt:3: not UTF-8 text: byte 0xe9 at column 4"):
        read_lines(path)
    # not a bare UnicodeDecodeError, but still a ValueError (exit status 2 in the console scripts)
    with pytest.raises(ValueError):
        read_lines(path)


def test_stream_reader_and_locating_a_decode_error(tmp_path: Path) -> None:
    assert list(text_io.iter_stream_lines(io.BytesIO(b"a\r\nb\n"), "<mem>")) == ["a", "b"]
    gz = tmp_path / "x.jsonl.gz"
    with gzip.open(gz, "wb") as f:
        f.write(b'{"a": 1}\n{"b": "\xff"}\n')
    with gzip.open(gz, "rb") as raw:
        err = text_io.not_utf8_error(gz, raw)
    assert isinstance(err, CorpusError) and err.line == 2 and "byte 0xff" in str(err)


# ------------------------------------------------------------------------------------ writing


def test_output_set_commits_all_files_together(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputSet() as outputs:
        stage = Path(outputs.directory(out))
        (stage / "train.src").write_text("a\n")
        (stage / "sub").mkdir()
        (stage / "sub" / "train.ids").write_text("0\n")
        single = outputs.path(tmp_path / "x.align")
        Path(single).write_text("1 2\n")
        assert not (out / "train.src").exists() and not (tmp_path / "x.align").exists()  # not yet
    assert (out / "train.src").read_text() == "a\n"
    assert (out / "sub" / "train.ids").read_text() == "0\n"
    assert (tmp_path / "x.align").read_text() == "1 2\n"
    assert sorted(p.name for p in out.iterdir()) == ["sub", "train.src"]  # no staging folder left
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # the usual permissions (not a temporary file's 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.align").stat().st_mode) == 0o666 & ~umask


def test_output_set_failure_leaves_the_previous_output_intact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "test.src").write_text("old\n")
    (out / "stats.json").write_text("{}")
    with pytest.raises(RuntimeError, match="boom"):
        with staged_directory(out) as stage:
            Path(stage, "test.src").write_text("new, half written")
            Path(stage, "valid.src").write_text("new\n")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "test.src"]
    assert (out / "test.src").read_text() == "old\n"
    # a destination folder the failed run created is removed again
    fresh = tmp_path / "fresh" / "deeper"
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(fresh) as stage:
            Path(stage, "a").write_text("x")
            raise KeyboardInterrupt
    assert not (tmp_path / "fresh").exists()


def test_atomic_json_and_text(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert text_io.write_text_atomic(tmp_path / "t.txt", ["x", "", "y"]) == 3
    assert (tmp_path / "t.txt").read_text() == "x\n\ny\n"

    def failing():
        yield "first"
        raise ValueError("generator failed")

    with pytest.raises(ValueError, match="generator failed"):
        text_io.write_text_atomic(tmp_path / "t.txt", failing())
    assert (tmp_path / "t.txt").read_text() == "x\n\ny\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
