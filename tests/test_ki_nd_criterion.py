"""Criterion ``ki_negative_distillation`` (KI + ND in one run) on tiny in-process fairseq models:
each weight at 0 equals the other single-method criterion (loss and gradients), both on equal the
hand sum of the pieces, padding and a batch of one, the logged keys, the refusals, fairseq's
Trainer (checkpoint = plain model + KI heads, resume = one run), and one fairseq-train run whose
checkpoint fairseq-generate decodes with the plain translation task."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils, tasks
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics

from fairseq_plugins.criterions.ki_nd import KINegativeDistillationCriterion
from informative_dialogue.ki.alignments import write_knowledge_alignments
from tests import nd_helpers as H
from tests.conftest import REPO_ROOT
from tests.test_ki_criterion import ITEMS, make_batch, write_table

NAME = "ki_negative_distillation"
HEADS = {"ki.f1.weight", "ki.f1.bias", "ki.f2.weight", "ki.f2.bias"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """``(data folder, KI flags, ND flags, model config)``: a tiny dictionary, knowledge table and
    random teacher."""
    tmp = tmp_path_factory.mktemp("ki_nd")
    data = H.make_data_dir(tmp / "data")
    table = write_table(tmp / "table.npy")
    teacher = H.make_teacher(tmp)
    ki_flags = ["--ki-knowledge-table", str(table), "--ki-encoder-dim", "16", "--ki-projection-dim", "8"]
    return data, ki_flags, ["--teacher-path", str(teacher)], H.make_cfg(data).model


def build(setup, criterion: str, *extra: str, alignments: bool = True):
    """``(task, criterion)`` through fairseq's command-line parsing, as fairseq-train builds them."""
    data, ki_flags, nd_flags, _ = setup
    flags = {"knowledge_internalization": ki_flags, "negative_distillation": nd_flags,
             NAME: ki_flags + nd_flags, "label_smoothed_cross_entropy": []}[criterion]
    cfg = H.make_cfg(data, [*(["--knowledge-alignments"] if alignments else []), "--criterion", criterion,
                            *flags, *extra])
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(5)  # KI's heads: the same initial weights in every criterion built here
    return task, task.build_criterion(cfg.criterion)


def model_of(setup, task, seed: int = 0):
    torch.manual_seed(seed)
    model = task.build_model(setup[3])
    model.train()  # dropout 0: deterministic
    return model


def heads(crit) -> list:
    ki_part = crit.ki if isinstance(crit, KINegativeDistillationCriterion) else crit
    return [ki_part.f1.weight, ki_part.f1.bias, ki_part.f2.weight, ki_part.f2.bias]


def run(crit, model, sample, seed: int = 3, update_num: int = 5):
    """``(loss, model grads, head grads or None, log)`` of one forward/backward; KI's negatives
    are drawn after ``torch.manual_seed(seed)``."""
    model.zero_grad()
    crit.zero_grad()
    if hasattr(crit, "set_update_num"):
        crit.set_update_num(update_num)
    torch.manual_seed(seed)
    loss, _, log = crit(model, sample)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    head_grads = None
    if hasattr(crit, "ki") or hasattr(crit, "f1"):
        head_grads = [None if p.grad is None else p.grad.clone() for p in heads(crit)]
    return loss.detach(), grads, head_grads, log


# --- each weight at 0 equals the single-method criterion --------------------------------------------------
@pytest.mark.parametrize("eps", ["0", "0.1"])
def test_nd_weight_zero_equals_knowledge_internalization(setup, eps: str) -> None:
    common = ["--label-smoothing", eps, "--ki-lambda", "0.7", "--ki-negatives", "2"]
    task, both = build(setup, NAME, *common, "--nd-alpha-schedule", "fixed", "--nd-alpha", "0")
    _, ki_only = build(setup, "knowledge_internalization", *common)
    model = model_of(setup, task)
    sample = make_batch(task, ITEMS)
    loss, grads, head_grads, log = run(both, model, sample)
    loss_ki, grads_ki, head_grads_ki, log_ki = run(ki_only, model, sample)
    assert float(log["ki_loss"]) > 0 and log["nd_alpha"] == 0.0
    assert torch.equal(loss, loss_ki)
    for a, b in zip(grads + head_grads, grads_ki + head_grads_ki):
        assert torch.equal(a, b)
    for key in log_ki:
        assert float(log[key]) == float(log_ki[key]), key


