"""Shared test fixtures: the real corpora in ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it are skipped where it is absent (never in CI:
    ``test_shared_data_present_in_ci`` fails there instead)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def fresh_fairseq_metrics():
    """fairseq keeps logged meters (e.g. ``num_updates`` from a Trainer) in module-level
    aggregators; reset them so no test sees another test's update count."""
    import sys

    metrics = sys.modules.get("fairseq.logging.metrics")
    if metrics is not None:
        metrics.reset()
    yield
