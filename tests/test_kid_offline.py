"""KID offline knowledge (issue item 1): passage collections, retrieval (dense / BM25 / random),
spaCy triple extraction and trie building, on hand-made data and on 20 CMU_DoG contexts."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_shared_data

from informative_dialogue.errors import CorpusError
from informative_dialogue.kid.trie_files import load_jsonl
from data_prep.kid.build_trie import main as build_trie_main
from data_prep.kid.collection import Passage, load_collection, split_words
from data_prep.kid.retrieve import clean_context, retrieve
from data_prep.kid.retrieve import main as retrieve_main
from data_prep.kid.sparse_retrievers import BM25Retriever, RandomRetriever
from data_prep.kid.triples import extract_triples, extract_triples_batch, load_spacy

REPO = Path(__file__).resolve().parents[1]

COLLECTION = [
    Passage("volcano", "Volcano", "A volcano is a rupture in the crust of a planet where hot lava, volcanic ash "
            "and gases escape from a magma chamber below the surface. Mount Etna erupts often."),
    Passage("chess", "Chess", "Chess is a board game for two players. Each player controls sixteen pieces: a king, "
            "a queen, rooks, bishops, knights and pawns. Magnus Carlsen is the world chess champion."),
    Passage("jazz", "Jazz", "Jazz is a music genre that originated in the African-American communities of New "
            "Orleans. Louis Armstrong played the trumpet and sang. Saxophone improvisation is typical of jazz."),
    Passage("photosynthesis", "Photosynthesis", "Photosynthesis is the process by which plants use sunlight, "
            "water and carbon dioxide to create oxygen and energy in the form of sugar."),
    Passage("rome", "Roman Empire", "The Roman Empire was ruled by emperors. Augustus was the first emperor. "
            "The empire controlled the Mediterranean Sea and built roads and aqueducts."),
]
# (query, id of the obviously relevant passage)
QUERIES = [
    ("I watched lava and ash come out of a volcano in Sicily last summer", "volcano"),
    ("do you play chess? I always lose my queen to the knights of my opponent", "chess"),
    ("how do plants turn sunlight and water into sugar and oxygen", "photosynthesis"),
]


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


def write_jsonl_collection(path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p in COLLECTION:
            f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n")


# --------------------------------------------------------------------------------------------
# triples


SENTENCES = {
    # copula, conjoined clause, pronoun (subject preferred over the nearer ocean), possessive,
    # prepositional phrase inside the object
    "Iceland is a Nordic island country in the North Atlantic Ocean and it is the most sparsely "
    "populated country in Europe. Its capital is Reykjavik.": [
        ("iceland", "is", "nordic island country north atlantic ocean"),
        ("iceland", "is", "sparsely populated country europe"),
        ("iceland capital", "is", "reykjavik"),
    ],
    # passive with agent and a prepositional object
    "The Royal Blue business was founded by Thomas Elliott in Bournemouth.": [
        ("royal blue business", "was founded by", "thomas elliott"),
        ("royal blue business", "was founded in", "bournemouth"),
    ],
    # conjoined objects + a "she" resolved across sentences
    "Marie Curie discovered polonium and radium. She won the Nobel Prize in Physics.": [
        ("marie curie", "discovered", "polonium"),
        ("marie curie", "discovered", "radium"),
        ("marie curie", "won", "nobel prize physics"),
    ],
    # conjoined subjects
    "Paris and Rome are popular destinations.": [
        ("paris", "are", "popular destinations"),
        ("rome", "are", "popular destinations"),
    ],
    # relative clause with its own subject, adjectival complement
    "The book that Orwell wrote became famous.": [
        ("orwell", "wrote", "book"),
        ("book", "became", "famous"),
    ],
    # negation + particle; open clausal complement
    "The company did not set up a new factory. John wants to buy a new car.": [
        ("company", "not set up", "new factory"),
        ("john", "wants to buy", "new car"),
    ],
}


def test_triples_hand_written(nlp) -> None:
    for text, expected in SENTENCES.items():
        assert extract_triples(nlp(text)) == expected, text


def test_triples_batch_and_unresolved_pronoun(nlp) -> None:
    texts = ["He wants to buy a new car.", "Marie Curie discovered polonium and radium."]
    out = extract_triples_batch(texts, nlp, progress=False)
    assert out[0] == []  # no antecedent in the passage: no triple
    assert out[1] == SENTENCES["Marie Curie discovered polonium and radium. She won the Nobel Prize in Physics."][:2]


# --------------------------------------------------------------------------------------------
# collections


def test_collection_formats_and_errors(tmp_path: Path) -> None:
    jl = tmp_path / "c.jsonl"
    write_jsonl_collection(jl)
    assert load_collection(jl) == COLLECTION
    tsv = tmp_path / "c.tsv"
    tsv.write_text("".join(f"{p.id}\t{p.title}\t{p.text}\n" for p in COLLECTION), encoding="utf-8")
    assert load_collection(tsv) == COLLECTION

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "title": "", "text": "fine"}\n\n{"id": "b", "text": 3}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.jsonl:3: 'text' must be a string"):
        load_collection(bad)
    bad.write_text('{"id": "a", "title": "", "text": "fine"}\n{"id": "b", "text": "x"\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: invalid JSON"):
        load_collection(bad)
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("a\tA\tsome text\nb\tonly two fields\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.tsv:2: expected 3 tab-separated fields"):
        load_collection(bad_tsv)
    bad_tsv.write_text("a\tA\tsome text\na\tA\tagain\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.tsv:2: passage id 'a' repeated"):
        load_collection(bad_tsv)


def test_split_words_packs_sentences() -> None:
    text = "One two three. Four five six seven. " + " ".join(f"w{i}" for i in range(9)) + "."
    assert split_words(text, 7) == [
        "One two three. Four five six seven.", "w0 w1 w2 w3 w4 w5 w6", "w7 w8."
    ]


def test_clean_context() -> None:
    assert clean_context("the quant ##um comp ##uter __eou__ is fast", wordpiece=True) == "the quantum computer is fast"
    assert clean_context("a ##b __eou__ c") == "a ##b c"


# --------------------------------------------------------------------------------------------
# retrieval


def test_sparse_and_dense_rank_relevant_first(tmp_path: Path) -> None:
    queries = [q for q, _ in QUERIES]
    sparse = retrieve(queries, COLLECTION, BM25Retriever([p.retrieval_text() for p in COLLECTION]), k=3)
    assert [hits[0][0] for hits in sparse] == [gold for _, gold in QUERIES]
    assert all(s > 0 for hits in sparse for _, s in hits)

    from data_prep.kid.dense_retriever import DenseEncoder, DenseRetriever

    encoder = DenseEncoder(max_length=128, device="cpu")
    dense_r = DenseRetriever(COLLECTION, encoder, cache_dir=str(tmp_path), batch_size=8)
    assert dense_r.encoded == 5
    dense = retrieve(queries, COLLECTION, dense_r, k=5)
    assert [hits[0][0] for hits in dense] == [gold for _, gold in QUERIES]
    assert all(len(h) == 5 and h[0][1] > h[1][1] for h in dense)
    # the passage embeddings come from the .npy cache the second time
    assert len(list(tmp_path.glob("*.npy"))) == 1
    cached = DenseRetriever(COLLECTION, encoder, cache_dir=str(tmp_path), batch_size=8)
    assert cached.encoded == 0
    assert retrieve(queries, COLLECTION, cached, k=5) == dense


def test_sparse_no_overlap_gives_no_hits() -> None:
    r = BM25Retriever([p.retrieval_text() for p in COLLECTION])
    assert retrieve(["zzz qqq", ""], COLLECTION, r, k=3) == [[], []]


def test_random_retriever_seeded(tmp_path: Path, monkeypatch) -> None:
    queries = ["a", "b", "c", "d"]
    one = retrieve(queries, COLLECTION, RandomRetriever(len(COLLECTION), seed=7), k=3)
    two = retrieve(queries, COLLECTION, RandomRetriever(len(COLLECTION), seed=7), k=3)
    other = retrieve(queries, COLLECTION, RandomRetriever(len(COLLECTION), seed=8), k=3)
    assert one == two and one != other
    assert all(len({pid for pid, _ in hits}) == 3 for hits in one)
    # a chunk that starts at query 2 draws what queries 2.. draw in one call, empty contexts skipped
    rnd = RandomRetriever(len(COLLECTION), seed=7)
    assert retrieve(["c", "", "d"], COLLECTION, rnd, k=3, first_row=2) == [one[2], [], one[3]]
    assert all((a == b).all() for a, b in zip(rnd.rows(2, 3, first_row=2), (x[2:] for x in rnd.search(queries, 3))))
    # the CLI writes the same ids
    src = tmp_path / "x.src"
    src.write_text("".join(q + "\n" for q in queries), encoding="utf-8")
    coll = tmp_path / "c.jsonl"
    write_jsonl_collection(coll)
    out = tmp_path / "r.jsonl"
    from data_prep.kid.retrieve import cli as retrieve_cli  # the console script: returns None

    monkeypatch.setattr(sys, "argv", ["kid-retrieve", "--input", str(src), "--collection", str(coll), "--output",
                                      str(out), "--retriever", "random", "--seed", "7", "-k", "3"])
    assert retrieve_cli() is None
    got = [[h["id"] for h in json.loads(line)["passages"]] for line in out.read_text().splitlines()]
    assert got == [[pid for pid, _ in hits] for hits in one]


def test_no_fairseq_import() -> None:
    code = ("import sys, data_prep.kid.build_trie, data_prep.kid.retrieve, data_prep.kid.triples, informative_dialogue.kid.trie_files; "
            "data_prep.kid.build_trie.knowledge_trie_module(); assert 'fairseq' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --------------------------------------------------------------------------------------------
# end to end


def test_build_trie_end_to_end(tmp_path: Path, nlp) -> None:
    coll = tmp_path / "c.jsonl"
    write_jsonl_collection(coll)
    src = tmp_path / "test.src"
    src.write_text(
        "have you seen Mount Etna ? __eou__ the lava was amazing\n"
        "Magnus Carlsen plays chess __eou__ who is the world champion ?\n"
        "zzz qqq\n",
        encoding="utf-8",
    )
    ret = tmp_path / "ret.jsonl"
    retrieve_main(["--input", str(src), "--collection", str(coll), "--output", str(ret), "--retriever", "sparse", "-k", "2"])
    retrieved = [json.loads(line) for line in ret.read_text().splitlines()]
    assert [r["passages"][0]["id"] for r in retrieved[:2]] == ["volcano", "chess"]
    assert retrieved[2]["passages"] == []

    out = tmp_path / "trie.jsonl"
    cache = tmp_path / "triples_cache.jsonl"
    stats = build_trie_main(["--retrieval", str(ret), "--collection", str(coll), "--source", str(src),
                             "--output", str(out), "--triples-cache", str(cache)], nlp=nlp)
    assert stats["examples"] == 3 and stats["empty_tries"] == 1 and stats["no_passages"] == 1
    assert json.loads(Path(f"{out}.stats.json").read_text())["keys_total"] == stats["keys_total"]

    examples = load_jsonl(out)  # informative_dialogue.kid.trie_files: no fairseq import (test_no_fairseq_import)
    assert len(examples) == 3
    volcano, chess, empty = (e.trie for e in examples)
    assert {"volcano", "lava", "ash"} <= set(volcano.values)
    assert volcano.values["volcano"] == ["rupture crust"]
    assert {"rupture", "crust"} <= set(volcano.query(["volcano"], hops=1))
    assert {"chess", "carlsen", "magnu", "player"} <= set(chess.values)
    assert "champion" in chess.query(["carlsen"], hops=1)
    assert empty.is_empty() and len(empty) == 0
    assert examples[0].entities == ["mount etna", "lava"]
    assert examples[1].entities[0] == "magnus carlsen" and "champion" in examples[1].entities

    # second run: every passage comes from the triples cache, same file
    first = out.read_text()
    stats2 = build_trie_main(["--retrieval", str(ret), "--collection", str(coll), "--source", str(src),
                              "--output", str(out), "--triples-cache", str(cache)], nlp=nlp)
    assert stats2["passages_parsed"] == 0 and out.read_text() == first


def test_cmu_dog_real_contexts(tmp_path: Path, nlp) -> None:
    tarball = require_shared_data("cmu_dog.tar.gz")
    from data_prep.corpora.cmu_dog_source import CmuDogSource, documents_of
    from data_prep.corpora.cmu_dog import prepare_split

    source = CmuDogSource(tarball)
    examples, _, _ = prepare_split(source, documents_of(source), "test")
    src = tmp_path / "test.src"
    src.write_text("".join(ex.src + "\n" for ex in examples[:20]), encoding="utf-8")
    # the documents collection (4 sections x 30 movies), read from the tarball once and handed
    # to both commands as JSONL (reading the archive is the slow part)
    passages = load_collection(tarball)
    assert len(passages) == 120 and passages[0].id == "cmu_dog/0/0"
    coll = tmp_path / "cmu_dog_docs.jsonl"
    coll.write_text("".join(json.dumps(vars(p)) + "\n" for p in passages), encoding="utf-8")
    ret = tmp_path / "ret.jsonl"
    retrieve_main(["--input", str(src), "--collection", str(coll), "--output", str(ret), "--retriever", "sparse"])
    out = tmp_path / "trie.jsonl"
    stats = build_trie_main(["--retrieval", str(ret), "--collection", str(coll), "--source", str(src),
                             "--output", str(out)], nlp=nlp)
    tries = load_jsonl(out)
    assert len(tries) == 20
    # measured: every one of the 20 lines has knowledge; the first conversation is about Mean Girls
    assert sum(1 for t in tries if len(t.trie) > 0) == 20
    assert stats["empty_tries"] == 0 and stats["distinct_passages"] == 20
    assert stats["keys_total"] == 1464
    assert "girl" in tries[0].trie


def test_read_retrieval_errors(tmp_path: Path) -> None:
    from data_prep.kid.build_trie import read_retrieval

    by_id = {p.id: p for p in COLLECTION}
    ret = tmp_path / "ret.jsonl"
    ret.write_text('{"line": 0, "passages": [{"id": "chess", "score": 1.0}, {"id": "jazz", "score": 0.5}]}\n'
                   '{"line": 1, "passages": []}\n', encoding="utf-8")
    assert read_retrieval(ret, by_id) == [["chess", "jazz"], []]
    assert read_retrieval(ret, by_id, top_k=1) == [["chess"], []]
    ret.write_text('{"line": 0, "passages": []}\n{"line": 1, "passages": [{"id": "nope"}]}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"ret\.jsonl:2: passage id 'nope' is not in the collection"):
        read_retrieval(ret, by_id)
    ret.write_text('{"line": 0, "passages": []}\n{"line": 5, "passages": []}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"ret\.jsonl:2: 'line' is 5, expected 1"):
        read_retrieval(ret, by_id)