@pytest.mark.parametrize("nd_flags", [
    ["--nd-gamma", "4"],  # progressive alpha (0.79 at s = 5), fused MLE + L_pred at t = 1
    ["--nd-alpha-schedule", "fixed", "--nd-alpha", "0.3", "--nd-temperature", "2", "--nd-attention", "both"],
])
def test_ki_weight_zero_equals_negative_distillation(setup, nd_flags: List[str]) -> None:
    task, both = build(setup, NAME, "--ki-lambda", "0", *nd_flags)
    _, nd_only = build(setup, "negative_distillation", *nd_flags)
    model = model_of(setup, task)
    sample = make_batch(task, ITEMS)
    loss, grads, head_grads, log = run(both, model, sample)
    loss_nd, grads_nd, _, log_nd = run(nd_only, model, sample)
    assert 0 < log["nd_alpha"] < 1 and float(log["ki_loss"]) > 0  # KI still computed and logged
    assert torch.equal(loss, loss_nd)
    for a, b in zip(grads, grads_nd):
        assert torch.equal(a, b)
    assert all(g is None for g in head_grads)  # λ = 0: the heads are outside the graph
    for key in log_nd:
        assert float(log[key]) == float(log_nd[key]), key


# --- both on: the hand sum of the two criteria's pieces -------------------------------------------------
@pytest.mark.parametrize("temperature", ["1", "2"])  # fused and unfused (1 - α) L_mle + α L_pred
def test_both_on_is_the_hand_sum_of_the_pieces(setup, temperature: str) -> None:
    alpha, lam = 0.3, 0.7
    nd_flags = ["--nd-alpha-schedule", "fixed", "--nd-alpha", str(alpha), "--nd-temperature", temperature]
    ki_flags = ["--ki-lambda", str(lam), "--ki-negatives", "2"]
    task, both = build(setup, NAME, *ki_flags, *nd_flags)
    _, nd_only = build(setup, "negative_distillation", *nd_flags)
    _, ki_only = build(setup, "knowledge_internalization", *ki_flags)
    mle_only = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    model = model_of(setup, task)
    sample = make_batch(task, ITEMS)
    loss, grads, head_grads, log = run(both, model, sample)
    _, grads_nd, _, log_nd = run(nd_only, model, sample)
    loss_ki, grads_ki, head_grads_ki, log_ki = run(ki_only, model, sample)
    mle, grads_mle, _, _ = run(mle_only, model, sample)
    pieces = float(log_nd["nd_pred"]) + float(log_nd["nd_hid"]) + float(log_nd["nd_att"])
    assert float(log_nd["nd_pred"]) > 0 and float(log_nd["nd_hid"]) > 0 and float(log_nd["nd_att"]) > 0
    ki_sum = float(log_ki["ki_loss"])
    assert ki_sum > 0.1
    expected = (1 - alpha) * mle.item() + alpha * pieces + lam * ki_sum
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert float(log["ki_loss"]) == pytest.approx(ki_sum, rel=1e-6)
    for key in ("nd_pred", "nd_hid", "nd_att", "mle_loss", "nll_loss"):
        assert float(log[key]) == pytest.approx(float(log_nd[key]), rel=1e-6), key
    # gradients: ND's + KI's - the MLE's (KI = L_mle + λ L_KI, so its MLE part is counted once)
    for g, g_nd, g_ki, g_mle in zip(grads, grads_nd, grads_ki, grads_mle):
        torch.testing.assert_close(g, g_nd + g_ki - g_mle, rtol=1e-4, atol=1e-6)
    for g, g_ki in zip(head_grads, head_grads_ki):
        torch.testing.assert_close(g, g_ki, rtol=1e-5, atol=1e-7)
    assert heads(both)[0].grad.abs().sum() > 0


# --- padding, batch of one, logs ------------------------------------------------------------------------
def test_padding_side_invariance(setup) -> None:
    task, both = build(setup, NAME, "--nd-alpha-schedule", "fixed", "--nd-alpha", "0.4", "--ki-negatives", "3")
    model = model_of(setup, task)
    results = []
    for left in (True, False):
        loss, _, _, log = run(both, model, make_batch(task, ITEMS, left_pad=left))
        results.append([loss.item()] + [float(log[k]) for k in ("ki_loss", "nd_pred", "nd_hid", "nd_att")])
    assert make_batch(task, ITEMS, left_pad=True)["net_input"]["src_tokens"][2, 0] == 1  # really left-padded
    assert results[0] == pytest.approx(results[1], rel=1e-5)


