"""examples/wow/prepare_mini.sh with another corpus' dictionaries (DICT_DIR) and the three
splits pooled into one evaluation split (POOLED_SPLIT), for decoding the 300 WoW mini examples
with a model trained elsewhere."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PREPARE = REPO_ROOT / "examples" / "wow" / "prepare_mini.sh"


def prepare(work: Path, shared_data: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PREPARE)], capture_output=True, text=True,
                          env=dict(os.environ, SHARED_DATA=str(shared_data), WORK=str(work), WORKERS="1", **env))


def load_split(data_bin: Path, split: str, side: str) -> list[list[int]]:
    from fairseq.data import data_utils

    dataset = data_utils.load_indexed_dataset(str(data_bin / f"{split}.src-tgt.{side}"), None)
    return [dataset[i].tolist() for i in range(len(dataset))]


def test_foreign_dictionary_and_pooled_split(shared_data: Path, tmp_path: Path) -> None:
    own = prepare(tmp_path / "own", shared_data, MAX_EXAMPLES="8")
    assert own.returncode == 0, own.stderr[-2000:]
    own_bin = tmp_path / "own" / "data-bin"
    work = tmp_path / "pooled"
    proc = prepare(work, shared_data, MAX_EXAMPLES="5", DICT_DIR=str(own_bin), POOLED_SPLIT="all")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for side in ("src", "tgt"):  # the model's dictionaries, unchanged
        assert (work / "data-bin" / f"dict.{side}.txt").read_text() == (own_bin / f"dict.{side}.txt").read_text()
    for ext in ("src", "tgt", "knowledge"):
        parts = [(work / "tok" / f"{split}.{ext}").read_text().splitlines() for split in ("train", "valid", "test")]
        assert (work / "tok" / f"all.{ext}").read_text().splitlines() == parts[0] + parts[1] + parts[2]
    for side in ("src", "tgt"):
        pooled = load_split(work / "data-bin", "all", side)
        assert len(pooled) == 15
        assert pooled == sum((load_split(work / "data-bin", s, side) for s in ("train", "valid", "test")), [])
    assert not list((work / "data-bin").glob("test1.*"))


@pytest.mark.parametrize("env, message", [
    (dict(POOLED_SPLIT="test"), "POOLED_SPLIT must not be one of"),
    (dict(DICT_DIR="/nonexistent/data-bin"), "DICT_DIR has no dict.src.txt"),
])
def test_bad_options_are_errors(shared_data: Path, tmp_path: Path, env: dict, message: str) -> None:
    proc = prepare(tmp_path / "w", shared_data, MAX_EXAMPLES="3", **env)
    assert proc.returncode != 0 and message in proc.stderr
