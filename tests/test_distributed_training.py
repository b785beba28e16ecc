"""Distributed training (torch.distributed through fairseq's own machinery) with the plugin's
criteria: KI, ND, UL and KI+ND, two processes on CPU over gloo, launched by torchrun.

How the runs are launched: ``torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py``,
the worker being fairseq-train's ``cli_main`` plus a record of each rank's final state and of
the logging outputs that the Trainer gathered from all ranks (``tests/distributed_worker.py``).
On CPU, fairseq 0.12 needs three things that it infers by itself on GPUs: ``--distributed-rank
$RANK --distributed-init-method env:// --distributed-no-spawn`` (its own spawn starts
``min(cuda devices, world size)`` = 0 processes, and its torchrun inference divides by the
CUDA device count), and ``--ddp-backend legacy_ddp`` (``pytorch_ddp`` passes ``device_ids=[0]``,
which torch's DistributedDataParallel refuses for CPU modules).

Per criterion (one module-scoped fixture run, three fairseq-train starts):

- ``dist``: 2 ranks, batches of 2 pairs, 4 updates (2 epochs of the 8 training pairs);
- ``ref``: 1 process, ``--update-freq 2``, 6 updates: the same global batches. fairseq shuffles
  the batch list with ``seed + epoch`` whatever the world size and gives rank r the batches
  r, r + 2, ...; one process with ``--update-freq 2`` puts batches 2k and 2k + 1 into update k.
  The gradient of an update is then the same sum over the same two batches (legacy_ddp halves
  each rank's gradient before the all-reduce and the Trainer multiplies by world size / sample
  size: exact in binary), with one thread per process the same arithmetic: the logged sums are
  expected to agree to float32 rounding; the tolerance is 1e-6 relative.
- ``resume``: 1 process, ``--update-freq 2``, restored from the distributed run's
  ``checkpoint_last.pt`` (written at an epoch boundary), updates 5 and 6, which must equal the
  reference's updates 5 and 6.

The data make every random draw irrelevant to the result, so that a difference can only come
from the distribution: dropout 0, and each sentence's labelled tokens carry one knowledge id,
different in every sentence, so KI's negative (drawn from the other sentence of a batch of two)
has the same id whichever token is drawn, although a rank draws from the RNG state of a fresh
update where one process continues the state of its first micro-batch. UL counts token
frequencies over ``--ul-window`` batches of its own process; with a window of 1 that is the
current batch on one process or on several (with a longer window the ranks' statistics cover
only their own batches: see README, "Multi-GPU and multi-node training").
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from tests import distributed_worker as W
from tests import nd_helpers as H
from tests.conftest import REPO_ROOT

WORKER = str(REPO_ROOT / "tests" / "distributed_worker.py")
USER_DIR = str(REPO_ROOT / "fairseq_plugins")
WORLD = 2
DIST_UPDATES = 4  # 2 epochs of 4 batches on 2 ranks
TOTAL_UPDATES = 6
REL = 1e-6
LR = 0.01  # Adam
ARCH = [
    "--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
    "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--dropout", "0.0",
]
# (source, target); 8 training pairs = 4 batches of 2, 4 validation pairs = 2 batches
TRAIN = [("a b c d", "e f g"), ("h i", "j k l m n"), ("o p q r s t", "a b"), ("b d f", "h j"),
         ("k m o q s", "a c e"), ("t g", "b c d e f"), ("g h i j", "k l"), ("l n p r", "t s r q")]
VALID = [("c d e", "f g h"), ("q r", "s t a b"), ("i j k", "l"), ("m n o p", "q r s")]
TABLE_ROWS = len(TRAIN) + 1


def knowledge_rows(pairs) -> List[List[int]]:
    """Sentence i: id i + 1 on every word but the first (0 = no knowledge)."""
    return [[0] + [i + 1] * (len(src.split()) - 1) for i, (src, _) in enumerate(pairs)]


def make_files(tmp: Path) -> Dict[str, Path]:
    """Binarised data with alignments for both splits, the knowledge table, the ND teacher."""
    from informative_dialogue.ki.alignments import write_knowledge_alignments

    text = tmp / "text"
    text.mkdir()
    for split, pairs in (("train", TRAIN), ("valid", VALID)):
        (text / f"{split}.src").write_text("".join(s + "\n" for s, _ in pairs))
        (text / f"{split}.tgt").write_text("".join(t + "\n" for _, t in pairs))
    data = H.binarize(text, tmp / "bin")
    for split, pairs in (("train", TRAIN), ("valid", VALID)):
        write_knowledge_alignments(data / f"{split}.align", knowledge_rows(pairs))
    table = np.random.default_rng(0).normal(size=(TABLE_ROWS, 4)).astype(np.float32)
    table[0] = 0
    np.save(tmp / "table.npy", table)
    cfg = H.make_cfg(data, arch=ARCH)
    torch.manual_seed(7)
    task, teacher = H.build(cfg)
    H.save_checkpoint(teacher, cfg, tmp / "teacher" / "checkpoint.pt", task)
    return {"data": data, "table": tmp / "table.npy", "teacher": tmp / "teacher" / "checkpoint.pt"}


def criterion_args(case: str, files: Dict[str, Path]) -> List[str]:
    ki = ["--knowledge-alignments", "--ki-knowledge-table", str(files["table"]), "--ki-encoder-dim", "16",
          "--ki-projection-dim", "8"]
    # progressive alpha with gamma 3: alpha changes at every update, so a wrong step number shows
    nd = ["--teacher-path", str(files["teacher"]), "--nd-gamma", "3"]
    return {
        "ki": ["--criterion", "knowledge_internalization", *ki],
        "nd": ["--criterion", "negative_distillation", *nd],
        "ul": ["--criterion", "unlikelihood", "--ul-window", "1", "--ul-alpha", "10", "--ul-max-len", "6"],
        "ki_nd": ["--criterion", "ki_negative_distillation", *ki, *nd],
    }[case]


# ki_nd runs both criteria's code (KI's heads, ND's teacher, ND's summed logs) in one training; KI,
# ND and UL alone are marked slow (python3 -m pytest -m slow tests/test_distributed_training.py)
# to bound the default suite (each case starts fairseq-train three times, ~35 s)
CASES = [pytest.param("ki", marks=pytest.mark.slow), pytest.param("nd", marks=pytest.mark.slow),
         pytest.param("ul", marks=pytest.mark.slow), "ki_nd"]


def train_args(files: Dict[str, Path], case: str, save_dir: Path, max_update: int) -> List[str]:
    return [
        str(files["data"]), "--user-dir", USER_DIR, "--task", "knowledge_dialog", "--source-lang", "src",
        "--target-lang", "tgt", *ARCH, *criterion_args(case, files), "--optimizer", "adam", "--lr", str(LR),
        "--batch-size", "2", "--max-update", str(max_update), "--save-dir", str(save_dir),
        "--no-epoch-checkpoints", "--num-workers", "0", "--seed", "3", "--cpu", "--log-format", "json",
        "--log-interval", "1", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
    ]


def env() -> Dict[str, str]:
    # one thread per process: the same reductions in every run (and 2 processes on 2 cores)
    out = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    out.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # the plugin sets it itself
    return out


def start(cmd: List[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env(), cwd=REPO_ROOT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"{' '.join(map(str, proc.args))[:300]} failed:\n{log.read_text()[-4000:]}"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    return make_files(tmp_path_factory.mktemp("dist_files"))


@pytest.fixture(scope="module", params=CASES)
def trained(request, files, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The three runs of one criterion: ``{"case", "dir", "dist": [rank0, rank1], "ref", "resume"}``
    (each a dump of tests/distributed_worker.py)."""
    case = request.param
    tmp = tmp_path_factory.mktemp(f"dist_{case}")
    dist = start(["torchrun", "--standalone", "--nproc-per-node", str(WORLD), WORKER, "--dump-dir",
                  str(tmp / "dump_dist"), *train_args(files, case, tmp / "ckpt_dist", DIST_UPDATES)],
                 tmp / "dist.log")
    finish(dist, tmp / "dist.log")
    # the reference and the resumed run side by side (one process each)
    ref = start([sys.executable, WORKER, "--dump-dir", str(tmp / "dump_ref"),
                 *train_args(files, case, tmp / "ckpt_ref", TOTAL_UPDATES), "--update-freq", str(WORLD)],
                tmp / "ref.log")
    resume = start([sys.executable, WORKER, "--dump-dir", str(tmp / "dump_resume"),
                    *train_args(files, case, tmp / "ckpt_resume", TOTAL_UPDATES), "--update-freq", str(WORLD),
                    "--restore-file", str(tmp / "ckpt_dist" / "checkpoint_last.pt")], tmp / "resume.log")
    finish(ref, tmp / "ref.log")
    finish(resume, tmp / "resume.log")

    def load(path: Path) -> dict:
        return torch.load(path, weights_only=False)

    return {
        "case": case, "dir": tmp,
        "dist": [load(tmp / "dump_dist" / f"rank{r}.pt") for r in range(WORLD)],
        "ref": load(tmp / "dump_ref" / "rank0.pt"),
        "resume": load(tmp / "dump_resume" / "rank0.pt"),
    }