def test_batch_of_one_has_no_ki_negatives_and_equals_nd(setup) -> None:
    nd_flags = ["--nd-alpha-schedule", "fixed", "--nd-alpha", "0.4"]
    task, both = build(setup, NAME, *nd_flags)
    _, nd_only = build(setup, "negative_distillation", *nd_flags)
    model = model_of(setup, task)
    sample = make_batch(task, ITEMS[:1])
    loss, _, head_grads, log = run(both, model, sample)
    loss_nd = run(nd_only, model, sample)[0]
    assert float(log["ki_loss"]) == 0.0 and log["ki_tokens"] == 0
    assert log["ki_labelled"] == 3 and log["ki_no_negative"] == 3
    assert torch.equal(loss, loss_nd)
    assert all(g is not None and g.abs().sum() == 0 for g in head_grads)  # in the graph, zero (DDP)


def test_logged_keys_and_reduced_metrics(setup) -> None:
    task, both = build(setup, NAME, "--nd-alpha-schedule", "fixed", "--nd-alpha", "0.4")
    model = model_of(setup, task)
    logs = [run(both, model, make_batch(task, items))[3] for items in (ITEMS, ITEMS[1:])]
    assert set(logs[0]) == {"loss", "nll_loss", "mle_loss", "nd_pred", "nd_hid", "nd_att", "nd_alpha", "nd_step",
                            "nd_batches", "ki_loss", "ki_tokens", "ki_labelled", "ki_no_negative", "ki_absent", "src_tokens",
                            "ntokens", "nsentences", "sample_size"}
    assert KINegativeDistillationCriterion.logging_outputs_can_be_summed()
    with metrics.aggregate() as agg:
        KINegativeDistillationCriterion.reduce_metrics(logs)
    got = agg.get_smoothed_values()
    # fairseq's multi-process path: the logs summed key by key first, reduced as one
    summed = {k: sum(float(log[k]) for log in logs) for k in logs[0]}
    with metrics.aggregate() as agg_summed:
        KINegativeDistillationCriterion.reduce_metrics([summed])
    for key, value in agg_summed.get_smoothed_values().items():
        assert value == pytest.approx(got[key], abs=1e-4), key
    for key in ("loss", "nll_loss", "ppl", "mle_loss", "nd_pred", "nd_hid", "nd_att", "nd_alpha", "nd_step",
                "ki_loss", "ki_coverage", "ki_no_negative", "ki_absent"):
        assert key in got, key
    tokens = sum(log["ki_tokens"] for log in logs)
    assert got["ki_loss"] == pytest.approx(sum(float(log["ki_loss"]) for log in logs) / tokens, abs=1e-4)
    size = sum(log["sample_size"] for log in logs)
    assert got["nd_hid"] == pytest.approx(sum(float(log["nd_hid"]) for log in logs) / size, abs=1e-4)
    assert got["nd_alpha"] == pytest.approx(0.4) and got["nd_step"] == 5


def test_refusals(setup) -> None:
    with pytest.raises(ValueError, match="needs --task knowledge_dialog --knowledge-alignments"):
        build(setup, NAME, alignments=False)
    build(setup, NAME, "--ki-lambda", "0", alignments=False)  # ND alone needs no alignments
    with pytest.raises(ValueError, match="--ki-lambda must be >= 0"):
        build(setup, NAME, "--ki-lambda", "-1")
    with pytest.raises(ValueError, match="--nd-terms: unknown"):
        build(setup, NAME, "--nd-terms", "pred,kl")


# --- fairseq's Trainer: checkpoint and resume -----------------------------------------------------------
def trainer_for(setup, seed: int, save_dir: Path):
    from fairseq.trainer import Trainer

    data, ki_flags, nd_flags, _ = setup
    cfg = H.make_cfg(data, ["--knowledge-alignments", "--criterion", NAME, *ki_flags, *nd_flags, "--nd-gamma", "2",
                            "--ki-negatives", "2", "--lr", "0.02", "--clip-norm", "0", "--save-dir", str(save_dir),
                            "--max-update", "10"])
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    return task, Trainer(cfg, task, model, task.build_criterion(cfg.criterion))


def train(trainer, batches: Sequence[dict]) -> List[float]:
    losses = []
    for b in batches:
        log = trainer.train_step([b])
        assert log is not None
        losses.append(log["loss"])
    return losses


