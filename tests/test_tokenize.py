"""WordPiece / sentencepiece tokenisation and detokenisation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.corpora.detokenize import detokenize_sentencepiece, detokenize_wordpiece
from data_prep.corpora.tokenize import BertWordPiece, SentencePiece, main, tokenize_line
from informative_dialogue.errors import CorpusError


@pytest.fixture(scope="module")
def bert() -> BertWordPiece:
    return BertWordPiece()


def test_bert_wordpiece_is_lowercased_uncased_wordpiece(bert: BertWordPiece) -> None:
    assert tokenize_line("Tomatoes, Jalepenos and Café!", bert) == "tomatoes , ja ##le ##pen ##os and cafe !"


def test_keep_tokens_survive(bert: BertWordPiece) -> None:
    assert tokenize_line("Hi there __eou__ Hello", bert) == "hi there __eou__ hello"
    assert tokenize_line("__eou__", bert) == "__eou__"


def test_detokenize_wordpiece() -> None:
    assert detokenize_wordpiece("ja ##le ##pen ##os , bell") == "jalepenos , bell"
    assert detokenize_wordpiece("") == ""


def test_sentencepiece_train_encode_decode(tmp_path: Path) -> None:
    lines = [f"the cat number {i} sat on the mat __eou__ and the dog {i % 7} barked" for i in range(300)]
    sp = SentencePiece.train(lines, str(tmp_path / "spm"), vocab_size=60)
    pieces = tokenize_line("the cat sat __eou__ the dog barked", sp)
    assert "__eou__" in pieces.split()
    assert detokenize_sentencepiece(pieces) == "the cat sat __eou__ the dog barked"


def test_cli_tokenizes_every_field_and_copies_the_rest(tmp_path: Path) -> None:
    raw, tok = tmp_path / "raw", tmp_path / "tok"
    raw.mkdir()
    (raw / "test.src").write_text("Jalepenos ?\n")
    (raw / "test.tgt").write_text("Yes __eou__ No\n")
    (raw / "test.knowledge").write_text("\n")
    (raw / "stats.json").write_text("{}")
    main(["--input", str(raw), "--output", str(tok)])
    assert (tok / "test.src").read_text() == "ja ##le ##pen ##os ?\n"
    assert (tok / "test.tgt").read_text() == "yes __eou__ no\n"
    assert (tok / "test.knowledge").read_text() == "\n"
    assert (tok / "stats.json").exists()


def test_truncation_keeps_latest_context_and_first_knowledge(tmp_path: Path) -> None:
    raw, tok = tmp_path / "raw", tmp_path / "tok"
    raw.mkdir()
    (raw / "train.src").write_text("a b c __eou__ d e\nshort\n")
    (raw / "train.tgt").write_text("x y z w\nq\n")
    (raw / "train.knowledge").write_text("ka kb kc kd\n\n")
    main(["--input", str(raw), "--output", str(tok), "--max-src-tokens", "3", "--max-knowledge-tokens", "2"])
    assert (tok / "train.src").read_text() == "__eou__ d e\nshort\n"
    assert (tok / "train.tgt").read_text() == "x y z w\nq\n"  # targets are never cut
    assert (tok / "train.knowledge").read_text() == "ka kb\n\n"


# ------------------------------------------------------------ strict, line-aligned input (issue #17)


def test_cli_lone_carriage_return_is_an_error_not_a_line_break(tmp_path: Path) -> None:
    # the repro: text-mode reading split "c \rd" into two lines, so valid.src had one
    # line more than valid.tgt and every later pair was shifted, with exit status 0
    raw, tok = tmp_path / "x", tmp_path / "y"
    raw.mkdir()
    (raw / "valid.src").write_bytes(b"a b\nc \rd\n")
    (raw / "valid.tgt").write_bytes(b"r1\nr2\n")
    with pytest.raises(CorpusError, match=r"x/valid\.src:2: carriage return"):
        main(["--input", str(raw), "--output", str(tok)])
    assert not tok.exists()  # nothing written, not even the folder


def test_cli_files_of_a_split_must_have_the_same_line_count(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.src").write_text("a\nb\nc\n")
    (raw / "train.tgt").write_text("x\ny\n")
    with pytest.raises(CorpusError, match=r"train\.tgt: 2 lines but .*train\.src has 3"):
        main(["--input", str(raw), "--output", str(tmp_path / "tok")])


def test_cli_failure_leaves_the_previous_output_intact(tmp_path: Path) -> None:
    raw, tok = tmp_path / "raw", tmp_path / "tok"
    raw.mkdir()
    (raw / "test.src").write_text("Hello there\n")
    (raw / "test.tgt").write_text("General Kenobi\n")
    main(["--input", str(raw), "--output", str(tok)])
    before = {p.name: p.read_bytes() for p in tok.iterdir()}
    assert before["test.src"] == b"hello there\n"
    # a non-UTF-8 byte used to leave a 0-line test.tgt behind
    (raw / "test.tgt").write_bytes(b"General Ken\xf6bi\n")
    with pytest.raises(CorpusError, match=r"test\.tgt:1: not UTF-8 text: byte 0xf6 at column 12"):
        main(["--input", str(raw), "--output", str(tok)])
    assert {p.name: p.read_bytes() for p in tok.iterdir()} == before  # and no staging folder left


def test_cli_keeps_and_counts_empty_source_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw, tok = tmp_path / "raw", tmp_path / "tok"
    raw.mkdir()
    (raw / "train.src").write_text("Hi\n\n   \nBye\n")
    (raw / "train.tgt").write_text("a\nb\nc\nd\n")
    (raw / "train.knowledge").write_text("k\n\n\n\n")
    with caplog.at_level("WARNING"):
        counts = main(["--input", str(raw), "--output", str(tok)])
    # kept, one output line per input line (dropping them would shift the pairs) ...
    assert (tok / "train.src").read_text() == "hi\n\n\nbye\n"
    # ... and counted: in the returned counts, tokenize_stats.json and a warning naming the first
    assert counts["train.src"]["empty"] == 2 and counts["train.tgt"]["empty"] == 0
    assert counts["train.knowledge"]["empty"] == 3  # normal for knowledge: counted, no warning
    stats = json.loads((tok / "tokenize_stats.json").read_text())
    assert stats["files"]["train.src"] == {"lines": 4, "truncated": 0, "empty": 2, "empty_after_tokenization": 0}
    assert "train.src: 2 empty line(s) kept as empty lines (first: line 2)" in caplog.text
    assert "train.knowledge" not in caplog.text