# --- helpers ----------------------------------------------------------------------------------------------------
def totals(dump: dict, phase: str) -> Dict[int, Dict[str, float]]:
    """update number -> key -> sum over every logging output of that phase and update (train:
    the update's micro-batches and ranks; valid: the validation after that update). The Trainer
    reduces the logs once the update is made, so a record's ``num_updates`` counts it."""
    out: Dict[int, Dict[str, float]] = {}
    for record in dump["logs"]:
        if record["phase"] != phase:
            continue
        step = record["num_updates"]  # recorded after the update (train) or after the last update (valid)
        acc = out.setdefault(step, {})
        for log in record["logs"]:
            for k, v in log.items():
                acc[k] = acc.get(k, 0.0) + v
    return out


def assert_states_equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], where: str) -> None:
    assert sorted(a) == sorted(b), where
    for k in a:
        assert torch.equal(a[k], b[k]), f"{where}: {k} differs (max |diff| {(a[k] - b[k]).abs().max():.3g})"


# A key projection's bias adds the same term to every score of a query, which softmax cancels:
# its gradient is zero in exact arithmetic and float rounding noise in practice, and Adam rescales
# that noise to steps of up to lr. Rounding differs between 2 ranks and 1 process (legacy_ddp halves
# each rank's gradient before the all-reduce), so these parameters may differ by up to lr per update.
ZERO_GRADIENT_SUFFIX = "attn.k_proj.bias"  # self_attn and encoder_attn


