"""Commands that write a set of files write all of them or none (issue #17): a failure leaves the
previous output exactly as it was, with no half-written file and no staging file left behind
(``informative_dialogue.text_io.OutputSet``). prepare-dailydialog and tokenize-dialog are tested
in their own files; these are the other writers."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.corpora import rocstories, wow
from data_prep.ki import knowledge_base, merge
from data_prep.ki.alignment_ablations import main as transform_main
from informative_dialogue.text_io import file_sha256
from data_prep.ki.shards import COUNT_KEYS, shard_paths
from data_prep.nd import source_entropy
from informative_dialogue.errors import CorpusError


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_wow_mini(tmp_path: Path) -> None:
    data, out = tmp_path / "wow", tmp_path / "out"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.pro_qa.txt").write_text(f"0\t{split} post\t{split} answer\n")
        (data / f"{split}.sent_fact.txt").write_text("0\tsome fact\n")
    wow.main(["--format", "mini", "--input", str(data), "--output", str(out)])
    before = snapshot(out)
    (data / "train.pro_qa.txt").write_text("0\tnew post\tnew answer\n")
    (data / "test.pro_qa.txt").write_text("0\tbroken line without the response\n")
    with pytest.raises(CorpusError, match=r"test\.pro_qa\.txt:1: expected 3 tab-separated fields"):
        wow.main(["--format", "mini", "--input", str(data), "--output", str(out)])
    assert snapshot(out) == before


def write_cloze(path: Path, label: str) -> Path:
    header = ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
              "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow(["id1", "A.", "B.", "C.", "D.", "Right.", "Wrong.", label])
    return path


def test_prepare_rocstories(tmp_path: Path) -> None:
    out = tmp_path / "out"
    good, bad = write_cloze(tmp_path / "val.csv", "1"), write_cloze(tmp_path / "test.csv", "1")
    rocstories.main(["--file", f"val={good}", "--file", f"test={bad}", "--output", str(out)])
    before = snapshot(out)
    write_cloze(bad, "3")
    with pytest.raises(CorpusError, match=r"test\.csv:2: AnswerRightEnding must be 1 or 2"):
        rocstories.main(["--file", f"val={good}", "--file", f"test={bad}", "--output", str(out)])
    assert snapshot(out) == before


def test_build_knowledge_base(tmp_path: Path) -> None:
    jsonl, out = tmp_path / "w.jsonl", tmp_path / "kb"
    jsonl.write_text('{"title": "A", "text": "A is a letter."}\n{"title": "B", "text": "B is too."}\n')
    knowledge_base.main(["--output", str(out), "--wiki-jsonl", str(jsonl)])
    before = snapshot(out)
    assert set(before) == {"items.tsv", "stats.json"}
    jsonl.write_text('{"title": "C", "text": "C is new."}\n{"title": "B", \n')
    with pytest.raises(CorpusError, match=r"w\.jsonl:2: invalid JSON"):
        knowledge_base.main(["--output", str(out), "--wiki-jsonl", str(jsonl)])
    assert snapshot(out) == before  # no items.tsv.tmp left, the old knowledge base whole


def test_source_entropy_fails_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok, out = tmp_path / "tok", tmp_path / "ent"
    tok.mkdir()
    (tok / "train.src").write_text("a\nb\nc\nd\n")
    (tok / "train.tgt").write_text("ok\nok\nyes\nno\n")
    (tok / "valid.src").write_text("v\n")
    (tok / "valid.tgt").write_text("w\n")
    source_entropy.main(["--input", str(tok), "--output", str(out)])
    before = snapshot(out)
    assert {"train.scores", "stats.json", "negative/train.src", "bottom/train.tgt", "negative/valid.src"} <= set(before)
    (tok / "train.tgt").write_text("ok\nok\nok\nno\n")
    calls = []

    def failing_subset(out_dir, *args, **kwargs):  # the second subset fails after the first was written
        calls.append(out_dir)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(out_dir, *args, **kwargs)

    original = source_entropy.write_subset
    monkeypatch.setattr(source_entropy, "write_subset", failing_subset)
    with pytest.raises(OSError, match="disk full"):
        source_entropy.main(["--input", str(tok), "--output", str(out)])
    assert snapshot(out) == before


def make_shards(prefix: Path, source: Path, shards: list[list[str]]) -> None:
    """Complete ki-mine shards of ``source`` (lines split as given) with their progress files."""
    lines = source.read_text().splitlines()
    fingerprint = {"path": str(source), "size": source.stat().st_size, "sha256": file_sha256(source),
                   "lines": len(lines)}
    start = 0
    for i, rows in enumerate(shards):
        paths = shard_paths(str(prefix), len(shards), i)
        data = "".join(r + "\n" for r in rows).encode()
        Path(paths["align"]).write_bytes(data)
        counts = {k: 0 for k in COUNT_KEYS}
        counts.update(lines=len(rows), tokens=sum(len(r.split()) for r in rows))
        Path(paths["progress"]).write_text(json.dumps({
            "format": 1, "source": fingerprint, "index": {"path": "idx", "meta_sha256": "m"}, "options": {},
            "num_shards": len(shards), "shard_id": i, "start_line": start, "end_line": start + len(rows),
            "lines_done": len(rows), "byte_offset": len(data), "counts": counts, "elapsed_s": 0.0, "complete": True,
        }))
        start += len(rows)


def test_merge_alignments_validates_before_replacing(tmp_path: Path) -> None:
    source = tmp_path / "train.src"
    source.write_text("the cat\nsat\non the\nmat\n")
    prefix = tmp_path / "m"
    make_shards(prefix, source, [["0 7", "3"], ["0 0", "9"]])
    merge.main(["--output", str(prefix) + ".align", "--num-shards", "2", "--no-progress"])
    assert (tmp_path / "m.align").read_text() == "0 7\n3\n0 0\n9\n"
    before = {p: (tmp_path / p).read_bytes() for p in ("m.align", "m.align.stats.json")}
    # a shard line with a superscript digit: named by shard file and line, and the source line
    make_shards(prefix, source, [["0 7", "3"], ["0 0", "\u00b2"]])
    with pytest.raises(CorpusError, match=r"m\.shard1of2\.align:2: expected non-negative integer knowledge ids"):
        merge.main(["--output", str(prefix) + ".align", "--num-shards", "2", "--no-progress"])
    make_shards(prefix, source, [["0 7", "3"], ["0 0", "9 9"]])
    with pytest.raises(CorpusError, match=r"m\.shard1of2\.align:2: 2 knowledge ids but .*train\.src line 4 has 1"):
        merge.main(["--output", str(prefix) + ".align", "--num-shards", "2", "--no-progress"])
    # the merged file used to be replaced before it was checked
    assert {p: (tmp_path / p).read_bytes() for p in before} == before
    assert not list(tmp_path.glob(".*partial")) and not (tmp_path / "m.align.tmp").exists()


def test_transform_alignments_writes_output_and_stats_together(tmp_path: Path) -> None:
    (tmp_path / "s.src").write_text("a b\nc\n")
    (tmp_path / "a.align").write_text("1 0\n2\n")
    out = tmp_path / "r.align"
    transform_main(["--mode", "sentence", "--align", str(tmp_path / "a.align"), "--source", str(tmp_path / "s.src"),
                    "--output", str(out)])
    assert out.read_text() == "1 0\n2\n"
    assert json.loads((tmp_path / "r.align.stats.json").read_text())["mode"] == "sentence"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.align", "r.align", "r.align.stats.json", "s.src"]


def test_binarised_alignments_are_written_as_a_pair(tmp_path: Path) -> None:
    from informative_dialogue.ki.alignments import KnowledgeAlignments, alignment_paths

    prefix = tmp_path / "train.align"
    KnowledgeAlignments.from_rows([[1, 2], [3]]).save(prefix)
    ids_path, offsets_path = alignment_paths(prefix)
    assert np.load(ids_path).tolist() == [1, 2, 3] and np.load(offsets_path).tolist() == [0, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.align.ids.npy", "train.align.offsets.npy"]
