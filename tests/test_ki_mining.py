"""Token-level knowledge mining (KI §4.3): index building, mining rules, shards, resume, merge.

The core is tested with hand-made vectors: item ``i`` has the unit vector ``e_i`` and a fake
word encoder maps words to those vectors, so every expected id is known by hand."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from informative_dialogue.ki.alignment_text import read_alignments
from data_prep.ki.faiss_index import build_faiss_index, default_nlist, resolve_index_type
from data_prep.ki.index import check_index_matches, load_index, read_meta
from data_prep.ki.index_writer import write_index_dir
from data_prep.ki.merge import diversity_stats, main as merge_main, merge_shards
from data_prep.ki.miner import LineCache, Miner, MiningOptions, faiss_search_fn, mine_chunk
from data_prep.ki.matching import build_title_matcher, exact_match_ids, normalize_phrase
from data_prep.ki.mine import mine_shard
from data_prep.ki.shards import new_counts, shard_paths, summarize
from data_prep.shards import shard_range

DIM = 10
# item id -> title (all "wikipedia" in the fake title index below)
TITLES = {
    1: "cat",
    2: "dog",
    3: "piano",
    4: "paris",
    5: "new york city",
    6: "the",
    7: "kitten",
    8: "new york",
    9: "l. frank baum",
}
WORD_VECTOR = {"cat": 1, "kitten": 1, "dog": 2, "puppy": 2, "piano": 3, "paris": 4, "the": 2, "is": 2}
UNKNOWN = 3  # any other word looks like "piano"


def e(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


def fake_word_vectors(sentences: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(total_words, DIM) unit vectors by word, all encoded."""
    rows = [e(WORD_VECTOR.get(w, UNKNOWN)) for s in sentences for w in s]
    return np.stack(rows) if rows else np.zeros((0, DIM), np.float32), np.ones(len(rows), dtype=bool)


@pytest.fixture(scope="module")
def index():
    ids = np.arange(1, len(TITLES) + 1, dtype=np.int64)
    vectors = np.stack([e(int(i)) for i in ids])
    return build_faiss_index(vectors, ids, "flat")


def make_miner(index, **kw) -> Miner:
    titles = {v: k for k, v in TITLES.items()}
    return Miner(fake_word_vectors, faiss_search_fn(index), MiningOptions(**kw), title_index=titles)


def mine(miner: Miner, lines: list[str]) -> list[list[int]]:
    return [r.tolist() for r in mine_chunk(lines, miner, LineCache(100), new_counts())]


# --------------------------------------------------------------------------- rules
def test_retrieval_gives_the_nearest_item(index):
    miner = make_miner(index, exact_match=False)
    assert mine(miner, ["cat dog piano paris", "puppy banana"]) == [[1, 2, 3, 4], [2, 3]]


def test_stopword_masking(index):
    line = ["the cat , is __eou__ dog ' s"]
    assert mine(make_miner(index, exact_match=False), line) == [[0, 1, 0, 0, 0, 2, 0, 0]]
    counts = new_counts()
    mine_chunk(line, make_miner(index, exact_match=False), LineCache(0), counts)
    assert (counts["tokens_skip"], counts["tokens_stopword_rule"], counts["tokens_masked"]) == (1, 5, 5)
    assert counts["tokens_content_with_knowledge"] == 2 and summarize(counts)["share_content_tokens_with_knowledge"] == 1.0
    assert summarize(counts)["share_tokens_with_knowledge"] == 2 / 8
    # without masking stopwords and punctuation are searched; skip tokens stay 0
    assert mine(make_miner(index, exact_match=False, stopword_masking=False), line) == [[2, 1, 3, 2, 0, 2, 3, 3]]


def test_exact_match_longest_first_overrides_retrieval(index):
    miner = make_miner(index)
    got = mine(miner, ["kitten in new york city", "new york is big", "the cat"])
    assert got == [[7, 0, 5, 5, 5], [8, 8, 0, 3], [0, 1]]  # title "the" (stopword only) never matches
    off = make_miner(index, exact_match=False)
    assert mine(off, ["kitten in new york city"]) == [[1, 0, 3, 3, 3]]
    # max-title-words 2: "new york city" is too long, "new york" wins
    assert mine(make_miner(index, max_title_words=2), ["new york city"]) == [[8, 8, 3]]
    # without masking, "the" is retrieved (dog), not exact-matched to the title "The"
    assert mine(make_miner(index, stopword_masking=False), ["the cat"]) == [[2, 1]]


