"""examples/common/subset.sh: every N-th example of a split, side files included, binarised with
the corpus' dictionaries so that the binary examples equal the full split's at those indices."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SUBSET_SH = REPO_ROOT / "examples" / "common" / "subset.sh"


def write_lines(path: Path, rows: list[str]) -> None:
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    work = tmp_path / "w"
    tok = work / "tok"
    tok.mkdir(parents=True)
    for split, n in (("train", 6), ("test", 7)):
        write_lines(tok / f"{split}.src", [f"hello number {i} how are you" for i in range(n)])
        write_lines(tok / f"{split}.tgt", [f"fine {i} thanks" for i in range(n)])
    write_lines(tok / "test.knowledge", [f"fact {i}" for i in range(7)])
    subprocess.run(["fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
                    "--trainpref", str(tok / "train"), "--testpref", str(tok / "test"),
                    "--destdir", str(work / "data-bin"), "--joined-dictionary", "--workers", "1"],
                   check=True, capture_output=True)
    return work


def run_subset(work: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SUBSET_SH)], capture_output=True, text=True,
                          env=dict(os.environ, WORK=str(work), **env))


def load_split(data_bin: Path, split: str, side: str) -> list[list[int]]:
    from fairseq.data import data_utils

    dataset = data_utils.load_indexed_dataset(str(data_bin / f"{split}.src-tgt.{side}"), None)
    return [dataset[i].tolist() for i in range(len(dataset))]


def test_every_third_example_with_side_files_and_binary(corpus: Path) -> None:
    proc = run_subset(corpus, FROM="test", EVERY="3", NAME="test3")
    assert proc.returncode == 0, proc.stderr
    tok = corpus / "tok"
    assert (tok / "test3.src").read_text().splitlines() == [f"hello number {i} how are you" for i in (0, 3, 6)]
    assert (tok / "test3.knowledge").read_text().splitlines() == ["fact 0", "fact 3", "fact 6"]
    for side in ("src", "tgt"):
        full = load_split(corpus / "data-bin", "test", side)
        assert load_split(corpus / "data-bin", "test3", side) == [full[i] for i in (0, 3, 6)]
    assert "test3: 3 of the 7 examples of test" in proc.stdout


def test_side_file_with_other_line_count_is_an_error(corpus: Path) -> None:
    write_lines(corpus / "tok" / "test.knowledge", ["fact 0"])
    proc = run_subset(corpus, FROM="test", EVERY="2")
    assert proc.returncode != 0
    assert "test.knowledge has 1 lines" in proc.stderr and "has 7" in proc.stderr


def test_bad_every_is_an_error(corpus: Path) -> None:
    proc = run_subset(corpus, FROM="test", EVERY="0")
    assert proc.returncode != 0 and "EVERY must be a positive integer" in proc.stderr