def test_checkpoint_is_a_plain_model_and_resume_continues_exactly(setup, tmp_path: Path) -> None:
    task, whole = trainer_for(setup, 1, tmp_path / "whole")
    rows = [ITEMS, ITEMS[1:], [ITEMS[0], ITEMS[2]], ITEMS]
    batches = [make_batch(task, r) for r in rows]
    metrics.reset()
    losses = train(whole, batches)
    # half, a checkpoint, then a fresh trainer (other initial weights) resumes for the other half
    metrics.reset()
    _, first = trainer_for(setup, 1, tmp_path / "half")
    first_losses = train(first, batches[:2])
    path = tmp_path / "half" / "checkpoint_last.pt"
    path.parent.mkdir()
    first.consolidate_optimizer()
    first.save_checkpoint(str(path), {"train_iterator": {"epoch": 1}, "previous_epoch_iterator": None})
    metrics.reset()
    _, second = trainer_for(setup, 99, tmp_path / "half")
    second.load_checkpoint(str(path))
    assert second.get_num_updates() == 2
    assert first_losses + train(second, batches[2:]) == pytest.approx(losses, rel=1e-6)
    for name, p in whole.get_model().named_parameters():
        torch.testing.assert_close(second.get_model().state_dict()[name], p.detach(), rtol=1e-6, atol=1e-7)
    for (name, p), q in zip(whole.get_criterion().named_parameters(), second.get_criterion().parameters()):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-6, atol=1e-7, msg=name)
    assert second.get_criterion().nd.num_updates == 3  # α's step after the resume
    # the checkpoint: the plain architecture, KI's heads as the criterion state, no teacher or table
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert set(state["criterion"]) == HEADS
    assert set(state["model"]) == set(whole.get_model().state_dict())
    assert not any(k.startswith(("ki.", "nd.", "teacher")) or "knowledge" in k for k in state["model"])
    n_opt = len(state["last_optimizer_state"]["state"])
    assert n_opt == len(list(whole.get_model().parameters())) + len(HEADS)


# --- fairseq-train on tiny data, then fairseq-generate with the plain translation task ------------------
def _run(cmd: List[str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    if "fairseq-generate" in cmd[0]:
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # no --user-dir: what the plugin sets for itself
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_fairseq_train_then_plain_fairseq_generate(tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.mkdir()
    sources = ["a b c d", "e f g", "h i j", "k l m n o", "p q", "r s t a b"]
    targets = ["e f", "g h i", "j k", "l m", "n o p q", "r s"]
    rows = [[1, 0, 2, 2], [3, 0, 4], [5, 6, 0], [0, 1, 0, 2, 3], [4, 5], [6, 0, 1, 2, 0]]
    for split in ("train", "valid"):
        (text / f"{split}.src").write_text("\n".join(sources * 2) + "\n")
        (text / f"{split}.tgt").write_text("\n".join(targets * 2) + "\n")
    bin_dir = H.binarize(text, tmp_path / "bin")
    for split in ("train", "valid"):
        write_knowledge_alignments(bin_dir / f"{split}.align", rows * 2)
    table = write_table(tmp_path / "table.npy", dtype=np.float32)
    cfg = H.make_cfg(bin_dir)
    torch.manual_seed(11)
    task, teacher = H.build(cfg)
    teacher_path = H.save_checkpoint(teacher, cfg, tmp_path / "teacher" / "checkpoint_best.pt", task)
    save_dir = tmp_path / "student"
    log = _run(["fairseq-train", str(bin_dir), "--user-dir", str(REPO_ROOT / "fairseq_plugins"),
                "--task", "knowledge_dialog", "--knowledge-alignments", "--source-lang", "src", "--target-lang", "tgt",
                *H.TINY_ARCH, "--criterion", NAME, "--teacher-path", str(teacher_path), "--nd-gamma", "2",
                "--ki-knowledge-table", str(table), "--ki-encoder-dim", "16", "--ki-projection-dim", "8",
                "--optimizer", "adam", "--lr", "0.001", "--max-tokens", "64", "--max-update", "3",
                "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--num-workers", "0",
                "--log-format", "simple", "--log-interval", "1", "--seed", "1", "--cpu"])
    for key in ("ki_loss", "ki_coverage", "nd_alpha", "nd_hid", "nd_step", "mle_loss"):
        assert key in log, key
    state = checkpoint_utils.load_checkpoint_to_cpu(str(save_dir / "checkpoint_last.pt"))
    assert set(state["criterion"]) == HEADS
    assert set(state["model"]) == set(torch.load(teacher_path, weights_only=False)["model"])
    assert state["optimizer_history"][-1]["num_updates"] == 3
    # plain fairseq: translation task, no --user-dir, no knowledge, no teacher, table gone
    table.unlink()
    teacher_path.unlink()
    out = _run(["fairseq-generate", str(bin_dir), "--task", "translation", "--source-lang", "src",
                "--target-lang", "tgt", "--path", str(save_dir / "checkpoint_last.pt"), "--gen-subset", "valid",
                "--beam", "2", "--max-len-b", "5", "--batch-size", "4", "--required-batch-size-multiple", "1",
                "--cpu"])
    assert sum(line.startswith("H-") for line in out.splitlines()) == 2 * len(sources)
