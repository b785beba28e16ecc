"""Sharded and resumable ``kid-retrieve`` / ``kid-build-trie`` and ``kid-merge-shards``
(data_prep.shards): shards merged == the unsharded output byte for byte (and the stats),
resume after a simulated kill without recomputing finished lines, finished shards skipped,
mismatched resumes and bad shard flags refused, merge checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from informative_dialogue.errors import CorpusError
from informative_dialogue.kid.trie_files import save_jsonl
from data_prep.kid import build_trie, retrieve
from data_prep.kid.collection import Passage, index_by_id
from data_prep.kid.merge import main as merge_main
from data_prep.shards import merge_counts, shard_files
from data_prep.kid.sparse_retrievers import BM25Retriever, RandomRetriever
from data_prep.kid.triples_cache import append_triples_cache, load_triples_cache

COLLECTION = [
    Passage("volcano", "Volcano", "A volcano erupts lava and ash. Mount Etna is a volcano in Sicily."),
    Passage("chess", "Chess", "Chess is a board game. Magnus Carlsen is the world chess champion."),
    Passage("jazz", "Jazz", "Jazz is a music genre from New Orleans. Louis Armstrong played the trumpet."),
    Passage("rome", "Roman Empire", "Augustus was the first Roman emperor. The empire built roads."),
]
CONTEXTS = [
    "have you seen Mount Etna ? __eou__ the lava was amazing",
    "",  # empty context: no passages, and it shifts the random retriever's rows
    "Magnus Carlsen plays chess __eou__ who is the champion ?",
    "I love jazz and the trumpet",
    "zzz qqq",
    "the roman emperor Augustus built roads",
    "lava and chess",
]
TIMINGS = {"index_seconds", "search_seconds", "contexts_per_second", "passages_per_second",
           "parse_seconds", "total_seconds", "passages_parsed", "num_shards", "input", "retrieval"}


def write_inputs(tmp: Path) -> tuple[Path, Path]:
    coll, src = tmp / "c.jsonl", tmp / "test.src"
    coll.write_text("".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n" for p in COLLECTION))
    src.write_text("".join(c + "\n" for c in CONTEXTS))
    return coll, src


def retrieve_args(src: Path, coll: Path, out: Path, *extra: str, retriever: str = "sparse") -> list[str]:
    return ["--input", str(src), "--collection", str(coll), "--output", str(out), "--retriever", retriever, "-k", "2", *extra]


def run_sharded(main, args_of, out: Path, n: int, **kw) -> dict:
    for i in range(n):
        main(args_of(out) + ["--num-shards", str(n), "--shard-id", str(i), "--chunk-lines", "1"], **kw)
    return merge_main(["--output", str(out), "--num-shards", str(n)])


def comparable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in TIMINGS}


@pytest.fixture(scope="module")
def nlp():
    try:
        return build_trie.load_spacy()
    except OSError as exc:  # the spaCy model is installed by install.sh
        pytest.skip(f"spaCy model not installed: {exc}")


# --------------------------------------------------------------------------------------------
# kid-retrieve


@pytest.mark.parametrize("retriever", ["sparse", "random"])
def test_retrieve_sharded_equals_unsharded(tmp_path: Path, retriever: str) -> None:
    coll, src = write_inputs(tmp_path)
    whole = tmp_path / "whole.jsonl"
    stats = retrieve.main(retrieve_args(src, coll, whole, "--chunk-lines", "2", retriever=retriever))
    # one call over all contexts (the pre-sharding behaviour) writes the same file
    engine = BM25Retriever([p.retrieval_text() for p in COLLECTION]) if retriever == "sparse" else RandomRetriever(len(COLLECTION), seed=1)
    ref = tmp_path / "ref.jsonl"
    retrieve.write_results(ref, retrieve.retrieve([retrieve.clean_context(c) for c in CONTEXTS], COLLECTION, engine, 2))
    assert whole.read_bytes() == ref.read_bytes()
    assert not shard_files(whole, 1, 0)["progress"] in [str(p) for p in tmp_path.iterdir()]  # shard files removed
    sharded = tmp_path / "sharded.jsonl"
    merged = run_sharded(retrieve.main, lambda out: retrieve_args(src, coll, out, retriever=retriever), sharded, 3)
    assert sharded.read_bytes() == whole.read_bytes()
    assert comparable(merged) == comparable(stats) and merged["num_shards"] == 3
    hits = [len(json.loads(line)["passages"]) for line in whole.read_text().splitlines()]
    assert stats["lines"] == 7 and stats["empty_contexts"] == 1 and stats["empty_results"] == hits.count(0)
    assert stats["mean_hits"] == pytest.approx(sum(hits) / 7) and hits[1] == 0
    assert json.loads(Path(f"{sharded}.stats.json").read_text()) == merged


def test_retrieve_resume_after_kill(tmp_path: Path, monkeypatch) -> None:
    coll, src = write_inputs(tmp_path)
    out = tmp_path / "r.jsonl"
    args = retrieve_args(src, coll, out, "--num-shards", "2", "--shard-id", "1", "--chunk-lines", "2")
    assert retrieve.main(args, stop_after_chunks=1) == {"stopped_at_line": 5}  # shard 1 = lines [3, 7)
    files = shard_files(out, 2, 1)
    state = json.loads(Path(files["progress"]).read_text())
    assert state["lines_done"] == 2 and not state["complete"]
    with open(files["data"], "ab") as f:  # a chunk half written when the run was killed
        f.write(b'{"line": 5, "passa')
    seen: list[int] = []
    real = retrieve.retrieve
    monkeypatch.setattr(retrieve, "retrieve", lambda ctx, *a, **k: seen.append(len(ctx)) or real(ctx, *a, **k))
    retrieve.main(args)
    assert seen == [2]  # only lines 5 and 6 were retrieved again
    complete = Path(files["data"]).read_bytes()
    fresh = tmp_path / "fresh.jsonl"
    retrieve.main(retrieve_args(src, coll, fresh, "--num-shards", "2", "--shard-id", "1", "--chunk-lines", "2"))
    assert complete == Path(shard_files(fresh, 2, 1)["data"]).read_bytes()
    # a complete shard is skipped without building the retriever
    monkeypatch.setattr(retrieve, "build_retriever", lambda *a: pytest.fail("complete shard recomputed"))
    assert retrieve.main(args)["lines"] == 4 and Path(files["data"]).read_bytes() == complete
    # killed after its last chunk, before it was marked complete: completed without retrieving
    Path(files["progress"]).write_text(json.dumps({**json.loads(Path(files["progress"]).read_text()), "complete": False}))
    Path(files["stats"]).unlink()
    assert retrieve.main(args)["lines"] == 4 and json.loads(Path(files["stats"]).read_text())["lines"] == 4


def test_retrieve_unsharded_run_resumes(tmp_path: Path) -> None:
    coll, src = write_inputs(tmp_path)
    out = tmp_path / "r.jsonl"
    retrieve.main(retrieve_args(src, coll, out, "--chunk-lines", "3"), stop_after_chunks=1)
    assert not out.exists() and Path(shard_files(out, 1, 0)["progress"]).exists()
    stats = retrieve.main(retrieve_args(src, coll, out, "--chunk-lines", "3"))
    assert stats["lines"] == 7 and len(out.read_text().splitlines()) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "r.jsonl", "r.jsonl.stats.json", "test.src"]


def test_retrieve_resume_refuses_other_options_or_input(tmp_path: Path) -> None:
    coll, src = write_inputs(tmp_path)
    out = tmp_path / "r.jsonl"
    shard = ["--num-shards", "2", "--shard-id", "0", "--chunk-lines", "1"]
    retrieve.main(retrieve_args(src, coll, out, *shard), stop_after_chunks=1)
    progress = shard_files(out, 2, 0)["progress"]
    with pytest.raises(ValueError, match=rf"{progress}: cannot resume.*option bm25_k1: recorded 1.2, now 0.9"):
        retrieve.main(retrieve_args(src, coll, out, *shard, "--bm25-k1", "0.9"))
    with pytest.raises(ValueError, match="option collection_key"):
        coll.write_text(coll.read_text().replace("Sicily", "Italy"))
        retrieve.main(retrieve_args(src, coll, out, *shard))
    write_inputs(tmp_path)
    src.write_text(src.read_text().replace("lava", "magma"))
    with pytest.raises(ValueError, match=rf"{progress}: cannot resume.*source: recorded"):
        retrieve.main(retrieve_args(src, coll, out, *shard))


@pytest.mark.parametrize("flags, message", [
    (["--num-shards", "0"], "--num-shards must be >= 1, got 0"),
    (["--num-shards", "2", "--shard-id", "2"], r"--shard-id must be in 0\.\.1 \(--num-shards 2\), got 2"),
    (["--shard-id", "-1"], "--shard-id must be in 0..0"),
    (["--chunk-lines", "0"], "--chunk-lines must be >= 1"),
    (["--num-shards", "2", "--stats", "x.json"], "--stats names the merged stats"),
])
def test_bad_shard_flags(tmp_path: Path, flags: list[str], message: str) -> None:
    coll, src = write_inputs(tmp_path)
    with pytest.raises(ValueError, match=message):
        retrieve.main(retrieve_args(src, coll, tmp_path / "r.jsonl", *flags))
    ret = tmp_path / "r.jsonl"
    ret.write_text("")
    with pytest.raises(ValueError, match=message):  # checked before spaCy is loaded
        build_trie.main(["--retrieval", str(ret), "--collection", str(coll), "--output", str(tmp_path / "t.jsonl"), *flags])
    assert not list(tmp_path.glob("*shard*"))


def test_merge_errors(tmp_path: Path) -> None:
    coll, src = write_inputs(tmp_path)
    out = tmp_path / "r.jsonl"

    def shard(i: int, *extra: str, **kw) -> None:
        retrieve.main(retrieve_args(src, coll, out, "--num-shards", "3", "--shard-id", str(i), "--chunk-lines", "1", *extra), **kw)

    merge = ["--output", str(out), "--num-shards", "3"]
    shard(0)
    shard(2)
    with pytest.raises(FileNotFoundError, match=r"r\.shard1of3\.progress\.json: shard 1 of 3 is missing"):
        merge_main(merge)
    shard(1, stop_after_chunks=1)
    with pytest.raises(ValueError, match=r"r\.shard1of3\.progress\.json: shard 1 of 3 is incomplete \(1 of 2 lines\)"):
        merge_main(merge)
    Path(shard_files(out, 3, 1)["progress"]).unlink()
    shard(1, "--bm25-b", "0.5")
    with pytest.raises(ValueError, match=r"r\.shard1of3\.progress\.json: options differ from shard 0's"):
        merge_main(merge)
    Path(shard_files(out, 3, 1)["progress"]).unlink()
    shard(1)
    assert merge_main(merge)["lines"] == 7 and not any(tmp_path.glob(".*partial"))
    good = out.read_bytes()
    data = Path(shard_files(out, 3, 2)["data"])
    text = data.read_text()
    data.write_text(text.replace('"line": 6', '"line": 7'))  # same size, wrong line number
    with pytest.raises(CorpusError, match=r"r\.shard2of3\.jsonl:3: 'line' is 7, expected 6"):
        merge_main(merge)
    data.write_text(text + text.splitlines()[-1] + "\n")  # a line more than recorded
    with pytest.raises(CorpusError, match=r"r\.shard2of3\.jsonl.*differs from the \d+ bytes recorded"):
        merge_main(merge)
    data.write_text(text)
    progress = Path(shard_files(out, 3, 1)["progress"])
    state = json.loads(progress.read_text())
    progress.write_text(json.dumps({**state, "start_line": 3, "end_line": 5}))  # a gap after shard 0
    with pytest.raises(ValueError, match=r"r\.shard1of3\.progress\.json: starts at line 3 but shard 0 ends at 2"):
        merge_main(merge)
    progress.write_text(json.dumps(state))
    src.write_text(src.read_text() + "one more context\n")  # the input changed after sharding
    with pytest.raises(ValueError, match=r"test\.src: differs from the input the shards were computed from"):
        merge_main(merge)
    assert out.read_bytes() == good  # failed merges left the earlier output alone
    with pytest.raises(ValueError, match="--num-shards must be >= 1"):
        merge_main(["--output", str(out), "--num-shards", "0"])


def test_merge_counts() -> None:
    a = {"lines": 2, "max_depth": 3, "passage_triples": {"x": 1}}
    b = {"lines": 5, "max_depth": 2, "passage_triples": {"x": 1, "y": 4}, "hits": 1}
    assert merge_counts(a, b) == {"lines": 7, "max_depth": 3, "passage_triples": {"x": 1, "y": 4}, "hits": 1}
    assert a == {"lines": 2, "max_depth": 3, "passage_triples": {"x": 1}}  # inputs untouched
    with pytest.raises(ValueError, match=r"p\.json: passage_triples\['x'\] is 1 in one part and 2 in another"):
        merge_counts(a, {"passage_triples": {"x": 2}}, "p.json")


# --------------------------------------------------------------------------------------------
# kid-build-trie


def trie_args(ret: Path, coll: Path, src: Path, out: Path, cache: Path) -> list[str]:
    return ["--retrieval", str(ret), "--collection", str(coll), "--source", str(src), "--output", str(out),
            "--triples-cache", str(cache)]


def test_build_trie_sharded_equals_unsharded_and_resumes(tmp_path: Path, nlp, monkeypatch) -> None:
    coll, src = write_inputs(tmp_path)
    ret = tmp_path / "ret.jsonl"
    retrieve.main(retrieve_args(src, coll, ret))
    cache = tmp_path / "triples.jsonl"
    whole = tmp_path / "whole.jsonl"
    stats = build_trie.main(trie_args(ret, coll, src, whole, cache) + ["--chunk-lines", "3"], nlp=nlp)
    assert stats["examples"] == 7 and stats["no_passages"] == 2 and stats["passages_parsed"] == 4
    # the format of informative_dialogue.kid.trie_files.save_jsonl, built in one pass
    passages = index_by_id(COLLECTION)
    retrieved = build_trie.read_retrieval(ret, passages)
    triples, _ = build_trie.passage_triples([p for ids in retrieved for p in ids], passages, nlp, str(cache))
    tries = build_trie.build_tries(retrieved, triples, build_trie.knowledge_trie_module().WordNormalizer())
    entities = build_trie.entities_batch([retrieve.clean_context(c) for c in CONTEXTS], nlp)
    ref = tmp_path / "ref.jsonl"
    size = save_jsonl(ref, list(zip(tries, entities)))
    assert whole.read_bytes() == ref.read_bytes()
    distinct = {p for ids in retrieved for p in ids}
    assert stats["distinct_passages"] == len(distinct) == 4
    assert stats["passage_triples_mean"] == pytest.approx(sum(len(triples[p]) for p in distinct) / 4)
    assert (stats["keys_total"], stats["bytes"], stats["max_depth"]) == (size["keys_total"], size["bytes"], size["max_depth"])
    assert stats["keys_mean"] == pytest.approx(size["keys_mean"]) and stats["value_words_mean"] == pytest.approx(size["value_words_mean"])

    sharded = tmp_path / "sharded.jsonl"
    merged = run_sharded(build_trie.main, lambda out: trie_args(ret, coll, src, out, cache), sharded, 3, nlp=nlp)
    assert sharded.read_bytes() == whole.read_bytes()
    assert comparable(merged) == pytest.approx(comparable(stats), rel=1e-12) and merged["passages_parsed"] == 0

    # resume: shard 1 of 2 (examples [3, 7)) killed after one chunk, with a half-written line
    out = tmp_path / "t.jsonl"
    args = trie_args(ret, coll, src, out, cache) + ["--num-shards", "2", "--shard-id", "1", "--chunk-lines", "2"]
    assert build_trie.main(args, nlp=nlp, stop_after_chunks=1) == {"stopped_at_line": 5}
    data = Path(shard_files(out, 2, 1)["data"])
    with open(data, "ab") as f:
        f.write(b'{"id": 5, "entit')
    seen: list[int] = []
    real = build_trie.entities_batch
    monkeypatch.setattr(build_trie, "entities_batch", lambda ctx, model: seen.append(len(ctx)) or real(ctx, model))
    shard_stats = build_trie.main(args, nlp=nlp)
    assert seen == [2] and shard_stats["examples"] == 4
    assert data.read_bytes() == b"".join(whole.read_bytes().splitlines(keepends=True)[3:])
    # other --top-k or --source content: refused, naming the progress file
    data.unlink()
    Path(shard_files(out, 2, 1)["stats"]).unlink()
    progress = json.loads(Path(shard_files(out, 2, 1)["progress"]).read_text())
    Path(shard_files(out, 2, 1)["progress"]).write_text(json.dumps({**progress, "complete": False, "lines_done": 0, "byte_offset": 0}))
    data.write_text("")
    with pytest.raises(ValueError, match=r"t\.shard1of2\.progress\.json: cannot resume.*option top_k: recorded 0, now 1"):
        build_trie.main(args + ["-k", "1"], nlp=nlp)
    src.write_text(src.read_text().replace("Etna", "Vesuvius"))
    with pytest.raises(ValueError, match=r"t\.shard1of2\.progress\.json: cannot resume.*option contexts"):
        build_trie.main(args, nlp=nlp)


def test_triples_cache_survives_an_interrupted_append(tmp_path: Path) -> None:
    cache = tmp_path / "cache.jsonl"
    passages = index_by_id(COLLECTION)
    from data_prep.kid.triples_cache import text_hash

    rec = {"id": "chess", "hash": text_hash(passages["chess"]), "triples": [["chess", "is", "board game"]]}
    cache.write_text(json.dumps(rec) + "\n" + '{"id": "jazz", "hash": "ab')  # killed while appending
    assert load_triples_cache(str(cache), passages) == {"chess": [("chess", "is", "board game")]}
    rec2 = {**rec, "id": "rome", "hash": text_hash(passages["rome"])}
    append_triples_cache(str(cache), [rec2])
    assert cache.read_text() == json.dumps(rec) + "\n" + json.dumps(rec2) + "\n"
    cache.write_text("not json\n" + json.dumps(rec) + "\n")
    with pytest.raises(CorpusError, match=r"cache\.jsonl:1: bad triples-cache line"):
        load_triples_cache(str(cache), passages)