def assert_states_close(a, b, where: str, atol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b), where
    for k in a:
        if k.endswith(ZERO_GRADIENT_SUFFIX):
            diff = (a[k] - b[k]).abs().max().item()
            assert diff <= LR * TOTAL_UPDATES, f"{where}: {k} differs by {diff:.3g} > lr x updates"
            continue
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=atol), (
            f"{where}: {k} differs (max |diff| {(a[k] - b[k]).abs().max():.3g})")


def assert_totals_match(got: Dict[str, float], want: Dict[str, float], where: str) -> None:
    assert sorted(got) == sorted(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=REL, abs=1e-7), f"{where} {k}: {got[k]!r} != {want[k]!r}"


# --- tests ------------------------------------------------------------------------------------------------------
def test_both_ranks_trained_the_same_global_batches(trained) -> None:
    r0, r1 = trained["dist"]
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, WORLD)
    assert r0["num_updates"] == r1["num_updates"] == DIST_UPDATES
    # every update gathered both ranks' logs: the same 4 sentences as the 2 micro-batches of the reference
    t0, ref = totals(r0, "train"), totals(trained["ref"], "train")
    assert sorted(t0) == list(range(1, DIST_UPDATES + 1))
    for step in t0:
        assert t0[step]["nsentences"] == ref[step]["nsentences"] == 2 * WORLD
    assert totals(r1, "train") == t0  # rank 1 logged the same aggregate


def test_ranks_hold_identical_parameters(trained) -> None:
    """Model and criterion (KI's projection heads) bitwise equal on both ranks after 4 updates,
    equal to the checkpoint rank 0 wrote, and moved by training."""
    r0, r1 = trained["dist"]
    assert_states_equal(r0["model"], r1["model"], "model, rank 0 vs rank 1")
    assert_states_equal(r0["criterion"], r1["criterion"], "criterion, rank 0 vs rank 1")
    ckpt = torch.load(trained["dir"] / "ckpt_dist" / "checkpoint_last.pt", weights_only=False)
    assert ckpt["optimizer_history"][-1]["num_updates"] == DIST_UPDATES
    assert_states_equal(ckpt["model"], r0["model"], "model, checkpoint vs ranks")
    if trained["case"] in ("ki", "ki_nd"):
        heads = {"f1.weight", "f1.bias", "f2.weight", "f2.bias"}
        prefix = "ki." if trained["case"] == "ki_nd" else ""
        assert set(r0["criterion"]) == {prefix + h for h in heads}
        assert r0["criterion_parameters"] == sorted(prefix + h for h in heads)
        assert_states_equal(ckpt["criterion"], r0["criterion"], "criterion, checkpoint vs ranks")
        for k, v in r0["criterion"].items():
            assert not torch.equal(v, r0["initial_criterion"][k]), f"{k} was not trained"
        assert_states_equal(r0["initial_criterion"], r1["initial_criterion"], "initial heads")
    else:
        assert r0["criterion"] == {} and r0["criterion_parameters"] == []


