"""The README's two set-up commands: CI runs exactly the test command, and the install step they
share is skipped when nothing it depends on changed (install.sh --if-needed and its stamp)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parents[1]
INSTALL_FILES = ("install.sh", "requirements.txt", "setup.py")


def readme_commands() -> list[str]:
    """The commands of the README's first bash block (comments stripped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert readme_commands() == ["make quickstart", "make test"]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test"


def test_make_targets_depend_on_the_shared_install_step() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^quickstart: install$", makefile, re.M)
    assert re.search(r"^test: install$", makefile, re.M)
    assert "bash install.sh --if-needed" in makefile


def _copy_install_files(dest: Path) -> None:
    for name in INSTALL_FILES:
        shutil.copy(REPO / name, dest / name)


def _install(dest: Path, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "install.sh", *args], cwd=dest, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, **(env or {})})


def test_fingerprint_follows_the_install_files_and_the_interpreter(tmp_path: Path) -> None:
    _copy_install_files(tmp_path)
    first = _install(tmp_path, "--fingerprint").stdout.strip()
    assert re.fullmatch(r"\.install\.stamp\.[0-9a-f]{12} [0-9a-f]{64}", first)
    assert _install(tmp_path, "--fingerprint").stdout.strip() == first
    for name in INSTALL_FILES:
        path = tmp_path / name
        original = path.read_text()
        path.write_text(original + "\n# changed\n")
        assert _install(tmp_path, "--fingerprint").stdout.strip() != first, name
        path.write_text(original)
    other = subprocess.run(["bash", "install.sh", "--fingerprint"], cwd=tmp_path, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "PYTHON": "/bin/false-python"}).stdout.strip()
    assert other != first


OWN_PACKAGES = ("informative_dialogue", "fairseq_plugins", "data_prep")


def _link_own_packages(dest: Path) -> Dict[str, str]:
    """``dest`` holds (links to) the project's packages and comes first on the path, as an
    editable install of ``dest`` would make it; returns the environment that says so."""
    for name in OWN_PACKAGES:
        (dest / name).symlink_to(REPO / name, target_is_directory=True)
    return {"PYTHONPATH": str(dest)}


def test_if_needed_skips_with_a_matching_stamp(tmp_path: Path) -> None:
    """A matching stamp and an interpreter whose packages are this checkout's: nothing is
    installed (the real install would call pip, which this checks it never reaches)."""
    _copy_install_files(tmp_path)
    env = _link_own_packages(tmp_path)
    stamp, fingerprint = _install(tmp_path, "--fingerprint").stdout.split()
    (tmp_path / stamp).write_text(fingerprint + "\n")
    proc = _install(tmp_path, "--if-needed", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "install skipped" in proc.stdout
    assert "pip" not in proc.stdout + proc.stderr
    assert _install(tmp_path, "--check", env=env).returncode == 0


def test_a_stamp_is_not_enough_when_the_packages_are_another_checkouts(tmp_path: Path) -> None:
    """A machine image made from another checkout: the stamp matches, but the editable install
    points elsewhere (here: to the real checkout, not ``tmp_path``), so an install is needed."""
    _copy_install_files(tmp_path)
    stamp, fingerprint = _install(tmp_path, "--fingerprint").stdout.split()
    (tmp_path / stamp).write_text(fingerprint + "\n")
    proc = _install(tmp_path, "--check")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "install is needed" in proc.stdout


def test_unknown_argument_is_refused(tmp_path: Path) -> None:
    _copy_install_files(tmp_path)
    proc = _install(tmp_path, "--quick")
    assert proc.returncode == 2 and "unknown argument" in proc.stderr
