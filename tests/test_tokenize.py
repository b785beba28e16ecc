"""WordPiece / sentencepiece tokenisation and detokenisation."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.corpora.detokenize import detokenize_sentencepiece, detokenize_wordpiece
from data_prep.corpora.tokenize import BertWordPiece, SentencePiece, main, tokenize_line


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
