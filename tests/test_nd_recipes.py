"""The negative-distillation recipes as a user runs them, on a slice of the real DailyDialog data
with the tiny configuration: train_nd.sh (source entropy -> D_N and the bottom half -> the
teacher -> ND student -> greedy/beam decoding -> metrics) and train_ul.sh (UL refined on the
Standard model). Under ``-m slow``: the bottom half's teacher (stage bottom) and NT."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT

RECIPES = REPO_ROOT / "examples" / "dailydialog"


def run_recipe(name: str, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(["bash", str(RECIPES / name), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def n_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


@pytest.fixture(scope="module")
def standard(shared_data: Path, tmp_path_factory) -> dict[str, str]:
    """prepare.sh + the Standard (baseline) model, 3 updates."""
    work = tmp_path_factory.mktemp("nd_recipes") / "dd"
    env = dict(os.environ, WORK=str(work), SHARED_DATA=str(shared_data), MAX_DIALOGUES="25", CONFIG="tiny",
               MAX_EPOCH="1", DECODERS="greedy beam5", BATCH_SIZE="32", MAX_LEN_B="8", OMP_NUM_THREADS="1")
    run_recipe("prepare.sh", env)
    run_recipe("train_transformer.sh", env, "--max-update", "3")
    return env


def check_decoded(model_dir: Path, n_test: int) -> None:
    for decoder in ("greedy", "beam5"):
        metrics = json.loads((model_dir / "gen" / f"test.{decoder}.metrics.json").read_text())
        assert metrics["n_examples"] == n_test
        for key in ("dist2", "dist3", "lf", "kl2", "bleu4"):
            assert key in metrics, (model_dir.name, decoder, key)


def test_train_nd_every_stage(standard: dict[str, str]) -> None:
    work = Path(standard["WORK"])
    env = dict(standard, TEACHER_EPOCH="1", RATIO="0.5", TIE_BREAK="shorter", ND_GAMMA="2",
               STAGES="entropy binarise teacher student generate evaluate")
    log = run_recipe("train_nd.sh", env, "--max-update", "3")
    entropy = work / "entropy"
    n_train = n_lines(work / "tok" / "train.src")
    n_top, n_bottom = n_lines(entropy / "negative" / "train.src"), n_lines(entropy / "bottom" / "train.tgt")
    assert n_top + n_bottom == n_train and n_top == n_train // 2  # floor(RATIO * pairs)
    ckpts = work / "checkpoints"
    n_test = n_lines(work / "tok" / "test.tgt")
    assert (ckpts / "nd_teacher_tiny" / "checkpoint_best.pt").is_file()
    check_decoded(ckpts / "nd_student_tiny", n_test)  # the teachers are decoded with stage bottom
    # the student logged every ND term, alpha and the step, and saved no teacher weights
    train_log = (ckpts / "nd_student_tiny" / "train.log").read_text()
    for key in ("nd_pred", "nd_hid", "nd_att", "nd_alpha", "nd_step"):
        assert re.search(rf"\b{key}[ =]-?[0-9]", train_log), key
    state = torch.load(ckpts / "nd_student_tiny" / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    assert state["model"] and not any("teacher" in k for k in state["model"])
    assert "nd_student_tiny greedy" in log
    assert not (ckpts / "nd_bottom_tiny").exists()  # stage bottom was not asked for


@pytest.mark.slow  # the bottom-half teacher: one more training of the teacher's path
def test_train_nd_bottom_half_teacher(standard: dict[str, str]) -> None:
    work = Path(standard["WORK"])
    env = dict(standard, TEACHER_EPOCH="1", RATIO="0.5", TIE_BREAK="shorter",
               STAGES="entropy binarise teacher bottom generate evaluate")
    run_recipe("train_nd.sh", env, "--max-update", "3")
    for name in ("nd_teacher_tiny", "nd_bottom_tiny"):  # Table 6/7: both halves' teachers decoded
        assert (work / "checkpoints" / name / "checkpoint_best.pt").is_file(), name
        check_decoded(work / "checkpoints" / name, n_lines(work / "tok" / "test.tgt"))


def test_train_nd_decodes_only_what_exists(standard: dict[str, str], tmp_path: Path) -> None:
    """Without stage student and no student checkpoint, generate/evaluate have no model: the recipe
    does nothing instead of failing on a missing checkpoint."""
    env = dict(standard, STUDENT_DIR=str(tmp_path / "no_student"), STAGES="generate evaluate")
    run_recipe("train_nd.sh", env)
    assert not (tmp_path / "no_student").exists()


@pytest.mark.parametrize("method, logged", [
    ("ul", "ul_tokens"),
    # NT differs from UL by the criterion's flags only (its loss: tests/test_unlikelihood.py)
    pytest.param("nt", "nt_negatives", marks=pytest.mark.slow),
])
def test_train_ul_refines_the_standard_model(standard: dict[str, str], method: str, logged: str) -> None:
    work = Path(standard["WORK"])
    run_recipe("train_ul.sh", dict(standard, METHOD=method), "--max-update", "2")
    model_dir = work / "checkpoints" / f"{method}_tiny"
    assert logged in (model_dir / "train.log").read_text()
    check_decoded(model_dir, n_lines(work / "tok" / "test.tgt"))


def test_train_ul_without_the_standard_model_is_an_error(standard: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(RECIPES / "train_ul.sh")], capture_output=True, text=True,
                          env=dict(standard, BASE_CHECKPOINT=str(tmp_path / "missing.pt")))
    assert proc.returncode != 0 and "train the Standard model first" in proc.stderr
