"""The knowledge-in-the-prompt baseline's contexts (data_prep/corpora/knowledge_prompt.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.corpora.knowledge_prompt import knowledge_turn, main, prompt_with_knowledge
from informative_dialogue.errors import CorpusError


def test_knowledge_becomes_an_earlier_turn() -> None:
    out = prompt_with_knowledge(["hi __eou__ do you like it ?", "what ?"],
                                ["the film __knowledge__ is by tina fey", ""], max_knowledge_tokens=4,
                                drop_tokens={"__knowledge__"})
    # separator dropped before the cut: the first 4 knowledge tokens, then the context whole
    assert out == ["the film is by __eou__ hi __eou__ do you like it ?", "what ?"]
    assert knowledge_turn("a b c", 5) == "a b c"
    with pytest.raises(ValueError, match=">= 1"):
        knowledge_turn("a", 0)


def test_bad_input_names_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="ctx:2: empty context"):
        prompt_with_knowledge(["a", " "], ["k", "k"], 3, name="ctx")
    with pytest.raises(CorpusError, match="2 lines but the knowledge has 1"):
        prompt_with_knowledge(["a", "b"], ["k"], 3)
    (tmp_path / "s").write_text("hello there\n")
    (tmp_path / "k").write_text("x y z\n")
    assert main(["--src", str(tmp_path / "s"), "--knowledge", str(tmp_path / "k"), "--output",
                 str(tmp_path / "o"), "--max-knowledge-tokens", "2"]) == 0
    assert (tmp_path / "o").read_text() == "x y __eou__ hello there\n"
