"""examples/{dailydialog,cmu_dog}/converged_study.sh (body: examples/common/converged_study.sh):
the stages' commands (DRY_RUN), ND's gamma from the finished baseline's log, the refusal to guess
gamma before the baseline has finished, and finished parts not redone."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.test_training_curve import train, valid

SCRIPT = REPO_ROOT / "examples" / "dailydialog" / "converged_study.sh"


def study(tmp_path: Path, script: Path = SCRIPT, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in (
        "STAGES", "CONFIG", "SEED", "ND_GAMMA", "PATIENCE", "MAX_EPOCH", "LR", "THREADS", "DRY_RUN", "SYSTEMS",
        "KID_DECODE", "KNOWLEDGE", "RECIPES")}
    return subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env=dict(clean, WORK=str(tmp_path), KI_HOME=str(tmp_path / "ki_home"), **env))


def commands(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


def test_dry_run_prints_every_stage_in_order_with_one_seed_and_configuration(tmp_path: Path) -> None:
    cmds = commands(study(tmp_path, DRY_RUN="1", SEED="2"))
    ck = tmp_path / "checkpoints"
    assert cmds[0] == (f"env SEED=2 SAVE_DIR={ck}/transformer_compact_seed2 bash "
                       f"{REPO_ROOT}/examples/dailydialog/train_transformer.sh --best-checkpoint-metric nll_loss")
    assert cmds[1].endswith("dailydialog/generate.sh") and cmds[2].endswith("dailydialog/evaluate.sh")
    teacher = cmds[3]  # one teacher (TEACHER_SEED 1) for every student seed
    assert "STAGES=entropy binarise teacher" in teacher and "SEED=1 " in teacher and "TIE_BREAK=shorter" in teacher
    assert f"TEACHER_DIR={ck}/nd_teacher_compact_seed1" in teacher and "TEACHER_EPOCH=60" in teacher
    assert "STAGES=kb retriever index mine binarise" in cmds[4]
    assert f"SAVE_DIR={ck}/ki_compact_seed2" in cmds[5] and "STAGES=train generate evaluate" in cmds[5]
    assert "STAGES=student generate evaluate" in cmds[6] and f"STUDENT_DIR={ck}/nd_student_compact_seed2" in cmds[6]
    assert f"SAVE_DIR={ck}/ki_nd_compact_seed2" in cmds[7] and cmds[7].endswith("train_ki_nd.sh")
    assert "analysis.method_comparison" in cmds[8] and "converged_compact_seed2.md" in cmds[8]
    assert len(cmds) == 9


def test_nd_gamma_is_half_the_baseline_updates_at_its_best_epoch(tmp_path: Path) -> None:
    base = tmp_path / "checkpoints" / "transformer_compact_seed1"
    base.mkdir(parents=True)
    # best validation NLL at epoch 2 (812 updates), then two worse epochs and early stopping
    (base / "train.log").write_text(valid(1, 8.0, 7.0, 406) + train(1, 10, 10) + valid(2, 7.0, 6.0, 812)
                                    + valid(3, 7.1, 6.1, 1218) + valid(4, 7.2, 6.2, 1624)
                                    + "x | done training in 99.0 seconds\n")
    proc = study(tmp_path, DRY_RUN="1", STAGES="nd ki_nd")
    cmds = commands(proc)
    assert "ND_GAMMA=406" in proc.stdout and all("ND_GAMMA=406 " in c for c in cmds)
    # without a finished baseline (and not a dry run) gamma is refused, not guessed
    (base / "train.log").write_text(valid(1, 8.0, 7.0, 406))
    (tmp_path / "data-bin").mkdir()
    (tmp_path / "data-bin" / "dict.src.txt").write_text("a 1\n")
    proc = study(tmp_path, STAGES="nd")
    assert proc.returncode != 0 and "the baseline has not finished training" in proc.stderr


def test_finished_parts_are_not_redone(tmp_path: Path) -> None:
    """A finished run is decoded but not trained again; the KI inputs resume at the first
    missing output; the teacher stage skips entropy and binarise when D_N is binarised."""
    ck = tmp_path / "checkpoints"
    for d in ("transformer_compact_seed1", "ki_compact_seed1", "nd_teacher_compact_seed1"):
        (ck / d).mkdir(parents=True)
        (ck / d / "train.log").write_text(valid(1, 8.0, 7.0, 10) + "x | done training in 9.0 seconds\n")
    for f in ("ki_home/kb/items.tsv", "ki_home/retriever/config.json", "entropy/negative/data-bin/dict.src.txt"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    cmds = commands(study(tmp_path, DRY_RUN="1", STAGES="baseline teacher ki_inputs ki"))
    assert not any("train_transformer.sh" in c for c in cmds)  # baseline: decode and score only
    assert cmds[0].endswith("generate.sh") and cmds[1].endswith("evaluate.sh")
    assert not any("train_nd.sh" in c for c in cmds)  # D_N binarised and the teacher finished
    assert "STAGES=index mine binarise" in cmds[2]
    assert "STAGES=generate evaluate" in cmds[3] and cmds[3].endswith("train_ki.sh")
    assert len(cmds) == 4


def test_cmu_dog_study_decodes_with_kid_and_scores_knowledge(tmp_path: Path) -> None:
    """CMU_DoG: baseline and +KI+ND by default, each also decoded by generate_kid.sh (retrieval and
    tries built once), knowledge F1 in the report, KID outputs included by pattern."""
    cmds = commands(study(tmp_path, REPO_ROOT / "examples" / "cmu_dog" / "converged_study.sh", DRY_RUN="1"))
    recipes = REPO_ROOT / "examples" / "cmu_dog"
    assert cmds[0].endswith(f"{recipes}/train_transformer.sh --best-checkpoint-metric nll_loss")
    assert "STAGES=entropy binarise teacher" in cmds[3] and cmds[3].endswith("examples/dailydialog/train_nd.sh")
    assert cmds[4].endswith(f"{recipes}/train_ki.sh") and cmds[5].endswith(f"{recipes}/train_ki_nd.sh")
    kid = [c for c in cmds if c.endswith("generate_kid.sh")]
    assert len(kid) == 2 and "STAGES=retrieve trie decode evaluate" in kid[0] and "STAGES=decode evaluate" in kid[1]
    assert "transformer_compact_seed1/checkpoint_best.pt" in kid[0] and "ki_nd_compact_seed1/checkpoint_best.pt" in kid[1]
    report = cmds[-1]
    assert f"--knowledge {tmp_path}/tok/test.knowledge" in report and "--decoders greedy beam5 gen_kid/*" in report
    assert "--system +KI+ND=" in report and "--system +KI=" not in report and "--system +ND=" not in report
    assert len(cmds) == 9
    bad = study(tmp_path, DRY_RUN="1", SYSTEMS="baseline kd")
    assert bad.returncode != 0 and "unknown system 'kd' in SYSTEMS" in bad.stderr
