"""Knowledge ids in alignment files (issue #17): checked against the knowledge table where it is
known, and anything but ASCII digits is a CorpusError naming the file and line (no fairseq)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep.ki import binarize
from data_prep.corpora.wow import main as prepare_wow
from informative_dialogue.errors import CorpusError
from informative_dialogue.ki.alignment_text import is_knowledge_id, read_alignments
from informative_dialogue.ki.alignments import KnowledgeAlignments


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    source = tmp_path / "train.src"
    source.write_text("the cat sat\na dog\nhello\n")
    align = tmp_path / "train.align"
    align.write_text("0 5 0\n3 0\n0\n")
    table = tmp_path / "knowledge_table.npy"
    np.save(table, np.zeros((6, 4), dtype=np.float32))  # ids 0..5 (row 0: no knowledge)
    return {"source": source, "align": align, "table": table, "dest": tmp_path / "data-bin"}


def run(files: dict[str, Path], *extra: str) -> dict:
    return binarize.main(["--align", str(files["align"]), "--source", str(files["source"]),
                          "--destdir", str(files["dest"]), "--split", "train", *extra])


def test_ids_within_the_table_are_binarised(files: dict[str, Path]) -> None:
    summary = run(files, "--ki-knowledge-table", str(files["table"]))
    assert summary["checked_table_rows"] == 6 and summary["max_id"] == 5
    assert [r.tolist() for r in KnowledgeAlignments.load(files["dest"] / "train.align")] == [[0, 5, 0], [3, 0], [0]]
    assert run(files, "--num-knowledge", "5")["checked_table_rows"] == 6  # N items: ids 0..N


def test_id_beyond_the_table_names_file_and_first_line(files: dict[str, Path]) -> None:
    files["align"].write_text("0 5 0\n3 6\n0\n")
    with pytest.raises(CorpusError, match=r"train\.align:2: knowledge id 6 is out of range: the knowledge table "
                       r".*knowledge_table\.npy has 6 rows \(ids 0\.\.5\)"):
        run(files, "--ki-knowledge-table", str(files["table"]))
    assert not (files["dest"] / "train.align.ids.npy").exists()  # nothing written
    with pytest.raises(CorpusError, match=r"train\.align:2: knowledge id 6 is out of range"):
        run(files, "--num-knowledge", "5")
    run(files, "--num-knowledge", "6")
    run(files)  # without a table nothing is known about the ids: accepted as before


def test_a_table_that_is_not_a_2d_npy_is_named(files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(CorpusError, match=r"bad\.npy: not a readable \.npy knowledge table"):
        run(files, "--ki-knowledge-table", str(bad))
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(3))
    with pytest.raises(CorpusError, match=r"flat\.npy: expected a 2-D knowledge table"):
        run(files, "--ki-knowledge-table", str(flat))


@pytest.mark.parametrize("field", ["\u00b2", "\u0663", "-1", "3.0", "0x1"])
def test_only_ascii_digits_are_ids(files: dict[str, Path], field: str) -> None:
    assert is_knowledge_id("042") and not is_knowledge_id(field)
    files["align"].write_text(f"0 5 0\n3 {field}\n0\n")  # "²".isdigit() is True, int("²") fails
    with pytest.raises(CorpusError, match=r"train\.align:2: expected non-negative integer knowledge ids"):
        read_alignments(files["align"], files["source"])
    with pytest.raises(CorpusError, match=r"train\.align:2:"):
        run(files)


def test_an_id_beyond_64_bits_is_named(files: dict[str, Path]) -> None:
    files["align"].write_text(f"0 5 0\n3 {2 ** 64}\n0\n")
    with pytest.raises(CorpusError, match=r"train\.align:2: knowledge id \d+ does not fit in 64 bits"):
        read_alignments(files["align"])


def test_prepare_wow_voken_with_a_superscript_digit(tmp_path: Path) -> None:
    (tmp_path / "valid.src").write_text("a b\nc\n")
    (tmp_path / "valid.tgt").write_text("x\ny\n")
    (tmp_path / "valid.voken.src").write_text("0 7\n\u00b2\n")
    with pytest.raises(CorpusError, match=r"valid\.voken\.src:2: expected non-negative integer knowledge ids"):
        prepare_wow(["--format", "ki", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()