def test_wordpiece_words_spread_ids_over_subwords(index):
    miner = make_miner(index)
    assert mine(miner, ["pup ##py and kit ##ten", "by l . frank ba ##um !"]) == [[2, 2, 0, 7, 7], [0, 9, 9, 9, 9, 9, 0]]
    # sentencepiece grouping
    sp = make_miner(index, subword_format="sentencepiece", exact_match=False)
    assert mine(sp, ["\u2581pup py \u2581the \u2581cat"]) == [[2, 2, 0, 1]]


def test_output_has_one_id_per_token(index):
    miner = make_miner(index, stopword_masking=False)
    lines = ["##s cat", "", "a", "new york city new york ba ##um", "[SEP] ? ! ##x"]
    got = mine(miner, lines)
    assert [len(r) for r in got] == [len(l.split()) for l in lines]


def test_exact_match_helpers():
    assert normalize_phrase("L. Frank  Baum") == "l . frank baum"
    assert normalize_phrase("Café Spider-Man") == "cafe spider - man"
    matcher = build_title_matcher({"l. frank baum": 9, "a b c d e": 3, "x": 4}, max_title_words=4)
    assert matcher == {"l. frank baum": 9, "l . frank baum": 9, "x": 4}
    words = ["x", "y", "x"]
    assert exact_match_ids(words, {"x y": 1, "x": 2}, 4, [False] * 3, [False] * 3).tolist() == [1, 1, 2]
    assert exact_match_ids(words, {"x y": 1, "x": 2}, 4, [False, False, True], [False] * 3).tolist() == [1, 1, 0]


def test_dedup_counts_and_truncation(index):
    def truncating(sentences):
        vecs, enc = fake_word_vectors(sentences)
        off = 0
        for s in sentences:
            enc[off + 2 : off + len(s)] = False  # only the first two words fit
            off += len(s)
        return vecs, enc

    miner = Miner(truncating, faiss_search_fn(index), MiningOptions(exact_match=False))
    counts = new_counts()
    got = mine_chunk(["cat dog piano", "cat dog piano", "dog"], miner, LineCache(10), counts)
    assert [r.tolist() for r in got] == [[1, 2, 0], [1, 2, 0], [2]]
    assert counts["dedup_hits"] == 1 and counts["lines_mined"] == 2
    assert counts["words_truncated"] == 1 and counts["tokens_unresolved"] == 2 and counts["tokens_retrieved"] == 5


