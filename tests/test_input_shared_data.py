"""The one way real-data tests find ../shared/data (tests/conftest.py): ``$SHARED_DATA`` is
honoured, and missing data is a skip locally but a failure where ``CI`` is set (issue #17)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest


def test_shared_data_env_is_honoured(tmp_path: Path) -> None:
    code = "from tests.conftest import SHARED_DATA; print(SHARED_DATA)"
    env = dict(os.environ, SHARED_DATA=str(tmp_path / "elsewhere"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=conftest.REPO_ROOT, check=True).stdout.strip()
    assert out == str(tmp_path / "elsewhere")
    env.pop("SHARED_DATA")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=conftest.REPO_ROOT, check=True).stdout.strip()
    assert out == str(conftest.REPO_ROOT.parent / "shared" / "data")


def test_missing_data_skips_locally_and_fails_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "nowhere")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="shared data not found"):
        conftest.require_shared_data("dailydialog")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set but the shared data is missing"):
        conftest.require_shared_data("dailydialog")
    (tmp_path / "nowhere" / "dailydialog").mkdir(parents=True)
    assert conftest.require_shared_data("dailydialog") == tmp_path / "nowhere" / "dailydialog"
