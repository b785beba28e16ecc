"""The KI + ND recipe (examples/dailydialog/train_ki_nd.sh, and its CMU_DoG wrapper) as a user runs
it, on a slice of the real DailyDialog data with the tiny configuration. The KI half starts from
given alignments and a given knowledge table (KI_STAGES="binarise": the knowledge base, retriever,
index and mining have their own recipe test, tests/test_ki_recipes.py); the ND half runs
train_nd.sh's own stages (source entropy -> D_N -> teacher); then the composed student, greedy and
beam-5 decoding and the metrics."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
TABLE_ROWS = 31  # ids 1..30, row 0 = no knowledge


def run_recipe(script: str, env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(EXAMPLES / script), *args], capture_output=True, text=True, env=env)
    if ok:
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def write_alignments(tok: Path, align_dir: Path) -> None:
    """``{split}.align``: one id per source token, 1..30 on every other token (0 elsewhere), so
    every batch has labelled tokens with different ids (KI's negatives)."""
    align_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        lines = []
        for src in (tok / f"{split}.src").read_text(encoding="utf-8").splitlines():
            n = len(src.split())
            ids = rng.integers(1, TABLE_ROWS, size=n) * (np.arange(n) % 2 == 0)
            lines.append(" ".join(map(str, ids)))
        (align_dir / f"{split}.align").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def env(shared_data: Path, tmp_path_factory) -> dict[str, str]:
    """prepare.sh on 20 dialogues, plus hand-made alignments and a random knowledge table."""
    root = tmp_path_factory.mktemp("ki_nd_recipe")
    work = root / "dd"
    env = dict(os.environ, WORK=str(work), SHARED_DATA=str(shared_data), MAX_DIALOGUES="20", CONFIG="tiny",
               MAX_EPOCH="1", TEACHER_EPOCH="1", BATCH_SIZE="32", MAX_LEN_B="8", OMP_NUM_THREADS="1",
               DECODERS="greedy",
               HF_HUB_OFFLINE="1", KI_HOME=str(root / "ki"))
    run_recipe("dailydialog/prepare.sh", env)
    write_alignments(work / "tok", work / "ki" / "align")
    table = np.random.default_rng(1).standard_normal((TABLE_ROWS, 8)).astype(np.float32)
    table[0] = 0
    (root / "ki" / "index").mkdir(parents=True)
    np.save(root / "ki" / "index" / "knowledge_table.npy", table)
    return env


@pytest.mark.slow  # ~100 s: every stage of the recipe; the criterion's own fairseq-train -> fairseq-generate
# run (tests/test_ki_nd_criterion.py) and the recipes' missing-input checks below stay in the default suite
def test_train_ki_nd_every_stage(env: dict[str, str]) -> None:
    work = Path(env["WORK"])
    run_recipe("dailydialog/train_ki_nd.sh", dict(env, KI_STAGES="binarise", KI_LAMBDA="0.7", KI_MARGIN="0.3",
                                                   ND_GAMMA="2", KI_ARGS="--ki-projection-dim 8"),
               "--max-update", "3")
    ckpts = work / "checkpoints"
    teacher = ckpts / "nd_teacher_tiny" / "checkpoint_best.pt"
    assert teacher.is_file() and (work / "entropy" / "negative" / "data-bin" / "dict.src.txt").is_file()
    for split in ("train", "valid", "test"):
        assert (work / "ki" / "data-bin" / f"{split}.align.ids.npy").is_file()

    model_dir = ckpts / "ki_nd_tiny"
    state = torch.load(model_dir / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    # the recipe's variables reached the composed criterion
    crit = state["cfg"]["criterion"]
    assert crit["_name"] == "ki_negative_distillation"
    assert (crit["ki_lambda"], crit["ki_margin"], crit["ki_encoder_dim"], crit["ki_projection_dim"]) == (0.7, 0.3, 64, 8)
    assert (crit["nd_gamma"], crit["label_smoothing"]) == (2, 0.1)
    assert crit["teacher_path"] == str(teacher)
    assert crit["ki_knowledge_table"] == str(Path(env["KI_HOME"]) / "index" / "knowledge_table.npy")
    assert state["cfg"]["task"]["knowledge_alignments"] and state["cfg"]["task"]["data"] == str(work / "ki" / "data-bin")
    assert state["cfg"]["checkpoint"]["best_checkpoint_metric"] == "nll_loss"
    # a plain model: no teacher weights; the criterion state is KI's heads only
    assert state["model"] and not any("teacher" in k for k in state["model"])
    assert set(state["criterion"]) == {"ki.f1.weight", "ki.f1.bias", "ki.f2.weight", "ki.f2.bias"}
    # both halves were active (KI's term on labelled tokens, every ND term) and logged
    log = (model_dir / "train.log").read_text()
    for key in ("ki_loss", "ki_coverage", "nd_pred", "nd_hid", "nd_att", "nd_alpha"):
        assert re.search(rf"\b{key}[ =]-?[0-9]", log), key
    coverage = [float(x) for x in re.findall(r"\bki_coverage[ =]([0-9.]+)", log)]
    assert coverage and min(coverage) > 0.3  # every other source token labelled (EOS and padding not)
    n_test = len((work / "tok" / "test.tgt").read_text().splitlines())
    for decoder in ("greedy",):  # beam 5 is the same generate.sh call (tests/test_nd_recipes.py runs both)
        metrics = json.loads((model_dir / "gen" / f"test.{decoder}.metrics.json").read_text())
        assert metrics["n_examples"] == n_test and "dist2" in metrics


@pytest.mark.parametrize("recipe, workdir", [("dailydialog/train_ki_nd.sh", "dd"), ("cmu_dog/train_ki_nd.sh", "cmu")])
def test_train_stage_names_what_is_missing(env: dict[str, str], tmp_path: Path, recipe: str, workdir: str) -> None:
    """Stage train without the KI inputs or the teacher: an error naming the file and the stage
    that makes it, before fairseq starts (the CMU_DoG wrapper passes its WORK through)."""
    work = tmp_path / workdir
    bin_dir = work / "data-bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "dict.src.txt").write_text("a 1\n")
    base = dict(env, WORK=str(work), STAGES="train", KI_HOME=str(tmp_path / "ki"))
    base.pop("KI_BIN", None)
    proc = run_recipe(recipe, base, ok=False)
    assert proc.returncode == 1 and "the KI knowledge table not found" in proc.stderr
    assert str(tmp_path / "ki" / "index" / "knowledge_table.npy") in proc.stderr and "run stage ki" in proc.stderr

    table = tmp_path / "table.npy"
    np.save(table, np.zeros((2, 4), dtype=np.float32))
    proc = run_recipe(recipe, dict(base, KNOWLEDGE_TABLE=str(table)), ok=False)
    assert f"the train alignments not found: {work}/ki/data-bin/train.align.ids.npy" in proc.stderr

    ki_bin = tmp_path / "ki_bin"
    ki_bin.mkdir()
    for split in ("train", "valid"):
        (ki_bin / f"{split}.align.ids.npy").write_bytes(b"")
    proc = run_recipe(recipe, dict(base, KNOWLEDGE_TABLE=str(table), KI_BIN=str(ki_bin)), ok=False)
    assert proc.returncode == 1
    assert f"the ND teacher not found: {work}/checkpoints/nd_teacher_tiny/checkpoint_best.pt" in proc.stderr
    assert "run stage nd" in proc.stderr


def test_without_prepared_data_is_an_error(tmp_path: Path) -> None:
    proc = run_recipe("dailydialog/train_ki_nd.sh", dict(os.environ, WORK=str(tmp_path / "none")), ok=False)
    assert proc.returncode == 1 and "run prepare.sh first" in proc.stderr


@pytest.mark.parametrize("recipe, tie_break", [("dailydialog/train_ki_nd.sh", "index"), ("cmu_dog/train_ki_nd.sh", "shorter")])
def test_d_n_ties_at_the_cut(env: dict[str, str], tmp_path: Path, recipe: str, tie_break: str) -> None:
    """Which pairs tied at D_N's cut go to the teacher: file order on DailyDialog (train_nd.sh's
    default), shorter responses first on CMU_DoG, where 93.4 % of training pairs have source
    entropy 0 (file order would fill most of D_N with arbitrary pairs)."""
    entropy = tmp_path / "entropy"
    run_recipe(recipe, dict(env, STAGES="nd", ND_STAGES="entropy", ENTROPY_DIR=str(entropy)))
    assert json.loads((entropy / "stats.json").read_text())["tie_break"] == tie_break
