"""kid-convert-dpr: DPR's psgs_w100.tsv (id, text, title; CSV quoting) -> the tsv collection."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from informative_dialogue.errors import CorpusError
from data_prep.kid.collection import load_collection
from data_prep.kid.dpr_passages import convert_dpr_passages, main

DPR_ROWS = ('id\ttext\ttitle\n'
            '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n'
            '2\t"The  Nile\nis a river."\tNile\n'
            '3\tPlain text\tSome title\n')


def test_quotes_newlines_and_whitespace(tmp_path: Path) -> None:
    src, dst = tmp_path / "psgs_w100.tsv", tmp_path / "out.tsv"
    src.write_text(DPR_ROWS, encoding="utf-8")
    assert convert_dpr_passages(src, dst, progress=False) == 3
    assert dst.read_text(encoding="utf-8").splitlines() == [
        '1\tAaron\tAaron Aaron ( or ; "Ahärôn") is a prophet', "2\tNile\tThe Nile is a river.",
        "3\tSome title\tPlain text"]
    assert [p.id for p in load_collection(dst)] == ["1", "2", "3"]
    assert not (tmp_path / "out.tsv.tmp").exists()


def test_gzipped_input_gives_the_same_collection(tmp_path: Path) -> None:
    plain, gz = tmp_path / "p.tsv", tmp_path / "p.tsv.gz"
    plain.write_text(DPR_ROWS, encoding="utf-8")
    with gzip.open(gz, "wt", encoding="utf-8", newline="") as f:
        f.write(DPR_ROWS)
    convert_dpr_passages(plain, tmp_path / "a.tsv", progress=False)
    assert main(["--input", str(gz), "--output", str(tmp_path / "b.tsv"), "--no-progress"]) == {"passages": 3}
    assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()


def test_wrong_header_and_short_row_name_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "p.tsv"
    src.write_text("id\ttitle\ttext\n1\tAaron\tAaron is\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"p\.tsv:1: expected the DPR header"):
        convert_dpr_passages(src, tmp_path / "o.tsv", progress=False)
    # the quoted newline of passage 2 spans lines 3-4, so passage 3 is on line 5 and the bad row on 6
    src.write_text(DPR_ROWS + "4\tno title\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"p\.tsv:6: expected 3 tab-separated fields .* got 2"):
        convert_dpr_passages(src, tmp_path / "o.tsv", progress=False)
    assert not (tmp_path / "o.tsv").exists() and not (tmp_path / "o.tsv.tmp").exists()


def test_output_must_be_tsv(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must end in .tsv"):  # the console script: one line, exit 2
        main(["--input", "x.tsv", "--output", str(tmp_path / "o.jsonl")])
