"""Expected input errors on the command line (issue #17): each console script, run as a separate
process on bad input, exits with status 2 and reports the error in one stderr line
``prog: file[:line]: what was expected`` -- no traceback -- and imports neither fairseq nor torch
on the way (each call takes about a second).

The scripts run through their ``setup.py`` entry points exactly as the installed console scripts
do (``sys.exit(cli())`` with ``sys.argv[0]`` the script name); the issue's own repro also runs the
installed ``tokenize-dialog`` where it is on PATH.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

ENTRY_POINTS = {name: (module, attr) for name, module, attr in
                re.findall(r'"([\w-]+)=([\w.]+):(\w+)"', (REPO_ROOT / "setup.py").read_text())}
HEAVY = ("fairseq", "torch")
# the console script, as setuptools' wrapper runs it, recording the heavy modules it imported
RUNNER = """
import atexit, importlib, json, os, sys
def _record():
    with open(os.environ["IMPORTED_OUT"], "w") as f:
        json.dump(sorted(m for m in {heavy!r} if m in sys.modules), f)
atexit.register(_record)
module, attr, prog = sys.argv[1:4]
sys.argv = [prog, *sys.argv[4:]]
sys.exit(getattr(importlib.import_module(module), attr)())
""".format(heavy=HEAVY)
LOG_LINE = re.compile(r"^\S+ \S+ \| (DEBUG|INFO|WARNING) \| ")  # the commands' log format
PROGRESS = re.compile(r"\[\d+:\d\d(<|,|\])")  # a tqdm progress bar ("[00:00<?, ?it/s]")


def run_script(prog: str, args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    module, attr = ENTRY_POINTS[prog]
    imported = tmp_path / f"{prog}.imported.json"
    env = dict(os.environ, IMPORTED_OUT=str(imported),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", RUNNER, module, attr, prog, *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    return proc, json.loads(imported.read_text()) if imported.exists() else ["<not recorded>"]


def assert_one_line_error(proc: subprocess.CompletedProcess, prog: str, expected: str) -> None:
    """Exit status 2; stderr holds no traceback and exactly one error line, ``prog: ...``, matching
    ``expected`` (a regular expression); any other line is an ordinary log line or a progress bar."""
    err = proc.stderr
    assert proc.returncode == 2, f"exit status {proc.returncode}\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert re.fullmatch(expected, errors[0]), f"{errors[0]!r} does not match {expected!r}"
    others = [line for line in lines[:-1] if not (LOG_LINE.match(line) or PROGRESS.search(line))]
    assert not others, f"unexpected stderr lines: {others}"


# ------------------------------------------------------------------------------------ cases
# each: (prog, make(tmp_path) -> (args, expected error line as a regex))


def tokenize_lone_cr(tmp: Path) -> tuple[list[str], str]:
    (tmp / "x").mkdir()
    (tmp / "x" / "valid.src").write_bytes(b"a b\nc \rd\n")
    (tmp / "x" / "valid.tgt").write_bytes(b"r1\nr2\n")
    return ["--input", "x", "--output", "y"], r"tokenize-dialog: x/valid\.src:2: carriage return .*"


def dailydialog_corrupt_zip(tmp: Path) -> tuple[list[str], str]:
    (tmp / "dd").mkdir()
    (tmp / "dd" / "train.zip").write_bytes(b"PK\x03\x04 corrupt")
    return (["--input", "dd", "--output", "out", "--splits", "train"],
            r"prepare-dailydialog: dd/train\.zip: not a valid zip archive .*")


def dailydialog_non_utf8(tmp: Path) -> tuple[list[str], str]:
    (tmp / "dd").mkdir()
    with zipfile.ZipFile(tmp / "dd" / "test.zip", "w") as zf:
        zf.writestr("test/dialogues_test.txt", b"Hi . __eou__ Yo . __eou__\nCaf\xe9 . __eou__ Oui . __eou__\n")
    return (["--input", "dd", "--output", "out", "--splits", "test"],
            r"prepare-dailydialog: dd/test\.zip!test/dialogues_test\.txt:2: not UTF-8 text: byte 0xe9 .*")


def binarize_superscript(tmp: Path) -> tuple[list[str], str]:
    (tmp / "t.src").write_text("a b\nc\n")
    (tmp / "t.align").write_text("0 1\n\u00b2\n")
    return (["--align", "t.align", "--source", "t.src", "--destdir", "bin", "--split", "train"],
            r"ki-binarize-alignments: t\.align:2: expected non-negative integer knowledge ids, got '\u00b2' "
            r"\(ASCII digits 0-9 only\)")


def binarize_beyond_table(tmp: Path) -> tuple[list[str], str]:
    (tmp / "t.src").write_text("a b\nc\n")
    (tmp / "t.align").write_text("0 1\n9\n")
    np.save(tmp / "table.npy", np.zeros((5, 2), dtype=np.float32))
    return (["--align", "t.align", "--source", "t.src", "--destdir", "bin", "--split", "train",
             "--ki-knowledge-table", "table.npy"],
            r"ki-binarize-alignments: t\.align:2: knowledge id 9 is out of range: .*table\.npy has 5 rows .*")


def metrics_partial(tmp: Path) -> tuple[list[str], str]:
    (tmp / "gen.out").write_text("H-0\t-1\thello\nH-1\t-1\tbye\nTranslated 2 sentences (2 tokens)\n")
    (tmp / "ref.txt").write_text("hello\nbye\nmissing\n")
    return (["--gen-out", "gen.out", "--ref", "ref.txt"],
            r"dialog-metrics: gen\.out holds 2 examples but expected per ref\.txt \(3 lines\): 1 of the 3 expected "
            r"examples are missing \(ids 2\)\. A partial output is scored only with --allow-partial")


def bootstrap_partial(tmp: Path) -> tuple[list[str], str]:
    (tmp / "a.out").write_text("D-0\t-1\thello\nD-2\t-1\tbye\n")
    (tmp / "ref.txt").write_text("hello\nhi\nbye\n")
    return (["--a", "a.out", "--b", "a.out", "--ref", "ref.txt", "--metrics", "f1"],
            r"paired-bootstrap: a\.out holds 2 examples .*missing \(ids 1\).*--allow-partial")


def build_trie_lone_cr(tmp: Path) -> tuple[list[str], str]:
    (tmp / "c.tsv").write_text("p1\tTitle\tSome passage text .\n")
    (tmp / "r.jsonl").write_bytes(b'{"line": 0, "passages": [{"id": "p1", "score": 1.0}]}\r \n')
    return (["--retrieval", "r.jsonl", "--collection", "c.tsv", "--output", "t.jsonl"],
            r"kid-build-trie: r\.jsonl:1: carriage return .*")


def entropy_non_utf8(tmp: Path) -> tuple[list[str], str]:
    (tmp / "tok").mkdir()
    (tmp / "tok" / "train.src").write_text("a\nb\n")
    (tmp / "tok" / "train.tgt").write_bytes(b"x\ny\xff\n")
    return (["--input", "tok", "--output", "ent"],
            r"source-entropy: tok/train\.tgt:2: not UTF-8 text: byte 0xff at column 2 .*")


def wow_mini_fields(tmp: Path) -> tuple[list[str], str]:
    (tmp / "wow").mkdir()
    (tmp / "wow" / "test.pro_qa.txt").write_text("0\tonly a post\n")
    (tmp / "wow" / "test.sent_fact.txt").write_text("0\tno_fact\n")
    return (["--format", "mini", "--input", "wow", "--output", "out"],
            r"prepare-wow: wow/test\.pro_qa\.txt:1: expected 3 tab-separated fields .*")


def knowledge_base_bad_json(tmp: Path) -> tuple[list[str], str]:
    (tmp / "w.jsonl").write_text('{"title": "A", "text": "A is a letter."}\n{"title": "B", \n')
    return (["--output", "kb", "--wiki-jsonl", "w.jsonl"],
            r"build-knowledge-base: w\.jsonl:2: invalid JSON .*")


CASES: dict[str, tuple[str, Callable[[Path], tuple[list[str], str]]]] = {
    "tokenize-lone-cr": ("tokenize-dialog", tokenize_lone_cr),
    "dailydialog-corrupt-zip": ("prepare-dailydialog", dailydialog_corrupt_zip),
    "dailydialog-non-utf8": ("prepare-dailydialog", dailydialog_non_utf8),
    "binarize-superscript-digit": ("ki-binarize-alignments", binarize_superscript),
    "binarize-id-beyond-table": ("ki-binarize-alignments", binarize_beyond_table),
    "metrics-partial-output": ("dialog-metrics", metrics_partial),
    "bootstrap-partial-output": ("paired-bootstrap", bootstrap_partial),
    "build-trie-lone-cr": ("kid-build-trie", build_trie_lone_cr),
    "entropy-non-utf8": ("source-entropy", entropy_non_utf8),
    "wow-mini-fields": ("prepare-wow", wow_mini_fields),
    "knowledge-base-bad-json": ("build-knowledge-base", knowledge_base_bad_json),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_status_2(case: str, tmp_path: Path) -> None:
    prog, make = CASES[case]
    args, expected = make(tmp_path)
    proc, imported = run_script(prog, args, tmp_path)
    assert_one_line_error(proc, prog, expected)
    assert imported == [], f"{prog} imported {imported} on its way to an input error"


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    args, _ = tokenize_lone_cr(tmp_path)
    proc, _ = run_script("tokenize-dialog", [*args, "--verbose"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CorpusError" in proc.stderr


@pytest.mark.skipif(shutil.which("tokenize-dialog") is None, reason="the package's console scripts are not installed")
def test_installed_tokenize_dialog_refuses_the_issue_repro(tmp_path: Path) -> None:
    args, expected = tokenize_lone_cr(tmp_path)
    proc = subprocess.run(["tokenize-dialog", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert_one_line_error(proc, "tokenize-dialog", expected)
    assert not (tmp_path / "y").exists()
