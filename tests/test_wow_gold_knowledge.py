"""examples/wow/gold_knowledge.py: WoW mini with its gold knowledge as KID input (the effect
study of examples/wow/RESULTS.md), on the real WoW mini test split and on hand-made files."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, require_shared_data


def _module():
    spec = importlib.util.spec_from_file_location("gold_knowledge", REPO_ROOT / "examples" / "wow" / "gold_knowledge.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gold_knowledge", module)
    spec.loader.exec_module(module)
    return module


def _write(folder: Path, split: str, qa: list[str], facts: list[str]) -> None:
    (folder / f"{split}.pro_qa.txt").write_text("".join(line + "\n" for line in qa), encoding="utf-8")
    (folder / f"{split}.sent_fact.txt").write_text("".join(line + "\n" for line in facts), encoding="utf-8")


def test_real_wow_mini_test_split(tmp_path: Path) -> None:
    wow = require_shared_data("wow_mini")
    gk = _module()
    out = tmp_path / "gold"
    assert gk.main(["--input", str(wow), "--splits", "test", "--output", str(out), "--max-sentences", "3"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    src = (out / "src").read_text().splitlines()
    knowledge = (out / "knowledge").read_text().splitlines()
    retrieval = [json.loads(line) for line in (out / "retrieval.jsonl").read_text().splitlines()]
    collection = {json.loads(line)["id"]: json.loads(line)["text"] for line in (out / "collection.jsonl").read_text().splitlines()}
    n = stats["examples"]
    assert n == stats["test_kept"] > 0 and stats["test_no_fact"] > 0  # test idx 0 is no_fact: left out
    assert len(src) == len((out / "tgt").read_text().splitlines()) == len(knowledge) == len(retrieval) == n
    assert (out / "ids").read_text().splitlines()[0].split("\t") != ["test", "0"]
    for i, row in enumerate(retrieval):  # line i retrieves exactly example i's own sentences, in order
        assert row["line"] == i and 1 <= len(row["passages"]) <= 3
        assert " ".join(collection[p["id"]] for p in row["passages"]) == knowledge[i]
    assert stats["sentences_per_example"] <= 3


def test_no_fact_dropped_max_sentences_and_errors(tmp_path: Path) -> None:
    gk = _module()
    data = tmp_path / "wow"
    data.mkdir()
    _write(data, "test", ["0\tpost a\tresp a", "1\tpost b\tresp b", "2\tpost c\tresp c"],
           ["0\tno_fact", "1\tfirst fact .\tsecond fact .", "2\tonly fact ."])
    out = tmp_path / "out"
    gk.main(["--input", str(data), "--splits", "test", "--output", str(out), "--max-sentences", "1"])
    assert (out / "src").read_text() == "post b\npost c\n"
    assert (out / "knowledge").read_text() == "first fact .\nonly fact .\n"
    assert json.loads((out / "stats.json").read_text())["test_no_fact"] == 1
    gk.main(["--input", str(data), "--splits", "test", "--output", str(out), "--max-sentences", "0"])
    assert (out / "knowledge").read_text() == "first fact . second fact .\nonly fact .\n"
    # an idx in one file only: error naming the file that lacks it
    _write(data, "valid", ["0\tp\tr", "1\tp\tr"], ["0\tfact ."])
    with pytest.raises(ValueError, match=r"valid\.sent_fact\.txt: idx 1 is missing"):
        gk.main(["--input", str(data), "--splits", "valid", "--output", str(tmp_path / "bad")])
    assert not (tmp_path / "bad" / "src").exists()
    with pytest.raises(ValueError, match=r"train\.pro_qa\.txt: no such file"):
        gk.main(["--input", str(data), "--splits", "train", "--output", str(tmp_path / "bad")])
    _write(data, "empty", ["0\tp\tr"], ["0\tno_fact"])
    with pytest.raises(ValueError, match="no example with knowledge"):
        gk.main(["--input", str(data), "--splits", "empty", "--output", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="--max-sentences must be >= 0"):
        gk.main(["--input", str(data), "--splits", "test", "--output", str(out), "--max-sentences", "-1"])
