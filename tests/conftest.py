"""Shared test fixtures: the real corpora in ../shared/data, a tiny random BERT."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# the real data: $SHARED_DATA, else ../shared/data beside the repository
SHARED_DATA = Path(os.environ.get("SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")


def require_shared_data(*parts: str) -> Path:
    """``SHARED_DATA/parts...``, the one way every real-data test finds the data.

    Where it is absent the test is skipped, except when ``CI`` is set in the environment: there
    a missing file fails the test (CI must run the real-data checks, never skip them silently)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        where = f"{path} (set SHARED_DATA to the folder holding the shared data)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the shared data is missing: {where}", pytrace=False)
        pytest.skip(f"shared data not found: {where}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (``$SHARED_DATA``, default ``../shared/data``); see
    :func:`require_shared_data` (skip where absent, fail where ``CI`` is set)."""
    return require_shared_data()


@pytest.fixture(autouse=True)
def fresh_fairseq_metrics():
    """fairseq keeps logged meters (e.g. ``num_updates`` from a Trainer) in module-level
    aggregators; reset them so no test sees another test's update count."""
    import sys

    metrics = sys.modules.get("fairseq.logging.metrics")
    if metrics is not None:
        metrics.reset()
    yield


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 1-layer, hidden-32 random BERT saved with the shipped MiniLM tokenizer (a stand-in for
    the retriever's BERT that runs in milliseconds); returns its directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from data_prep.ki.retriever import default_bert_path

    tokenizer = AutoTokenizer.from_pretrained(default_bert_path())
    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=tokenizer.vocab_size, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_bert")
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# ------------------------------------------------------------------------------- devices
# Tensor-path tests take the ``device`` fixture: every test runs on the CPU, and again on CUDA
# where torch sees a GPU; elsewhere its cuda case is reported as skipped with the reason
# "no CUDA". With REQUIRE_CUDA=1 in the environment (benchmarks/gpu_check.sh sets it) a missing
# GPU fails the cuda cases instead, so a GPU check can never pass on CPU alone.
DEVICES = ("cpu", "cuda")


def resolve_test_device(name: str):
    """``torch.device(name)``; for ``cuda`` skip (reason "no CUDA") where torch sees no GPU, or
    fail where ``REQUIRE_CUDA`` is set."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        if os.environ.get("REQUIRE_CUDA"):
            pytest.fail("REQUIRE_CUDA is set but torch sees no CUDA device", pytrace=False)
        pytest.skip("no CUDA")
    return torch.device(name)


@pytest.fixture(params=DEVICES)
def device(request):
    """The device a tensor-path test runs on: ``cpu`` always, ``cuda`` where present (see
    :func:`resolve_test_device`); the test ids end in ``[cpu]`` / ``[cuda]``."""
    return resolve_test_device(request.param)
