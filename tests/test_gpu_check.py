"""benchmarks/gpu_check.sh without a GPU: its refusal (CUDA hidden, so the check means the same on
a GPU machine), and its dry run, whose printed commands must name existing scripts and tests and
keep the paper-budget trainings within their share (7.5 min) of the 10-minute budget with the KI paper's early stopping."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"


def run_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, GPU_OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), **env)
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full, cwd=tmp_path)


def commands(stdout: str) -> List[Tuple[Dict[str, str], List[str]]]:
    """The printed ``+ cmd`` lines as ``(env assignments, argv)``, ``env`` itself dropped."""
    out = []
    for line in stdout.splitlines():
        if not line.startswith("+ "):
            continue
        argv = shlex.split(line[2:])
        assigns: Dict[str, str] = {}
        if argv[0] == "env":
            argv = argv[1:]
            while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0], re.S):
                key, value = argv.pop(0).split("=", 1)
                assigns[key] = value
        out.append((assigns, argv))
    return out


def test_refuses_without_cuda(tmp_path: Path) -> None:
    # were the refusal missing, only a quick failing step would run (a test file that is not there)
    proc = run_check(tmp_path, CUDA_VISIBLE_DEVICES="", STEPS="tests", DEVICE_TESTS="tests/no_such_test_file.py")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stderr and "torch.cuda.is_available() = False" in proc.stderr
    assert "== gpu_check.sh: step" not in proc.stdout and not (tmp_path / "out").exists()


def test_unknown_step_is_an_error(tmp_path: Path) -> None:
    proc = run_check(tmp_path, STEPS="tests bench", DRY_RUN="1")
    assert proc.returncode == 2 and "unknown step 'bench'" in proc.stderr


def test_dry_run_prints_every_step_with_existing_scripts_and_the_paper_budget(tmp_path: Path) -> None:
    proc = run_check(tmp_path, DRY_RUN="1", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()  # nothing ran
    steps = re.findall(r"^== gpu_check.sh: step (\S+)$", proc.stdout, re.M)
    assert steps == ["tests", "data", "step-cost", "ki-inputs", "mining-speed", "paper", "kid-speed"]
    cmds = commands(proc.stdout)
    # every script or test file named exists in the repository
    for _, argv in cmds:
        for arg in argv:
            if re.fullmatch(r"(benchmarks|examples|tests)/\S+\.(sh|py)", arg):
                assert (REPO_ROOT / arg).is_file(), arg

    # the device tests: REQUIRE_CUDA=1, the device-fixture files (test_device_paths.py among them)
    env, argv = next(c for c in cmds if c[1][:3] == ["python3", "-m", "pytest"])
    assert env == {"REQUIRE_CUDA": "1"}
    files = [a for a in argv if a.startswith("tests/")]
    assert "tests/test_device_paths.py" in files
    for f in files:
        assert re.search(r"def test_\w+\([^)]*\bdevice\b", (REPO_ROOT / f).read_text())

    # the three benchmarks; the step cost includes the KI+ND criterion
    benches = {Path(a).name: argv for _, argv in cmds for a in argv if a.startswith("benchmarks/")}
    assert set(benches) == {"training_step_cost.py", "ki_mining_speed.py", "kid_decoding_speed.py"}
    step_cost = [argv for _, argv in cmds if "benchmarks/training_step_cost.py" in argv]
    assert "ki_nd" in step_cost[0][step_cost[0].index("--criteria") + 1].split(",")

    # paper budget: baseline, KI, ND teacher, ND student on the paper's Transformer, each with
    # early stopping on the validation loss (patience 10 epochs) and a time cap; 10 minutes at most
    trainings = [(env, argv) for env, argv in cmds if "--stop-time-hours" in argv]
    scripts = [argv[1].rsplit("/", 2)[-2] + "/" + Path(argv[1]).name for _, argv in trainings]
    assert scripts == ["dailydialog/train_transformer.sh", "dailydialog/train_ki.sh",
                       "common/train_transformer.sh", "dailydialog/train_nd.sh"]
    minutes = 0.0
    for env, argv in trainings:
        assert env["CONFIG"] == "paper"
        assert argv[argv.index("--patience") + 1] == "10"
        assert argv[argv.index("--best-checkpoint-metric") + 1] == "nll_loss"
        minutes += 60 * float(argv[argv.index("--stop-time-hours") + 1])
    assert 5 <= minutes <= 7.5 + 1e-6  # the rest of the 10 minutes: ND entropy/binarise, decoding, scoring
    teacher_env = trainings[2][0]
    assert teacher_env["DATA_BIN"].endswith("entropy/negative/data-bin")
    assert teacher_env["SAVE_DIR"].endswith("checkpoints/nd_teacher_paper")  # where train_nd.sh's student looks
    assert trainings[3][0]["STAGES"] == "student generate evaluate" and trainings[1][0]["STAGES"].startswith("train")

