"""The knowledge-internalization shell recipes as a user runs them, on slices of the real data
with a tiny random BERT as the retriever's encoder and the tiny Transformer:
DailyDialog (knowledge base -> retriever -> index -> mining -> binarise -> KI training ->
decoding -> metrics), then WoW from the authors' release format both with mined alignments
(reusing the DailyDialog knowledge base, retriever and index, which a module fixture builds
whichever test runs first) and with the release's own ids."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from informative_dialogue.ki.alignment_text import read_alignments
from tests.conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"


def run_recipe(script: str, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(["bash", str(EXAMPLES / script), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def metrics_of(checkpoint_dir: Path, decoder: str) -> dict:
    return json.loads((checkpoint_dir / "gen" / f"test.{decoder}.metrics.json").read_text())


@pytest.fixture(scope="module")
def ki_env(shared_data: Path, tiny_bert: str, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ki_recipes")
    return dict(
        os.environ, SHARED_DATA=str(shared_data), KI_HOME=str(root / "ki"), BERT=tiny_bert,
        # a 60-item knowledge base (Wikipedia and CMU_DoG) keeps the run to seconds
        KB_ARGS="--max-items-per-source 30", WORDNET_DIR="", WOW_MINI="",
        RETRIEVER_ARGS="--max-steps 2 --batch-size 4 --valid-size 4 --projection-dim 8 --no-progress",
        INDEX_ARGS="--gpu no --device cpu --no-progress", MINE_ARGS="--gpu no --device cpu --no-progress",
        NUM_SHARDS="2", MINE_JOBS="2", CONFIG="tiny", MAX_EPOCH="1", BATCH_SIZE="32", MAX_LEN_B="8",
        HF_HUB_OFFLINE="1", ROOT_TMP=str(root),
    )


@pytest.fixture(scope="module")
def dailydialog_ki(ki_env: dict[str, str]) -> Path:
    """The DailyDialog KI recipe run once per module (prepare, then train_ki.sh: knowledge base,
    retriever, index, mining, binarising, training, decoding, metrics); returns its WORK. The
    knowledge base, retriever and index it builds under KI_HOME are reused by the WoW test,
    which asks for this fixture: no test depends on another having run first."""
    work = Path(ki_env["ROOT_TMP"]) / "dd"
    env = dict(ki_env, WORK=str(work), MAX_DIALOGUES="20")
    run_recipe("dailydialog/prepare.sh", env)
    run_recipe("dailydialog/train_ki.sh", env, "--max-update", "3")
    return work


def test_dailydialog_train_ki_end_to_end(ki_env: dict[str, str], dailydialog_ki: Path) -> None:
    work = dailydialog_ki
    # mined alignments: one id per source token, within the knowledge base, some knowledge found
    kb_size = int(json.loads((Path(ki_env["KI_HOME"]) / "kb" / "stats.json").read_text())["items"])
    table = np.load(Path(ki_env["KI_HOME"]) / "index" / "knowledge_table.npy")
    assert table.shape[0] == kb_size + 1
    for split in ("train", "valid", "test"):
        rows = read_alignments(work / "ki" / "align" / f"{split}.align", work / "tok" / f"{split}.src")
        assert all(((r >= 0) & (r <= kb_size)).all() for r in rows)
        assert (work / "ki" / "data-bin" / f"{split}.align.ids.npy").is_file()
    train_rows = read_alignments(work / "ki" / "align" / "train.align", work / "tok" / "train.src")
    assert sum(int((r > 0).sum()) for r in train_rows) > 0
    ckpt_dir = work / "checkpoints" / "ki_tiny"
    log = (ckpt_dir / "train.log").read_text()
    assert "ki_loss" in log and "| done training" in log
    n_test = len((work / "tok" / "test.tgt").read_text().splitlines())
    for decoder in ("greedy", "beam5"):
        assert metrics_of(ckpt_dir, decoder)["n_examples"] == n_test


def make_small_release(source: Path, dest: Path, lines: int, num_items: int) -> None:
    """The first ``lines`` lines of each split of the WoW KI release, voken ids folded into
    1..num_items (0 stays 0) so that a small knowledge table covers them."""
    dest.mkdir()
    for split in ("valid", "test.seen", "test.unseen"):
        for ext in ("src", "tgt"):
            text = (source / f"{split}.{ext}").read_text(encoding="utf-8").splitlines()[:lines]
            (dest / f"{split}.{ext}").write_text("\n".join(text) + "\n", encoding="utf-8")
        vokens = (source / f"{split}.voken.src").read_text(encoding="utf-8").splitlines()[:lines]
        folded = [" ".join(str(0 if int(v) == 0 else 1 + int(v) % num_items) for v in line.split()) for line in vokens]
        (dest / f"{split}.voken.src").write_text("\n".join(folded) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def wow_prepared(ki_env: dict[str, str], shared_data: Path) -> dict[str, str]:
    """wow/prepare.sh on a 40-line slice of the release (train = its valid split); returns the
    environment of the WoW runs."""
    root = Path(ki_env["ROOT_TMP"])
    make_small_release(shared_data / "wow_ki", root / "wow_release", lines=40, num_items=50)
    work = root / "wow"
    env = dict(ki_env, WORK=str(work), WOW_KI=str(root / "wow_release"),
               TRAIN_SPLIT="valid", VALID_SPLIT="test_seen", TEST_SPLIT="test_unseen")
    run_recipe("wow/prepare.sh", env)
    assert (work / "data-bin" / "dict.src.txt").is_file()
    return env


def test_wow_recipe_with_the_release_alignments(wow_prepared: dict[str, str]) -> None:
    env = wow_prepared
    root, work = Path(env["ROOT_TMP"]), Path(env["WORK"])
    # the release's own ids with a user-supplied table (51 rows: ids 1..50, row 0 zeros)
    table = np.random.default_rng(0).standard_normal((51, 16)).astype(np.float32)
    table[0] = 0
    np.save(root / "release_table.npy", table)
    release_env = dict(env, KNOWLEDGE_TABLE=str(root / "release_table.npy"), SAVE_DIR=str(work / "checkpoints" / "ki_release"))
    run_recipe("wow/train_ki.sh", release_env, "--max-update", "2")
    assert "ki_loss" in (work / "checkpoints" / "ki_release" / "train.log").read_text()
    ids = np.load(work / "ki" / "data-bin" / "train.align.ids.npy")
    assert ids.max() <= 50 and (ids > 0).any()


@pytest.mark.slow  # mining, binarising and training are the DailyDialog test's path; here on WoW
def test_wow_recipe_with_mined_alignments(wow_prepared: dict[str, str], dailydialog_ki: Path) -> None:
    env, work = wow_prepared, Path(wow_prepared["WORK"])
    # mined alignments over the knowledge base, retriever and index of the DailyDialog run (fixture)
    assert (Path(env["KI_HOME"]) / "index" / "knowledge_table.npy").is_file()
    mined_env = dict(env, STAGES="mine binarise train generate evaluate", KI_BIN=str(work / "ki" / "data-bin-mined"),
                     SAVE_DIR=str(work / "checkpoints" / "ki_mined"))
    run_recipe("wow/train_ki.sh", mined_env, "--max-update", "2")
    rows = read_alignments(work / "ki" / "align" / "train.align", work / "tok" / "train.src")
    assert len(rows) == 40
    assert metrics_of(work / "checkpoints" / "ki_mined", "greedy")["n_examples"] == 40


def test_wow_release_mode_needs_a_table(ki_env: dict[str, str]) -> None:
    env = dict(ki_env, WORK=str(Path(ki_env["ROOT_TMP"]) / "nowhere"), ALIGNMENTS="release", KNOWLEDGE_TABLE="")
    proc = subprocess.run(["bash", str(EXAMPLES / "wow" / "train_ki.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "KNOWLEDGE_TABLE" in proc.stderr
