"""Tests of data_prep.ki.knowledge_base: first sentences, the source readers, items.tsv I/O and
the title index."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from informative_dialogue.errors import CorpusError
from data_prep.ki.knowledge_sources import KnowledgeItem, wiki_jsonl_items, wiki_summaries_items, wordnet_items, wow_mini_items
from data_prep.ki.knowledge_base import count_knowledge_items, load_knowledge_base, main, write_knowledge_base
from data_prep.ki.first_sentence import first_sentence


@pytest.mark.parametrize(
    "text, expected",
    [
        ("J. K. Rowling is a British author. She wrote Harry Potter.", "J. K. Rowling is a British author."),
        ("St. Louis is a city in Missouri. It is big.", "St. Louis is a city in Missouri."),
        ("The U.S. Army is the land branch. It was founded in 1775.", "The U.S. Army is the land branch."),
        ("He moved to the U.S. It was 1900.", "He moved to the U.S."),
        ("Stonehenge was built c. 1900 BC by people. Many visit it.", "Stonehenge was built c. 1900 BC by people."),
        ("Jane Doe (born 1965) is an author. She lives in Paris.", "Jane Doe (born 1965) is an author."),
        ("Al (b. 1900. d. 1980) was a poet. Bob was not.", "Al (b. 1900. d. 1980) was a poet."),
        ("Arthur C. Clarke wrote books. He died.", "Arthur C. Clarke wrote books."),
        ("Is it? Yes it is.", "Is it?"),
        ('He said "Hello." Then he left.', 'He said "Hello."'),
        ("Washington, D.C., is the capital. It has monuments.", "Washington, D.C., is the capital."),
        ("The score was 3.5 points. Fine.", "The score was 3.5 points."),
        ("Martin Luther King Jr. was a minister. He led.", "Martin Luther King Jr. was a minister."),
        ("World War I. It was a war.", "World War I."),
        ("Florida is a state in the South\nregion. It is warm.", "Florida is a state in the South region."),
        ("No full stop at all", "No full stop at all"),
        ("A movie (released 2001. Later re-cut", "A movie (released 2001."),  # unbalanced "("
    ],
)
def test_first_sentence(text, expected):
    assert first_sentence(text) == expected


def test_first_sentence_blank():
    assert first_sentence("  \n ") == ""


# --------------------------------------------------------------------------------------------
# WordNet

LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2 Princeton University.  \n"
NOUN_LINES = (
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 "
    '| a member of the genus Canis; "the dog barked all night"  \n'
    "00001740 03 n 01 entity 0 000 | that which is perceived or known  \n"
)
VERB_LINES = (
    "00001740 29 v 02 breathe 0 take_a_breath 0 001 * 00005041 v 0000 01 + 02 00 "
    "| draw air into, and expel out of, the lungs; \"I can breathe better now\"  \n"
)
ADJ_LINES = "00014358 00 s 02 abounding 0 galore(ip) 0 000 | existing in abundance; e.g. \"whiskey galore\"  \n"
ADV_LINES = "00001740 02 r 01 a_cappella 0 000 | without musical accompaniment  \n"


def write_wordnet(root: Path, noun: str = NOUN_LINES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    files = {"data.noun": noun, "data.verb": VERB_LINES, "data.adj": ADJ_LINES, "data.adv": ADV_LINES}
    for name, lines in files.items():
        (root / name).write_text(LICENCE + lines, encoding="utf-8")
    return root


def test_wordnet_items(tmp_path):
    items = list(wordnet_items(write_wordnet(tmp_path / "wn")))
    assert items == [
        KnowledgeItem("wordnet", "dog | domestic dog | Canis familiaris", "dog: a member of the genus Canis"),
        KnowledgeItem("wordnet", "entity", "entity: that which is perceived or known"),
        KnowledgeItem("wordnet", "breathe | take a breath", "breathe: draw air into, and expel out of, the lungs"),
        KnowledgeItem("wordnet", "abounding | galore", "abounding: existing in abundance"),
        KnowledgeItem("wordnet", "a cappella", "a cappella: without musical accompaniment"),
    ]
    with_examples = list(wordnet_items(tmp_path / "wn", with_examples=True))
    assert with_examples[0].text == 'dog: a member of the genus Canis; "the dog barked all night"'


def test_wordnet_malformed_line(tmp_path):
    root = write_wordnet(tmp_path / "wn", noun=NOUN_LINES + "00002137 03 n zz abstraction 0 000 | a concept\n")
    with pytest.raises(CorpusError) as err:
        list(wordnet_items(root))
    assert err.value.line == 5 and "data.noun" in str(err.value) and "hexadecimal" in str(err.value)


def test_wordnet_missing_file(tmp_path):
    root = write_wordnet(tmp_path / "wn")
    os.remove(root / "data.adv")
    with pytest.raises(CorpusError, match="data.adv"):
        list(wordnet_items(root))


# --------------------------------------------------------------------------------------------
# Wikipedia inputs


def write_summaries(path: Path) -> Path:
    data = {
        "Mercury (planet)": {"title": "Mercury (planet)", "extract": "Mercury is the smallest planet. It is hot.",
                             "description": "planet", "topic": "Science"},
        "Empty": {"title": "Empty", "extract": "   ", "description": "", "topic": ""},
        "J. K. Rowling": {"title": "J. K. Rowling", "extract": "J. K. Rowling is a British\tauthor. She wrote.",
                          "description": "author", "topic": "People"},
    }
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def test_wiki_summaries_items(tmp_path):
    items = list(wiki_summaries_items(write_summaries(tmp_path / "s.json.gz")))
    assert items == [
        KnowledgeItem("wikipedia", "Mercury (planet)", "Mercury is the smallest planet."),
        KnowledgeItem("wikipedia", "J. K. Rowling", "J. K. Rowling is a British author."),
    ]


def test_wiki_jsonl_malformed_line(tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text('{"title": "Ant", "text": "An ant is an insect. Ants are social."}\n\n{"title": "Bee"}\n',
                    encoding="utf-8")
    it = wiki_jsonl_items(path)
    assert next(it) == KnowledgeItem("wikipedia", "Ant", "An ant is an insect.")
    with pytest.raises(CorpusError) as err:
        next(it)
    assert err.value.line == 3 and "wiki.jsonl" in str(err.value) and "'title' and 'text'" in str(err.value)
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"wiki.jsonl:1: invalid JSON"):
        list(wiki_jsonl_items(path))


def test_wow_mini_items(tmp_path):
    (tmp_path / "train.sent_fact.txt").write_text("0\tno_fact\n1\ta b c d e f g\tx y\n", encoding="utf-8")
    (tmp_path / "valid.sent_fact.txt").write_text("0\tx y\t\n", encoding="utf-8")
    items = list(wow_mini_items(tmp_path))
    assert items == [KnowledgeItem("wow", "a b c d e", "a b c d e f g"), KnowledgeItem("wow", "x y", "x y")]
    (tmp_path / "test.sent_fact.txt").write_text("zero\tsentence\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"test.sent_fact.txt:1"):
        list(wow_mini_items(tmp_path))


# --------------------------------------------------------------------------------------------
# items.tsv


def test_write_load_round_trip(tmp_path):
    items = [
        KnowledgeItem("wikipedia", "Harry  Potter", "Harry Potter is a\tseries\nof novels."),
        KnowledgeItem("wordnet", "dog | domestic dog", "dog: an animal"),
        KnowledgeItem("wordnet", "dog | domestic dog", "dog: an animal"),  # duplicate
        KnowledgeItem("wordnet", "cat", "   "),  # empty text
    ]
    stats = write_knowledge_base(tmp_path / "kb", items)
    assert stats["items"] == 2
    assert stats["skipped"] == {"wordnet: duplicate (title, text)": 1, "wordnet: empty field": 1}
    assert stats["sources"]["wordnet"] == {"read": 3, "written": 1, "avg_text_chars": 14.0}
    assert json.loads((tmp_path / "kb" / "stats.json").read_text())["items"] == 2
    assert (tmp_path / "kb" / "items.tsv").read_text(encoding="utf-8") == (
        "id\tsource\ttitle\ttext\n"
        "1\twikipedia\tHarry Potter\tHarry Potter is a series of novels.\n"
        "2\twordnet\tdog | domestic dog\tdog: an animal\n"
    )
    kb = load_knowledge_base(tmp_path / "kb")
    assert len(kb) == 2 and kb.ids.dtype == np.int64 and kb.ids.tolist() == [1, 2]
    assert kb.sources == ["wikipedia", "wordnet"] and kb.titles[1] == "dog | domestic dog"
    assert kb.text_of(2) == "dog: an animal"
    with pytest.raises(KeyError, match="no knowledge"):
        kb.text_of(0)
    with pytest.raises(KeyError):
        kb.text_of(3)
    assert load_knowledge_base(tmp_path / "kb" / "items.tsv").texts == kb.texts
    assert count_knowledge_items(tmp_path / "kb") == 2
    assert write_knowledge_base(tmp_path / "kb2", items, dedup=False)["items"] == 3


@pytest.mark.parametrize(
    "body, line, message",
    [
        ("1\twordnet\tdog\tdog: an animal\n2\twordnet\tcat\n", 3, "expected 4 tab-separated fields"),
        ("1\twordnet\tdog\tdog: an animal\n3\twordnet\tcat\tcat: an animal\n", 3, "expected id 2"),
        ("1\twordnet\t\tdog: an animal\n", 2, "empty"),
    ],
)
def test_load_malformed(tmp_path, body, line, message):
    path = tmp_path / "items.tsv"
    path.write_text("id\tsource\ttitle\ttext\n" + body, encoding="utf-8")
    with pytest.raises(CorpusError, match=message) as err:
        load_knowledge_base(path)
    assert err.value.line == line and str(path) in str(err.value)


def test_load_bad_header(tmp_path):
    (tmp_path / "items.tsv").write_text("id\ttitle\ttext\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"items.tsv:1: expected the header"):
        load_knowledge_base(tmp_path)


def test_title_index(tmp_path):
    items = [
        KnowledgeItem("wikipedia", "Mercury (planet)", "Mercury is a planet."),
        KnowledgeItem("wikipedia", "Venus (planet)", "Venus is a planet."),
        KnowledgeItem("wikipedia", "Venus", "Venus is a goddess."),
        KnowledgeItem("wikipedia", "Harry Potter", "Harry Potter is a series of novels."),
        KnowledgeItem("wikipedia", "harry potter", "A second article with the same key."),
        KnowledgeItem("wordnet", "dog | domestic dog | Canis familiaris", "dog: an animal"),
        KnowledgeItem("wordnet", "mercury | quicksilver", "mercury: a metal"),
    ]
    write_knowledge_base(tmp_path, items)
    kb = load_knowledge_base(tmp_path)
    assert kb.title_index() == {
        "mercury (planet)": 1, "mercury": 1, "venus (planet)": 2, "venus": 3, "harry potter": 4,
    }
    everything = kb.title_index(sources=None)
    assert everything["mercury"] == 7  # a plain "mercury" beats the stripped "Mercury (planet)"
    assert everything["domestic dog"] == 6 and everything["canis familiaris"] == 6 and everything["quicksilver"] == 7
    assert kb.title_index(sources=["wordnet"]) == {
        "dog": 6, "domestic dog": 6, "canis familiaris": 6, "mercury": 7, "quicksilver": 7,
    }


def test_cli_source_order_and_ids(tmp_path):
    wiki = write_summaries(tmp_path / "s.json.gz")
    jsonl = tmp_path / "w.jsonl"
    jsonl.write_text('{"title": "Ant", "text": "An ant is an insect."}\n', encoding="utf-8")
    wn = write_wordnet(tmp_path / "wn")
    out = tmp_path / "kb"
    stats = main(["--output", str(out), "--wordnet-dir", str(wn), "--wiki-jsonl", str(jsonl),
                  "--wiki-summaries", str(wiki), "--max-items-per-source", "3"])
    kb = load_knowledge_base(out)
    assert kb.ids.tolist() == list(range(1, 7))
    assert kb.sources == ["wikipedia"] * 3 + ["wordnet"] * 3  # summaries, jsonl, then WordNet
    assert kb.titles[:3] == ["Mercury (planet)", "J. K. Rowling", "Ant"]
    assert stats["skipped"] == {"wikipedia: empty title or text": 1}
    assert stats["sources"]["wordnet"]["written"] == 3
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path / "none")])


def test_real_data(shared_data, tmp_path):
    """Real wiki summaries, CMU_DoG and wow_mini: first-sentence quality on all 10,033 articles
    (measured: 99.96% end in . ! ? or " and are 20-600 characters) and a small build."""
    wiki = shared_data / "wiki_summaries" / "summaries_en.json.gz"
    sentences = [item.text for item in wiki_summaries_items(wiki)]
    assert len(sentences) == 10033
    good = sum(1 for s in sentences if s[-1] in '.!?"' and 20 <= len(s) <= 600)
    assert good / len(sentences) >= 0.995
    out = tmp_path / "kb"
    stats = main(["--output", str(out), "--wiki-summaries", str(wiki), "--cmu-dog", str(shared_data / "cmu_dog.tar.gz"),
                  "--wow-mini", str(shared_data / "wow_mini"), "--max-items-per-source", "20"])
    kb = load_knowledge_base(out)
    assert len(kb) == stats["items"] == 60
    assert kb.sources == ["wikipedia"] * 20 + ["cmu_dog"] * 20 + ["wow"] * 20
    assert kb.titles[20].endswith("(section 0)") and kb.texts[20].startswith("movie name: ")
    assert kb.title_index()["2001: a space odyssey"] == 2
