"""prepare-dailydialog: official counts on the shared zips, contexts, and bad input."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from informative_dialogue.errors import CorpusError
from data_prep.corpora.dailydialog import main, prepare_split


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def make_zip(folder: Path, split: str, text: str) -> None:
    """A DailyDialog-style split zip holding ``<split>/dialogues_<split>.txt``."""
    with zipfile.ZipFile(folder / f"{split}.zip", "w") as zf:
        zf.writestr(f"{split}/dialogues_{split}.txt", text)


@pytest.mark.parametrize(
    "split,pairs,unique",
    [("train", 76053, 68104), ("valid", 7069, 6996), ("test", 6740, 6693)],
)
def test_official_counts(shared_data: Path, split: str, pairs: int, unique: int) -> None:
    examples, stats = prepare_split(str(shared_data / "dailydialog"), split)
    assert stats["pairs"] == len(examples) == pairs
    assert stats["skipped"] == {}
    deduped, stats = prepare_split(str(shared_data / "dailydialog"), split, lowercase=True, dedup=True)
    assert stats["examples"] == len(deduped) == unique
    assert stats["duplicates_removed"] == pairs - unique


def test_cli_writes_aligned_files(shared_data: Path, tmp_path: Path) -> None:
    main(["--input", str(shared_data / "dailydialog"), "--output", str(tmp_path), "--lowercase",
          "--splits", "valid", "--max-dialogues", "3"])
    src, tgt = read_lines(tmp_path / "valid.src"), read_lines(tmp_path / "valid.tgt")
    assert len(src) == len(tgt) > 0
    assert src[1] == tgt[0]  # adjacent pairs chain: a response is the next query
    assert src == [s.lower() for s in src]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["splits"]["valid"]["dialogues"] == 3


def test_multi_turn_context(tmp_path: Path) -> None:
    make_zip(tmp_path, "test", "A one . __eou__ B two . __eou__ C three . __eou__ D four . __eou__\n")
    examples, _ = prepare_split(str(tmp_path), "test", context_turns=2, separator="<sep>")
    assert [(e.src, e.tgt) for e in examples] == [
        ("A one .", "B two ."),
        ("A one . <sep> B two .", "C three ."),
        ("B two . <sep> C three .", "D four ."),
    ]


def test_unzipped_folder_is_read_too(tmp_path: Path) -> None:
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "dialogues_validation.txt").write_text("Hi . __eou__ Hello . __eou__\n")
    examples, stats = prepare_split(str(tmp_path), "valid")
    assert [(e.src, e.tgt) for e in examples] == [("Hi .", "Hello .")]
    assert stats["dialogues"] == 1


def test_corrupt_zip_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "train.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(CorpusError, match=r"train\.zip: not a valid zip archive"):
        prepare_split(str(tmp_path), "train")


def test_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="neither test.zip nor test/dialogues_test.txt"):
        prepare_split(str(tmp_path), "test")


def test_line_without_eou_names_file_and_line(tmp_path: Path) -> None:
    make_zip(tmp_path, "train", "Hi . __eou__ Hello . __eou__\nHow are you ? __eou__ Fine\n")
    with pytest.raises(CorpusError, match=r"train\.zip!train/dialogues_train\.txt:2: dialogue does not end with '__eou__'"):
        prepare_split(str(tmp_path), "train")


def test_empty_utterance_is_a_counted_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_zip(tmp_path, "train", "A . __eou__  __eou__ C . __eou__ D . __eou__\n")
    examples, stats = prepare_split(str(tmp_path), "train")
    # pairs (A, ''), ('', C) are skipped; (C, D) is kept
    assert [(e.src, e.tgt) for e in examples] == [("C .", "D .")]
    assert stats["skipped"] == {"empty_utterance": 2}
    assert "empty_utterance" in caplog.text and "dialogues_train.txt:1" in caplog.text


def test_corrupt_split_leaves_the_previous_output_intact(tmp_path: Path) -> None:
    # the repro: a corrupt test.zip used to write the valid split, no stats.json, and leave
    # a stale test.src from an earlier run beside the new files
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for split in ("train", "validation", "test"):
        make_zip(data, split, f"{split} one . __eou__ {split} two . __eou__\n")
    main(["--input", str(data), "--output", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {f"{s}.{e}" for s in ("train", "valid", "test") for e in ("src", "tgt")} | {"stats.json"}
    make_zip(data, "validation", "new valid . __eou__ new two . __eou__\n")
    (data / "test.zip").write_bytes(b"PK\x03\x04 corrupt")
    with pytest.raises(CorpusError, match=r"test\.zip: not a valid zip archive"):
        main(["--input", str(data), "--output", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing new, nothing half-written


def test_lone_carriage_return_and_non_utf8_name_the_line(tmp_path: Path) -> None:
    make_zip(tmp_path, "train", "Hi . __eou__ Hello . __eou__\nHow are \ryou ? __eou__ Fine . __eou__\n")
    with pytest.raises(CorpusError, match=r"dialogues_train\.txt:2: carriage return"):
        prepare_split(str(tmp_path), "train")
    with zipfile.ZipFile(tmp_path / "test.zip", "w") as zf:
        zf.writestr("test/dialogues_test.txt", b"Hi . __eou__ Hello . __eou__\nCaf\xe9 ? __eou__ Oui . __eou__\n")
    with pytest.raises(CorpusError, match=r"dialogues_test\.txt:2: not UTF-8 text"):
        prepare_split(str(tmp_path), "test")
