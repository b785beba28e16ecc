"""KID knowledge trie (knowledge_trie.py) and word <-> token mapping (token_mapping.py)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from informative_dialogue.kid.trie import KnowledgeTrie, WordNormalizer
from informative_dialogue.kid.trie_files import TrieStore, load_jsonl, save_jsonl
from informative_dialogue.kid.token_mapping import TokenMapper, bytes_to_unicode, detect_scheme

TOY = Path(__file__).parent / "data" / "kid_toy_trie.jsonl"


@pytest.fixture(scope="module")
def norm() -> WordNormalizer:
    return WordNormalizer()


@pytest.fixture(scope="module")
def store(norm: WordNormalizer) -> TrieStore:
    return TrieStore(TOY, normalizer=norm)


def test_hop_traversal_on_hand_made_trie(store: TrieStore) -> None:
    trie = store[0].trie
    assert trie.query(["car"], 1) == ["engine", "road", "trip"]
    assert trie.query(["car"], 2) == ["engine", "road", "trip", "piston", "fuel"]  # "the" is a stop word
    assert trie.query(["car"], 3) == ["engine", "road", "trip", "piston", "fuel", "cylinder", "gasoline", "car"]
    # car -> engin -> fuel -> car is a cycle: deeper queries terminate and add only "refinery"
    assert trie.query(["car"], 4)[-1] == "refinery"
    assert trie.query(["car"], 50) == trie.query(["car"], 4)
    assert trie.query(["engin"], 1) == ["piston", "fuel"]
    assert trie.query(["car"], 0) == []
    assert trie.links["fuel"] == ["gasolin", "car"]
    assert trie.depth == {"car": 4, "engin": 3, "fuel": 2, "piston": 1, "gasolin": 1}


def test_exact_key_match_never_prefix(norm: WordNormalizer) -> None:
    trie = KnowledgeTrie({"car": ["wheel"], "carbon": ["atom"]}, normalizer=norm)
    assert trie.query(["car"], 1) == ["wheel"]
    assert trie.query(["ca"], 1) == [] and trie.query(["carb"], 1) == []
    assert "car" in trie and "ca" not in trie


def test_pure_cycle_terminates(norm: WordNormalizer) -> None:
    trie = KnowledgeTrie({"alpha": ["beta"], "beta": ["alpha"]}, normalizer=norm)
    assert trie.query(["alpha"], 1000) == ["beta", "alpha"]
    assert set(trie.depth.values()) <= {1, 2}


def test_from_triples_stems_keys_and_links(norm: WordNormalizer) -> None:
    trie = KnowledgeTrie.from_triples(
        [("Driving", "is affected by", "the influence of drugs"), ("drugs", "include", "Cocaine"),
         ("the drivers", "need", "licence")],
        normalizer=norm,
    )
    assert norm.stem("driving") == "drive" and "drive" in trie and "driver" in trie
    assert trie.values["drug"] == ["cocaine"]
    assert trie.links["drive"] == ["drug"]
    assert trie.query([norm.stem("driving")], 2) == ["influence", "drugs", "cocaine"]
    assert trie.surface["drive"] == ["driving"]


def test_jsonl_roundtrip_stats_and_validation(tmp_path: Path, norm: WordNormalizer) -> None:
    t = KnowledgeTrie({"car": ["engine"], "engin": ["fuel"]}, normalizer=norm)
    path = tmp_path / "t.jsonl"
    stats = save_jsonl(path, [(t, ["car"]), (KnowledgeTrie({}, normalizer=norm), None)])
    assert stats["examples"] == 2 and stats["empty"] == 1 and stats["keys_total"] == 2 and stats["bytes"] > 0
    back = load_jsonl(path, normalizer=norm)
    assert back[0].trie.values == t.values and back[0].entities == ["car"] and back[1].entities is None
    assert back[1].trie.is_empty()
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["id"] = 5
    (tmp_path / "bad.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match="id 5"):
        TrieStore(tmp_path / "bad.jsonl", normalizer=norm)
    s = TrieStore(path, normalizer=norm)
    with pytest.raises(IndexError, match="one line per example"):
        s[2]
    shared = TrieStore(path, normalizer=norm, shared=True)
    assert shared[7].trie.values == t.values and len(shared) == 1


def test_empty_trie_file_warns_once(tmp_path: Path, norm: WordNormalizer, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text('{"id": 0, "trie": {}}\n{"id": 1, "trie": {"a": []}}\n')
    with caplog.at_level(logging.WARNING):
        s = TrieStore(path, normalizer=norm)
    assert s.all_empty
    assert sum("holds no knowledge" in r.message for r in caplog.records) == 1


def test_little_kid_flat_list(store: TrieStore) -> None:
    words = store[0].trie.all_words()
    assert {"car", "cars", "engine", "refinery", "cylinder"} <= set(words)
    assert "the" not in words


# --- token mapping --------------------------------------------------------------------------
WORDPIECE = ["[PAD]", "[UNK]", "the", "car", "carbon", "imp", "##air", "##s", "mari", "##ju", "##ana", "."]
SPM = ["<unk>", "<s>", "</s>", "▁the", "▁car", "▁carbon", "car", "▁imp", "air", "▁", "s", "."]
G = "\u0120"
GPT2 = ["<|endoftext|>", G + "the", G + "car", G + "carbon", "car", G + "imp", "air", "s", ",", G + "caf", "\u00c3\u00a9"]
BPE_AT = ["<s>", "<pad>", "</s>", "<unk>", "the", "car", "carbon", "im@@", "pair", "car@@", "s"]


def test_scheme_detection() -> None:
    assert detect_scheme(WORDPIECE) == "wordpiece"
    assert detect_scheme(SPM) == "sentencepiece"
    assert detect_scheme(GPT2) == "gpt2"
    assert detect_scheme(BPE_AT) == "subword_nmt"
    assert detect_scheme(["<s>", "hello", "world"]) == "word"


def test_words_map_to_word_initial_pieces() -> None:
    wp = TokenMapper(WORDPIECE, special_ids=[0, 1])
    assert wp.word_ids("car") == [3]  # not "carbon"
    assert wp.word_ids("impair") == [5]
    assert TokenMapper(WORDPIECE, special_ids=[0, 1], subwords="all").word_ids("impair") == [5, 6]
    assert TokenMapper(WORDPIECE, subwords="all").word_ids("marijuana") == [8, 9, 10]
    assert wp.word_ids("xyz") == []  # would be [UNK]
    sp = TokenMapper(SPM, special_ids=[0, 1, 2])
    assert sp.word_ids("car") == [4]  # "▁car", never the mid-word "car"
    assert TokenMapper(SPM, subwords="all").word_ids("impair") == [7, 8]
    g = TokenMapper(GPT2, special_ids=[0])
    assert g.word_ids("car") == [2]  # "Ġcar", never the mid-word "car"
    assert TokenMapper(GPT2, subwords="all").word_ids("impair") == [5, 6]
    assert g.word_ids("café")[:1] == [9]
    b = TokenMapper(BPE_AT, special_ids=[0, 1, 2, 3], subwords="all")
    assert b.word_ids("car") == [5] and b.word_ids("cars") == [9, 10] and b.word_ids("impair") == [7, 8]
    assert wp.words_to_ids(["car", "impair", "car"]) == [3, 5]
    assert TokenMapper(WORDPIECE, encode_fn=lambda w: [4, 7]).word_ids("anything") == [4]


def test_decode_words_subword_aware() -> None:
    wp = TokenMapper(WORDPIECE, special_ids=[0, 1])
    assert wp.decode_words([2, 3, 7, 5, 6, 11, 0]) == ["the", "cars", "impair"]
    g = TokenMapper(GPT2, special_ids=[0])
    assert g.decode_words([1, 2, 7, 8, 9, 10]) == ["the", "cars", "café"]
    b = TokenMapper(BPE_AT, special_ids=[0, 1, 2, 3])
    assert b.decode_words([4, 7, 8, 9, 10]) == ["the", "impair", "cars"]
    sp = TokenMapper(SPM, special_ids=[0, 1, 2])
    assert sp.decode_words([3, 4, 10, 11, 9, 6]) == ["the", "cars", "car"]
    assert len(bytes_to_unicode()) == 256 and bytes_to_unicode()[32] == G
