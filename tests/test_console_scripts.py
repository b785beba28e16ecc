"""Every console script in setup.py exits 0 when its work succeeds: setuptools runs
``sys.exit(entry())``, so an entry point must return None or an int, never a statistics dict
(which prints the dict and exits 1, failing every recipe under ``set -e``)."""
from __future__ import annotations

import importlib
import inspect
import re

import pytest

from informative_dialogue.cli import console_script
from tests.conftest import REPO_ROOT

ENTRY_POINTS = re.findall(r'"([\w-]+)=([\w.]+):(\w+)"', (REPO_ROOT / "setup.py").read_text())


def test_setup_py_lists_the_console_scripts():
    names = {name for name, _, _ in ENTRY_POINTS}
    assert {"build-knowledge-base", "ki-mine", "ki-merge-alignments", "dialog-metrics"} <= names


@pytest.mark.parametrize("name,module,attr", ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_entry_point_returns_an_exit_status(name, module, attr):
    entry = getattr(importlib.import_module(module), attr)
    returns = inspect.signature(entry).return_annotation
    assert returns in (None, "None", int, "int"), f"{name}: {module}:{attr} returns {returns!r}, not an exit status"


def test_console_script_drops_the_statistics():
    calls = []

    def main() -> dict:
        calls.append(1)
        return {"items": 3}

    assert console_script(main)() is None and calls == [1]