# --------------------------------------------------------------------------- index
def test_write_index_dir(tmp_path):
    texts = [f"item {i}" for i in range(1, 6)]
    hidden = 3

    def encode(chunk):
        g = np.stack([np.full(hidden, float(t.split()[1]), np.float32) for t in chunk])
        fg = np.stack([e(int(t.split()[1])) for t in chunk])
        return g, fg

    kb = {"path": "kb", "items_tsv_sha256": "abc"}
    meta = write_index_dir(tmp_path / "idx", texts, np.arange(1, 6), encode, hidden, DIM, knowledge_base=kb,
                           retriever={"path": "r", "sha256": "r1"}, chunk_size=2, progress=False, table_dtype="float16")
    table = np.load(tmp_path / "idx" / "knowledge_table.npy")
    assert table.shape == (6, hidden) and table.dtype == np.float16
    assert table[0].tolist() == [0, 0, 0] and table[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    index, meta2 = load_index(tmp_path / "idx", gpu="no")
    assert meta2 == read_meta(tmp_path / "idx") and meta["n_items"] == 5 and meta["index_type"] == "flat"
    _, ids = index.search(np.stack([e(4), e(2)]), 1)
    assert ids[:, 0].tolist() == [4, 2]
    check_index_matches(meta, kb_fp={"path": "kb", "items_tsv_sha256": "abc"}, n_items=5)
    with pytest.raises(ValueError, match="differs"):
        check_index_matches(meta, kb_fp={"path": "kb2", "items_tsv_sha256": "zzz"})
    with pytest.raises(ValueError, match="retriever"):
        check_index_matches(meta, retriever_fp={"path": "r2", "sha256": "r2"})
    with pytest.raises(ValueError, match="1..N"):
        write_index_dir(tmp_path / "bad", texts, np.arange(0, 5), encode, hidden, DIM, progress=False)


def test_ivf_index_and_auto():
    assert resolve_index_type("auto", 10, ivf_threshold=100) == "flat"
    assert resolve_index_type("auto", 101, ivf_threshold=100) == "ivf"
    assert default_nlist(10_000) == 400
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    ids = np.arange(1, 301, dtype=np.int64)
    ivf = build_faiss_index(vectors, ids, "ivf", nlist=4)
    ivf.nprobe = 4  # all lists: exact
    flat = build_faiss_index(vectors, ids, "flat")
    q = rng.normal(size=(20, 8)).astype(np.float32)
    assert np.array_equal(ivf.search(q, 1)[1], flat.search(q, 1)[1])


# --------------------------------------------------------------------------- shards, resume, merge
LINES = [
    "cat dog", "the new york city", "pup ##py and kit ##ten", "cat dog", "paris", "", "banana split",
    "the cat", "l . frank ba ##um", "cat dog", "piano ! ?", "new york", "x", "y z", "paris",
    "dog dog", "kitten", "the", "cat dog", "a b c", "pup ##py",
]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "train.src"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


INDEX_FP = {"path": "idx", "meta_sha256": "m1"}


def run(index, source, prefix, num_shards=1, shard_id=0, **kw):
    stop = kw.pop("stop_after_chunks", None)
    opts = {"chunk_lines": 4, **kw}
    return mine_shard(source, str(prefix), make_miner(index, **opts), INDEX_FP, num_shards, shard_id,
                      progress=False, stop_after_chunks=stop)


def test_shard_range_is_balanced_and_contiguous():
    assert [shard_range(10, 3, i) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [shard_range(2, 3, i) for i in range(3)] == [(0, 0), (0, 1), (1, 2)]
    with pytest.raises(ValueError):
        shard_range(10, 3, 3)


def test_three_shards_merge_equals_unsharded(index, source, tmp_path):
    run(index, source, tmp_path / "one")
    s1 = merge_shards(str(tmp_path / "one.align"), 1, progress=False)
    for i in range(3):
        run(index, source, tmp_path / "three", 3, i)
    merge_main(["--output", str(tmp_path / "three.align"), "--num-shards", "3", "--source", str(source), "--no-progress"])
    one = (tmp_path / "one.align").read_bytes()
    assert one == (tmp_path / "three.align").read_bytes()
    rows = read_alignments(tmp_path / "one.align", source)
    assert rows[0].tolist() == [1, 2] and rows[1].tolist() == [0, 5, 5, 5] and rows[8].tolist() == [9] * 5
    assert rows[5].tolist() == []
    s3 = json.loads((tmp_path / "three.align.stats.json").read_text())
    for key in ("tokens", "tokens_with_knowledge", "tokens_exact", "tokens_retrieved", "tokens_masked"):
        assert s1["counts"][key] == s3["counts"][key]
    assert s1["counts"]["lines"] == len(LINES) and s1["counts"]["dedup_hits"] >= 4
    n_tokens = sum(len(l.split()) for l in LINES)
    assert s1["counts"]["tokens"] == n_tokens
    assert s1["share_tokens_with_knowledge"] == pytest.approx(s1["counts"]["tokens_with_knowledge"] / n_tokens)


def test_kill_and_resume_is_identical(index, source, tmp_path):
    full = run(index, source, tmp_path / "full")
    run(index, source, tmp_path / "cut", stop_after_chunks=2)
    paths = shard_paths(str(tmp_path / "cut"), 1, 0)
    state = json.loads(open(paths["progress"]).read())
    assert state["lines_done"] == 8 and not state["complete"]
    with open(paths["align"], "a") as f:  # a half-written chunk after the last checkpoint
        f.write("1 2 3\n4 5")
    resumed = run(index, source, tmp_path / "cut")
    assert (tmp_path / "cut.shard0of1.align").read_bytes() == (tmp_path / "full.shard0of1.align").read_bytes()
    assert resumed["counts"] == full["counts"]  # the dedup cache was rebuilt from the written lines
    # rerunning a complete shard changes nothing
    run(index, source, tmp_path / "cut")
    assert (tmp_path / "cut.shard0of1.align").read_bytes() == (tmp_path / "full.shard0of1.align").read_bytes()


def test_resume_with_other_options_or_source_is_refused(index, source, tmp_path):
    run(index, source, tmp_path / "p", stop_after_chunks=1)
    with pytest.raises(ValueError, match="stopword_masking"):
        run(index, source, tmp_path / "p", stopword_masking=False)
    with pytest.raises(ValueError, match="meta_sha256|index"):
        mine_shard(source, str(tmp_path / "p"), make_miner(index, chunk_lines=4), {"path": "idx", "meta_sha256": "m2"},
                   progress=False)
    source.write_text("other\n", encoding="utf-8")
    with pytest.raises(ValueError, match="source"):
        run(index, source, tmp_path / "p")


def test_merge_refuses_missing_or_incomplete_shards(index, source, tmp_path):
    run(index, source, tmp_path / "m", 3, 0)
    run(index, source, tmp_path / "m", 3, 2)
    with pytest.raises(FileNotFoundError, match=r"m\.shard1of3\.progress\.json"):
        merge_shards(str(tmp_path / "m.align"), 3, progress=False)
    run(index, source, tmp_path / "m", 3, 1, stop_after_chunks=1)
    with pytest.raises(ValueError, match="shard 1 of 3 is incomplete"):
        merge_shards(str(tmp_path / "m.align"), 3, progress=False)
    run(index, source, tmp_path / "m", 3, 1)
    merge_shards(str(tmp_path / "m.align"), 3, progress=False)
    assert not os.path.exists(str(tmp_path / "m.align.tmp"))


def test_diversity_stats_by_hand():
    rows = [np.array([1, 0, 2]), np.array([3, 0]), np.array([0])]
    lines = ["cat the dog", "cat ,", "hi"]
    stats = diversity_stats(rows, lines)
    # cat -> {1, 3}, dog -> {2}: (2 + 1) / 2 types; sentences: 2, 1, 0 distinct ids
    assert stats["distinct_items_per_token_type"] == 1.5
    assert stats["distinct_items_per_sentence"] == 1.0
    assert stats["distinct_items_per_sentence_with_knowledge"] == 1.5
    assert stats["distinct_items_used"] == 3


# --------------------------------------------------------------------------- end to end with a tiny real retriever
def test_cli_end_to_end_with_tiny_bert(tmp_path, source, tiny_bert):
    kb_mod = pytest.importorskip("data_prep.ki.knowledge_base")
    ret_mod = pytest.importorskip("data_prep.ki.retriever")
    bert_dir = tiny_bert
    retriever = ret_mod.TokenKnowledgeRetriever.from_pretrained_bert(str(bert_dir), projection_dim=16)
    retriever.save(str(tmp_path / "retriever"))
    items = [kb_mod.KnowledgeItem("wikipedia", t.title(), f"{t} is a thing number {i}.") for i, t in TITLES.items()]
    items.append(kb_mod.KnowledgeItem("wordnet", "banana", "banana: an elongated fruit"))
    kb_mod.write_knowledge_base(tmp_path / "kb", items)
    common = ["--knowledge-base", str(tmp_path / "kb"), "--retriever", str(tmp_path / "retriever")]
    from data_prep.ki import encode_knowledge as ki_index
    from data_prep.ki import mine as ki_mine

    ki_index.main(common + ["--out", str(tmp_path / "idx"), "--gpu", "no", "--device", "cpu", "--no-progress"])
    table = np.load(tmp_path / "idx" / "knowledge_table.npy")
    assert table.shape == (11, 32) and not table[0].any() and table[1:].any(axis=1).all()
    for i in range(2):
        ki_mine.main(common + ["--source", str(source), "--index", str(tmp_path / "idx"), "--output", str(tmp_path / "out"),
                               "--num-shards", "2", "--shard-id", str(i), "--gpu", "no", "--device", "cpu", "--chunk-lines", "5",
                               "--no-progress"])
    stats = merge_main(["--output", str(tmp_path / "out.align"), "--num-shards", "2", "--no-progress"])
    rows = read_alignments(tmp_path / "out.align", source)
    assert rows[1].tolist()[1:] == [5, 5, 5] and rows[1][0] == 0  # "the" masked, "new york city" exact
    assert rows[8].tolist() == [9] * 5
    assert all(((r >= 0) & (r <= 10)).all() for r in rows)
    assert rows[6].min() > 0  # "banana split": retrieved, some item
    assert stats["counts"]["tokens_retrieved"] > 0
    # an index built from another knowledge base is refused
    kb_mod.write_knowledge_base(tmp_path / "kb", items[:-1])
    with pytest.raises(ValueError, match="does not match"):
        ki_mine.main(common + ["--source", str(source), "--index", str(tmp_path / "idx"), "--output", str(tmp_path / "o2"),
                               "--gpu", "no", "--device", "cpu", "--no-progress"])
