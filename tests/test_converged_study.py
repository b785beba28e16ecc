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
        "KID_DECODE", "KNOWLEDGE", "RECIPES", "SUBSET")}
    return subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env=dict(clean, WORK=str(tmp_path), KI_HOME=str(tmp_path / "ki_home"), **env))


def prepared(work: Path) -> None:
    """What the study checks before it runs anything: prepare.sh's dictionary and test references."""
    for f in ("data-bin/dict.src.txt", "tok/test.tgt"):
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_text("a 1\n")


def commands(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


def test_dry_run_prints_every_stage_in_order_with_one_seed_and_configuration(tmp_path: Path) -> None:
    cmds = commands(study(tmp_path, DRY_RUN="1", SEED="2"))
    ck = tmp_path / "checkpoints"
    assert cmds[0] == (f"env MAX_EPOCH=60 SEED=2 SAVE_DIR={ck}/transformer_compact_seed2 bash "
                       f"{REPO_ROOT}/examples/dailydialog/train_transformer.sh --best-checkpoint-metric nll_loss")
    assert cmds[1].endswith("dailydialog/generate.sh") and cmds[2].endswith("dailydialog/evaluate.sh")
    assert "STAGES=entropy binarise " in cmds[3] and "TIE_BREAK=shorter" in cmds[3]
    teacher = cmds[4]  # one teacher (TEACHER_SEED 1) for every student seed
    assert teacher.startswith("env TEACHER_EPOCH=60 STAGES=teacher ") and "SEED=1 " in teacher
    assert f"TEACHER_DIR={ck}/nd_teacher_compact_seed1" in teacher and "TIE_BREAK=shorter" in teacher
    assert "STAGES=kb retriever index mine binarise" in cmds[5]
    assert cmds[6].startswith("env MAX_EPOCH=60 STAGES=train ") and f"SAVE_DIR={ck}/ki_compact_seed2" in cmds[6]
    assert "STAGES=generate evaluate" in cmds[7] and cmds[7].endswith("train_ki.sh")
    assert cmds[8].startswith("env MAX_EPOCH=60 STAGES=student ")
    assert f"STUDENT_DIR={ck}/nd_student_compact_seed2" in cmds[8]
    assert "STAGES=generate evaluate" in cmds[9] and f"STUDENT_DIR={ck}/nd_student_compact_seed2" in cmds[9]
    assert cmds[10].startswith("env MAX_EPOCH=60 STAGES=train ") and f"SAVE_DIR={ck}/ki_nd_compact_seed2" in cmds[10]
    assert cmds[10].endswith("train_ki_nd.sh") and "STAGES=generate evaluate" in cmds[11]
    assert "analysis.method_comparison" in cmds[12] and "converged_compact_seed2.md" in cmds[12]
    assert len(cmds) == 13


def test_nd_gamma_is_half_the_baseline_updates_at_its_best_epoch(tmp_path: Path) -> None:
    base = tmp_path / "checkpoints" / "transformer_compact_seed1"
    base.mkdir(parents=True)
    # best validation NLL at epoch 2 (812 updates), then PATIENCE (3) worse epochs
    (base / "train.log").write_text(valid(1, 8.0, 7.0, 406) + train(1, 10, 10) + valid(2, 7.0, 6.0, 812)
                                    + valid(3, 7.1, 6.1, 1218) + valid(4, 7.2, 6.2, 1624)
                                    + valid(5, 7.2, 6.2, 2030) + "x | done training in 99.0 seconds\n")
    proc = study(tmp_path, DRY_RUN="1", STAGES="nd ki_nd")
    cmds = commands(proc)
    trainings = [c for c in cmds if "STAGES=student " in c or "STAGES=train " in c]
    assert "ND_GAMMA=406" in proc.stdout and len(trainings) == 2 and all("ND_GAMMA=406 " in c for c in trainings)
    # without a finished baseline (and not a dry run) gamma is refused, not guessed, even when
    # fairseq said "done training" (a run stopped by another patience or max-epoch cap)
    (base / "train.log").write_text(valid(1, 8.0, 7.0, 406) + "x | done training in 9.0 seconds\n")
    prepared(tmp_path)
    proc = study(tmp_path, STAGES="nd")
    assert proc.returncode != 0 and "the baseline has not finished training" in proc.stderr


def test_finished_parts_are_not_redone(tmp_path: Path) -> None:
    """A run that reached its stopping point (best epoch + PATIENCE) is decoded but not trained
    again; the KI inputs resume at the first missing output; the teacher stage skips entropy and
    binarise when D_N is binarised."""
    ck = tmp_path / "checkpoints"
    for d in ("transformer_compact_seed1", "ki_compact_seed1", "nd_teacher_compact_seed1"):
        (ck / d).mkdir(parents=True)
        (ck / d / "train.log").write_text(valid(1, 8.0, 7.0, 10) + valid(2, 8.1, 7.1, 20))  # no "done training"
    for f in ("ki_home/kb/items.tsv", "ki_home/retriever/config.json", "entropy/negative/data-bin/dict.src.txt"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    cmds = commands(study(tmp_path, DRY_RUN="1", STAGES="baseline teacher ki_inputs ki", PATIENCE="1"))
    assert not any("train_transformer.sh" in c for c in cmds)  # baseline: decode and score only
    assert cmds[0].endswith("generate.sh") and cmds[1].endswith("evaluate.sh")
    assert not any("train_nd.sh" in c for c in cmds)  # D_N binarised and the teacher finished
    assert "STAGES=index mine binarise" in cmds[2]
    assert "STAGES=generate evaluate" in cmds[3] and cmds[3].endswith("train_ki.sh")
    assert len(cmds) == 4
    # with PATIENCE 2 each run (best epoch 1, last 2) resumes to epoch 3; the teacher by its loss
    cmds = commands(study(tmp_path, DRY_RUN="1", STAGES="baseline teacher ki", PATIENCE="2"))
    assert cmds[0].startswith("env MAX_EPOCH=3 SEED=1 ") and cmds[0].endswith("--best-checkpoint-metric nll_loss")
    assert cmds[3].startswith("env TEACHER_EPOCH=3 STAGES=teacher ")
    assert cmds[4].startswith("env MAX_EPOCH=3 STAGES=train ") and cmds[4].endswith("train_ki.sh")
    assert len(cmds) == 6


def test_cmu_dog_study_decodes_with_kid_and_scores_knowledge(tmp_path: Path) -> None:
    """CMU_DoG: baseline and +KI+ND by default, each also decoded by generate_kid.sh (retrieval and
    tries built once), knowledge F1 in the report, KID outputs included by pattern."""
    cmds = commands(study(tmp_path, REPO_ROOT / "examples" / "cmu_dog" / "converged_study.sh", DRY_RUN="1"))
    recipes = REPO_ROOT / "examples" / "cmu_dog"
    assert cmds[0].endswith(f"{recipes}/train_transformer.sh --best-checkpoint-metric nll_loss")
    assert "STAGES=entropy binarise " in cmds[3] and cmds[3].endswith("examples/dailydialog/train_nd.sh")
    assert "STAGES=teacher " in cmds[4] and cmds[4].endswith("examples/dailydialog/train_nd.sh")
    assert "STAGES=kb retriever index mine binarise " in cmds[5] and cmds[5].endswith(f"{recipes}/train_ki.sh")
    assert "STAGES=train " in cmds[6] and cmds[6].endswith(f"{recipes}/train_ki_nd.sh")
    kid = [c for c in cmds if c.endswith("generate_kid.sh")]
    assert len(kid) == 2 and "STAGES=retrieve trie decode evaluate" in kid[0] and "STAGES=decode evaluate" in kid[1]
    assert "transformer_compact_seed1/checkpoint_best.pt" in kid[0] and "ki_nd_compact_seed1/checkpoint_best.pt" in kid[1]
    report = cmds[-1]
    assert f"--knowledge {tmp_path}/tok/test.knowledge" in report and "--decoders greedy beam5 gen_kid/*" in report
    assert "--system +KI+ND=" in report and "--system +KI=" not in report and "--system +ND=" not in report
    assert len(cmds) == 11
    bad = study(tmp_path, DRY_RUN="1", SYSTEMS="baseline kd")
    assert bad.returncode != 0 and "unknown system 'kd' in SYSTEMS" in bad.stderr


def test_subset_is_the_split_of_every_decode_and_of_the_report(tmp_path: Path) -> None:
    """SUBSET=test_every6 (examples/common/subset.sh): generate.sh, evaluate.sh and generate_kid.sh
    read SUBSET from the environment; the report reads that split's references and knowledge."""
    cmu = REPO_ROOT / "examples" / "cmu_dog" / "converged_study.sh"
    report = commands(study(tmp_path, cmu, DRY_RUN="1", SUBSET="test_every6", STAGES="report"))[-1]
    assert f"--ref {tmp_path}/tok/test_every6.tgt --subset test_every6 " in report
    assert f"--knowledge {tmp_path}/tok/test_every6.knowledge " in report
    prepared(tmp_path)
    proc = study(tmp_path, cmu, SUBSET="test_every6", STAGES="report")  # not made yet: refused up front
    assert proc.returncode != 0 and "SUBSET=test_every6: " in proc.stderr and "examples/common/subset.sh" in proc.stderr
    assert "analysis.method_comparison" not in proc.stdout


def fake_recipes(tmp_path: Path, curve: str) -> Path:
    """A RECIPES folder whose train_transformer.sh stands for fairseq at its worst after a resume
    (a patience count that never stops it): it appends CURVE's validation lines for the epochs
    after the log's last, up to MAX_EPOCH, and notes each MAX_EPOCH it was given in WORK/calls;
    generate.sh and evaluate.sh note their calls."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (tmp_path / "curve.log").write_text(curve)
    (recipes / "train_transformer.sh").write_text(
        'echo "train MAX_EPOCH=$MAX_EPOCH" >> "$WORK/calls"\n'
        'mkdir -p "$SAVE_DIR"; log="$SAVE_DIR/train.log"\n'
        'last=0; [ -f "$log" ] && last="$(grep -c "valid on" "$log")"\n'
        '[ "$last" -lt "$MAX_EPOCH" ] && sed -n "$((last + 1)),${MAX_EPOCH}p" "$WORK/curve.log" >> "$log"\n'
        'exit 0\n')
    for script in ("generate", "evaluate"):
        (recipes / f"{script}.sh").write_text(f'echo {script} >> "$WORK/calls"\n')
    prepared(tmp_path)
    return recipes


def test_an_interrupted_run_resumes_to_where_one_uninterrupted_run_stops(tmp_path: Path) -> None:
    """Interrupted after epoch 2 (best epoch 2) with PATIENCE 2: resumed to epoch 4, where epoch 4
    is a new best, so again to epoch 6, where it has had 2 epochs without a new best. One
    uninterrupted run with --patience 2 stops after epoch 6 too; fairseq alone, its count
    restarting at each resume, could go on to MAX_EPOCH."""
    nll = [5.0, 4.0, 4.5, 3.9, 4.2, 4.3, 3.0, 2.0, 1.0, 0.5]
    curve = "".join(valid(e, v + 1, v, 100 * e) for e, v in enumerate(nll, start=1))
    recipes = fake_recipes(tmp_path, curve)
    base = tmp_path / "checkpoints" / "transformer_compact_seed1"
    base.mkdir(parents=True)
    (base / "train.log").write_text("".join(curve.splitlines(keepends=True)[:2]))
    script = REPO_ROOT / "examples" / "common" / "converged_study.sh"
    proc = study(tmp_path, script, STAGES="baseline", PATIENCE="2", MAX_EPOCH="10", RECIPES=str(recipes))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "calls").read_text().split("\n")[:-1] == [
        "train MAX_EPOCH=4", "train MAX_EPOCH=6", "generate", "evaluate"]
    assert (base / "train.log").read_text().count("valid on") == 6
    # run again: finished, so decoded and scored only
    (tmp_path / "calls").unlink()
    assert study(tmp_path, script, STAGES="baseline", PATIENCE="2", MAX_EPOCH="10", RECIPES=str(recipes)).returncode == 0
    assert (tmp_path / "calls").read_text() == "generate\nevaluate\n"


def test_a_run_that_does_not_advance_is_an_error_not_a_loop(tmp_path: Path) -> None:
    recipes = fake_recipes(tmp_path, "")  # a trainer that validates nothing
    script = REPO_ROOT / "examples" / "common" / "converged_study.sh"
    proc = study(tmp_path, script, STAGES="baseline", PATIENCE="2", MAX_EPOCH="10", RECIPES=str(recipes))
    assert proc.returncode != 0
    assert "transformer_compact_seed1: the run stayed at epoch 0 below its stopping point 10" in proc.stderr
    assert (tmp_path / "calls").read_text() == "train MAX_EPOCH=10\n"