def test_losses_match_one_process_on_the_same_global_batch(trained) -> None:
    dist, ref = trained["dist"][0], trained["ref"]
    got, want = totals(dist, "train"), totals(ref, "train")
    for step in range(1, DIST_UPDATES + 1):
        assert_totals_match(got[step], want[step], f"{trained['case']} update {step}")
    got_v, want_v = totals(dist, "valid"), totals(ref, "valid")
    assert sorted(got_v) == [2, 4]
    for step in got_v:
        assert_totals_match(got_v[step], want_v[step], f"{trained['case']} validation after update {step}")
    if trained["case"] in ("nd", "ki_nd"):  # the step s that alpha read: 0..3, one per update
        assert [got[s]["nd_step"] / got[s]["nd_batches"] for s in sorted(got)] == [0, 1, 2, 3]
        assert all(got[s]["nd_batches"] == WORLD for s in got)  # both ranks' batches reached the logs
    if trained["case"] in ("ki", "ki_nd"):
        assert all(got[s]["ki_tokens"] > 0 and got[s]["ki_no_negative"] == 0 for s in got)
    if trained["case"] == "ul":  # the unlikelihood term was active
        assert sum(got[s]["ul_tokens"] for s in got) > 0


def test_checkpoint_of_the_distributed_run_resumes_on_one_process(trained) -> None:
    resumed, ref = trained["resume"], trained["ref"]
    got, want = totals(resumed, "train"), totals(ref, "train")
    assert sorted(got) == list(range(DIST_UPDATES + 1, TOTAL_UPDATES + 1))
    for step in got:
        assert_totals_match(got[step], want[step], f"{trained['case']} resumed update {step}")
    assert resumed["num_updates"] == ref["num_updates"] == TOTAL_UPDATES
    assert_states_close(resumed["model"], ref["model"], "model after resume vs reference")
    assert_states_close(resumed["criterion"], ref["criterion"], "criterion after resume vs reference")


def test_every_rank_loads_its_own_frozen_teacher(trained, files) -> None:
    if trained["case"] not in ("nd", "ki_nd"):
        pytest.skip("no teacher")
    want = torch.load(files["teacher"], weights_only=False)["model"]
    r0, r1 = trained["dist"]
    assert r0["teacher"]["pid"] != r1["teacher"]["pid"]  # two processes, one teacher each
    for r in (r0, r1):
        t = r["teacher"]
        assert_states_equal(t["state"], want, f"rank {r['rank']} teacher vs its checkpoint")  # loaded, unchanged
        assert not t["training"] and not t["requires_grad"]
        assert not any(k.startswith(("teacher", "nd.teacher", "_teacher")) for k in r["criterion"])


def test_logs_of_fairseq_itself(trained) -> None:
    """fairseq-train's own JSON log of the distributed run: 2 ranks initialised over gloo, the
    logged loss of every update rounded as the worker's raw sums give it."""
    log = (trained["dir"] / "dist.log").read_text()
    assert "distributed init (rank 0): env://" in log and "initialized host" in log
    # "... | INFO | train_inner | {json}" (fairseq's format) or "INFO:train_inner:{json}" (logging's
    # default, when the root logger was configured before fairseq_cli.train was imported)
    inner = [json.loads(m.group(1)) for m in re.finditer(r"train_inner(?: \| |:)(\{.*\})", log)]
    assert [int(x["num_updates"]) for x in inner] == list(range(1, DIST_UPDATES + 1))
    got = totals(trained["dist"][0], "train")
    for x in inner:
        t = got[int(x["num_updates"])]
        assert float(x["loss"]) == pytest.approx(t["loss"] / t["sample_size"] / np.log(2), abs=6e-4)


# --- the worker's argument handling (no fairseq start) -----------------------------------------------------------
def test_worker_rank_flags() -> None:
    assert W.rank_flags(["x"], {}) == []
    flags = W.rank_flags(["x"], {"RANK": "1", "WORLD_SIZE": "2"})
    assert flags == ["--distributed-world-size", "2", "--distributed-rank", "1", "--distributed-init-method",
                     "env://", "--distributed-no-spawn"]
    assert W.rank_flags(["--distributed-rank", "0"], {"RANK": "1", "WORLD_SIZE": "2"}) == []
    assert W.split_dump_dir(["a", "--dump-dir", "d", "b"]) == ("d", ["a", "b"])
    assert W.split_dump_dir(["a"]) == (None, ["a"])
    with pytest.raises(ValueError, match="--dump-dir"):
        W.split_dump_dir(["a", "--dump-dir"])
