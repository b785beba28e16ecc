"""prepare-cmu-dog: counts and content on the real CMU_DoG tarball, and error/skip handling on
small hand-made conversations."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from data_prep.corpora.cmu_dog_source import load_documents, section0_text
from data_prep.corpora.cmu_dog import main
from informative_dialogue.errors import CorpusError



@pytest.fixture(scope="module")
def tarball(shared_data: Path) -> Path:
    """The real CMU_DoG tarball (through conftest's ``shared_data``: $SHARED_DATA, skip or CI failure)."""
    return shared_data / "cmu_dog.tar.gz"


# measured on ../shared/data/cmu_dog.tar.gz with the defaults (3 context turns, merging on)
EXPECTED = {
    "train": {"conversations": 3373, "raw_turns": 107792, "merged_turns": 31481, "examples": 72921,
              "knowledge_unseen": 18336, "skipped": {"empty_turn": 17}},
    "valid": {"conversations": 229, "raw_turns": 7030, "merged_turns": 1924, "examples": 4877,
              "knowledge_unseen": 1134, "skipped": {}},
    "test": {"conversations": 619, "raw_turns": 19375, "merged_turns": 5470, "examples": 13286,
             "knowledge_unseen": 3499, "skipped": {}},
}


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(scope="module")
def real_out(tarball: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmu_dog")
    main(["--input", str(tarball), "--output", str(out)])
    return out


def test_real_counts(real_out: Path) -> None:
    stats = json.loads((real_out / "stats.json").read_text())
    assert stats["documents"] == 30
    for split, expected in EXPECTED.items():
        got = stats["splits"][split]
        for key, value in expected.items():
            assert got[key] == value, (split, key)
        n = expected["examples"]
        for ext in ("src", "tgt", "knowledge", "docid"):
            assert len(lines(real_out / f"{split}.{ext}")) == n, (split, ext)


def test_real_content(real_out: Path) -> None:
    src, tgt = lines(real_out / "train.src"), lines(real_out / "train.tgt")
    knowledge, docid = lines(real_out / "train.knowledge"), lines(real_out / "train.docid")
    assert src[0] == "hello"
    assert tgt[0] == "hello there, I have not seen this movie so im going to take a minute to look it over :)"
    assert src[2] == f"hello __eou__ {tgt[0]} __eou__ Alright that is fine. What is the movie?"
    assert tgt[2] == "The movie is The Social Network"
    assert docid[0] == "17"
    assert knowledge[0].startswith(
        "movie name: The Social Network. year: 2010. director: David Fincher. genre: Biographical, drama. "
        "rating: Rotten Tomatoes: 96% and average: 9/10, Metacritic Score: 95/100, CinemaScore: B+. "
        "cast: Jesse Eisenberg as Mark Zuckerberg, Andrew Garfield as Eduardo Saverin,"
    )
    assert " introduction: The Social Network is a 2010 American" in knowledge[0]
    assert " critical response: David Fincher's film" in knowledge[0]
    # the ninth turn ("may be worth watching!") continued the eighth: merged into one utterance
    assert "Rotten Tomatoes has rated it 96% so that's decent, and it is a movie from 2010 may be worth watching!" in tgt
    assert all(s.count("__eou__") <= 2 for s in src)
    # first valid example
    assert lines(real_out / "valid.src")[0] == "Hi there, nhow are you?"  # 'nhow' is in the data
    assert lines(real_out / "valid.tgt")[0] == "hello, how are you?"


def test_real_options_valid(tarball: Path, tmp_path: Path) -> None:
    main([
        "--input", str(tarball), "--output", str(tmp_path), "--splits", "valid", "--context-turns", "1",
        "--no-merge-consecutive", "--knowledge-only-if-seen", "--lowercase", "--dedup",
    ])
    stats = json.loads((tmp_path / "stats.json").read_text())["splits"]["valid"]
    assert (stats["pairs"], stats["duplicates_removed"], stats["examples"]) == (6801, 37, 6764)
    assert stats["merged_turns"] == 0
    src, knowledge = lines(tmp_path / "valid.src"), lines(tmp_path / "valid.knowledge")
    assert len(src) == 6764 and not any("__eou__" in s for s in src)
    assert src[0] == "hi there, nhow are you?"
    assert sum(1 for k in knowledge if not k) == stats["knowledge_unseen"] == 1487
    assert all(k == k.lower() for k in knowledge)
    assert not (tmp_path / "train.src").exists()


def test_load_documents(tarball: Path) -> None:
    docs = load_documents(tarball)
    assert sorted(docs) == list(range(30))
    assert all(sorted(d) == ["0", "1", "2", "3"] for d in docs.values())
    assert docs[17]["1"].startswith("In October 2003, 19-year-old Harvard University student Mark Zuckerberg")
    assert docs[0]["0"].startswith("movie name: Frozen.")


# ---------------------------------------------------------------------------------- hand-made

DOC = {
    "wikiDocumentIdx": 7,
    "0": {"movieName": "Some Film", "year": "2001", "cast": ["A as B", "C as D"], "critical_response": ["Good.", "Bad"],
          "introduction": "An intro."},
    "1": "Scene one.",
    "2": "Scene two.",
    "3": "Scene three.",
}


def turn(text: str, uid: str, doc_idx: int = 0) -> dict:
    return {"text": text, "uid": uid, "docIdx": doc_idx, "utcTimestamp": "2018-01-01T00:00:00Z"}


def conversation(history: list[dict], who: list[str] | None = None) -> dict:
    return {"history": history, "wikiDocumentIdx": 7, "whoSawDoc": who or ["user1", "user2"], "rating": 2}


def make_corpus(root: Path, convs: dict[str, dict | str]) -> Path:
    """Write WikiData/film.json and Conversations/<split>/<name>.json (every split gets the
    given conversations; a str value is written verbatim)."""
    (root / "WikiData").mkdir(parents=True)
    (root / "WikiData" / "film.json").write_text(json.dumps(DOC))
    for split in ("train", "valid", "test"):
        d = root / "Conversations" / split
        d.mkdir(parents=True)
        for name, conv in convs.items():
            (d / f"{name}.json").write_text(conv if isinstance(conv, str) else json.dumps(conv, indent=1))
    return root


def test_section0_text() -> None:
    assert section0_text(DOC["0"]) == (
        "movie name: Some Film. year: 2001. cast: A as B, C as D. introduction: An intro. critical response: Good. Bad."
    )


def test_handmade_examples_empty_turn_and_merge(tmp_path: Path) -> None:
    conv = conversation(
        [turn("Hi", "user1"), turn("hello", "user2"), turn("  \n ", "user2"), turn("there", "user2", 1),
         turn("Seen it?", "user1", 1), turn("Yes", "user2", 2)],
        who=["user2"],
    )
    root = make_corpus(tmp_path / "in", {"a": conv})
    out = tmp_path / "out"
    main(["--input", str(root), "--output", str(out), "--context-turns", "2"])
    assert lines(out / "train.src") == ["Hi", "Hi __eou__ hello there", "hello there __eou__ Seen it?"]
    assert lines(out / "train.tgt") == ["hello there", "Seen it?", "Yes"]
    # the merged utterance takes the docIdx of its last turn (1)
    assert lines(out / "train.knowledge") == ["Scene one.", "Scene one.", "Scene two."]
    assert lines(out / "train.docid") == ["7", "7", "7"]
    stats = json.loads((out / "stats.json").read_text())["splits"]["train"]
    assert stats["skipped"] == {"empty_turn": 1}
    assert stats["merged_turns"] == 1 and stats["knowledge_unseen"] == 1 and stats["examples"] == 3

    out2 = tmp_path / "out2"
    main(["--input", str(root), "--output", str(out2), "--knowledge-only-if-seen", "--no-merge-consecutive",
          "--context-turns", "1", "--splits", "valid"])
    assert lines(out2 / "valid.src") == ["Hi", "hello", "there", "Seen it?"]
    # user1 did not see the document: its response gets no knowledge
    assert lines(out2 / "valid.knowledge") == [section0_text(DOC["0"]), "Scene one.", "", "Scene two."]


def test_handmade_tarball_same_as_directory(tmp_path: Path) -> None:
    conv = conversation([turn("Hi", "user1"), turn("hello", "user2"), turn("bye", "user1", 3)])
    root = make_corpus(tmp_path / "cmu_dog", {"a": conv, "b": conversation([turn("only one", "user1")])})
    tar_path = tmp_path / "cmu.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(root, arcname="cmu_dog")
    main(["--input", str(tar_path), "--output", str(tmp_path / "t")])
    main(["--input", str(tmp_path), "--output", str(tmp_path / "d")])  # root one level down
    for split in ("train", "valid", "test"):
        for ext in ("src", "tgt", "knowledge", "docid"):
            assert (tmp_path / "t" / f"{split}.{ext}").read_text() == (tmp_path / "d" / f"{split}.{ext}").read_text()
    assert lines(tmp_path / "t" / "test.knowledge")[-1] == "Scene three."
    stats = json.loads((tmp_path / "t" / "stats.json").read_text())["splits"]["test"]
    assert stats["skipped"] == {"short_conversation": 1} and stats["examples"] == 2


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "in", {"broken": '{\n "history": [\n  {"text": "hi",,}\n ]\n}'})
    with pytest.raises(CorpusError, match=r"broken\.json:3: invalid JSON"):
        main(["--input", str(root), "--output", str(tmp_path / "out")])


def test_missing_field_names_file_and_turn(tmp_path: Path) -> None:
    bad = conversation([turn("Hi", "user1"), {"text": "hello", "uid": "user2"}])
    root = make_corpus(tmp_path / "in", {"nodoc": bad})
    with pytest.raises(CorpusError, match=r"nodoc\.json: history\[1\]: missing field 'docIdx'") as info:
        main(["--input", str(root), "--output", str(tmp_path / "out")])
    assert info.value.path.endswith("nodoc.json")


def test_missing_key_and_unknown_document(tmp_path: Path) -> None:
    conv = conversation([turn("Hi", "user1"), turn("hello", "user2")])
    del conv["whoSawDoc"]
    root = make_corpus(tmp_path / "a", {"c": conv})
    with pytest.raises(CorpusError, match=r"c\.json: missing key 'whoSawDoc'"):
        main(["--input", str(root), "--output", str(tmp_path / "out")])
    conv = conversation([turn("Hi", "user1"), turn("hello", "user2")])
    conv["wikiDocumentIdx"] = 99
    root = make_corpus(tmp_path / "b", {"c": conv})
    with pytest.raises(CorpusError, match=r"c\.json: key 'wikiDocumentIdx': document 99 is not in WikiData"):
        main(["--input", str(root), "--output", str(tmp_path / "out")])


def test_bad_document_section(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "in", {})
    doc = dict(DOC)
    del doc["2"]
    (root / "WikiData" / "film.json").write_text(json.dumps(doc))
    with pytest.raises(CorpusError, match=r"film\.json: missing key '2'"):
        load_documents(root)
