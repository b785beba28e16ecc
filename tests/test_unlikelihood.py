"""Vocabulary unlikelihood (the UL baseline): hand-computed pieces and the criterion in-process."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fairseq import tasks
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from informative_dialogue.nd import unlikelihood as ul
from tests import nd_helpers as H


def test_token_unlikelihood_hand_computed() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0]]])  # p = (1/4, 3/4), (3/4, 1/4)
    tokens = torch.tensor([[1, 0]])
    weights = torch.tensor([[2.0, 0.0]])
    assert ul.token_unlikelihood(logits, tokens, weights).item() == pytest.approx(-2 * math.log(1 / 4), rel=1e-6)


def test_penalty_weights() -> None:
    model = torch.tensor([0, 6, 2, 2, 0])
    human = torch.tensor([0, 2, 4, 4, 5])
    w = ul.penalty_weights(model, human, "kldiv", threshold=1e-3)
    assert w[1].item() == pytest.approx(0.6 * math.log(0.6 / (2 / 15)))
    assert w[[0, 2, 3, 4]].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert ul.penalty_weights(model, human, "uniform").tolist() == [0, 1, 0, 0, 0]
    logdiff = ul.penalty_weights(model, human, "logdiff")
    assert logdiff[1].item() == pytest.approx(math.log((0.6 - 2 / 15) / 0.001))
    # a token the humans never used is no kldiv candidate (infinite weight), as in Li et al.'s agent
    assert ul.penalty_weights(torch.tensor([5, 5]), torch.tensor([0, 3]), "kldiv").tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        ul.penalty_weights(model, human, "other")


def test_running_counts_window() -> None:
    rc = ul.RunningCounts(4, size=2)
    rc.add(torch.tensor([[1, 1, 0]]), ignore=0)
    assert not rc.full and rc.total.tolist() == [0, 2, 0, 0]
    rc.add(torch.tensor([2, 3]))
    rc.add(torch.tensor([3]))
    assert rc.full and rc.total.tolist() == [0, 0, 1, 2]  # the first batch left the window


def test_running_counts_ignore_several_ids() -> None:
    rc = ul.RunningCounts(4, size=2)
    rc.add(torch.tensor([[1, 2, 0, 3, 2]]), ignore=(0, 2))
    assert rc.total.tolist() == [0, 1, 0, 1]


def test_short_generations_over_use_the_end_symbol() -> None:
    """Why EOS is not counted by default: responses of 3 tokens + EOS against human ones of
    7 + EOS make EOS 1/4 of the generated tokens and 1/8 of the human ones, the largest
    kldiv weight; penalising it teaches the model never to stop."""
    eos = 0
    model = torch.tensor([1, 1, 1, 1])   # EOS, 'a', 'b', 'c': shares 1/4 each
    human = torch.tensor([1, 2, 2, 3])   # 1/8, 2/8, 2/8, 3/8
    w = ul.penalty_weights(model, human, "kldiv")
    assert w[eos].item() == pytest.approx(0.25 * math.log(0.25 / 0.125))
    assert w[1:].tolist() == [0.0, 0.0, 0.0]  # only the end symbol is over-used


def _eos_responses(sample, d) -> torch.Tensor:
    return sample["target"].new_full((sample["target"].size(0), 1), d.eos())


def _silenced_eos(model, d):
    """The model with a zero EOS embedding (input and output, shared): its EOS logit is 0, so its
    greedy responses run to the length limit instead of stopping at once."""
    with torch.no_grad():
        model.decoder.embed_tokens.weight[d.eos()] = 0.0
    return model


def _criterion(tmp_path: Path, *extra: str):
    data = H.make_data_dir(tmp_path / "data")
    cfg = H.make_cfg(data, ["--criterion", "unlikelihood", *extra])
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    return task, model, task.build_criterion(cfg.criterion)


def test_alpha_zero_and_eval_mode_are_plain_mle(tmp_path: Path) -> None:
    task, model, crit = _criterion(tmp_path, "--ul-alpha", "0", "--ul-window", "1")
    sample = H.make_sample(task, H.PAIRS)
    ref = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    model.train()
    assert torch.equal(crit(model, sample)[0], ref(model, sample)[0])
    task, model, crit = _criterion(tmp_path, "--ul-window", "1")
    model.eval()
    assert torch.equal(crit(model, sample)[0], ref(model, sample)[0])


def test_unlikelihood_starts_when_the_window_is_full(tmp_path: Path) -> None:
    task, model, crit = _criterion(tmp_path, "--ul-window", "2", "--ul-alpha", "10", "--ul-max-len", "8",
                                   "--ul-weighting", "uniform", "--label-smoothing", "0", "--ul-count-eos")
    sample = H.make_sample(task, H.PAIRS)
    model.train()
    loss1, size, log1 = crit(model, sample)
    assert log1["ul_tokens"] == 0 and torch.equal(loss1, log1["mle_loss"])  # window not full yet
    loss2, size, log2 = crit(model, sample)
    # this untrained model answers every source with EOS at once: counted (--ul-count-eos), the
    # end symbol is over-used (6/6 of the generated tokens in the window, 6/24 of the human ones)
    # and is the only candidate; its 3 occurrences are penalised with weight 1 (uniform)
    d = task.target_dictionary
    assert crit.generated.total.sum() == 6 and crit.generated.total[d.eos()] == 6
    assert log2["ul_candidates"] == 1 and log2["ul_tokens"] == 3 and size == 12
    p_eos = H.teacher_forced_probs(model, sample, _eos_responses(sample, d), d)
    ul_loss = float(-torch.log1p(-p_eos).sum())  # sum over the 3 responses of -log(1 - p(EOS))
    mle = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.0)(model, sample)[0]
    assert float(log2["ul_loss"]) == pytest.approx(ul_loss, rel=1e-5)
    # alpha 10, averaged over the 3 penalised tokens, times sample_size 12
    assert loss2.item() == pytest.approx(mle.item() + 10 * ul_loss / 3 * 12, rel=1e-5)
    assert model.training  # generation ran in eval mode and the mode was restored
    loss2.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unlikelihood_penalises_each_over_used_generated_position(tmp_path: Path) -> None:
    """Responses of 4 tokens (EOS silenced): every generated token is one the human targets never
    use, so every position is penalised, each with -log(1 - p(y_t | x, y_<t)) at its own prefix."""
    task, model, crit = _criterion(tmp_path, "--ul-window", "1", "--ul-alpha", "10", "--ul-max-len", "4",
                                   "--ul-weighting", "uniform", "--label-smoothing", "0")
    d = task.target_dictionary
    _silenced_eos(model, d)
    sample = H.make_sample(task, H.PAIRS)
    model.eval()
    gen = H.greedy_reference(model, sample, 4, d)
    assert gen.shape == (3, 4) and not gen.eq(d.eos()).any()
    human = set(sample["target"].flatten().tolist())
    assert not human & set(gen.flatten().tolist())  # no generated word is a target word
    model.train()
    loss, size, log = crit(model, sample)
    assert log["ul_tokens"] == 12 and log["ul_candidates"] == len(set(gen.flatten().tolist()))
    ul_loss = float(-torch.log1p(-H.teacher_forced_probs(model, sample, gen, d)).sum())
    mle = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.0)(model, sample)[0]
    assert float(log["ul_loss"]) == pytest.approx(ul_loss, rel=1e-5)
    assert loss.item() == pytest.approx(mle.item() + 10 * ul_loss / 12 * size, rel=1e-5)


def test_response_window_frequency() -> None:
    w = ul.ResponseWindow(size=2)
    w.add([[1, 2], [1, 2], [3]])
    assert w.frequent([[1, 2], [3], [4]], ratio=0.5) == [True, False, False]  # 2/3 > 0.5, 1/3 not
    w.add([[3], [3]])
    w.add([[5]])  # the first batch leaves the window: [3] x2 and [5]
    assert w.frequent([[1, 2], [3]], ratio=0.5) == [False, True]
    assert w.responses == 3


def test_sequence_log_likelihood() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    got = ul.sequence_log_likelihood(logits, torch.tensor([[1, 0]]), torch.tensor([[True, False]]))
    assert got.tolist() == [pytest.approx(math.log(3 / 4))]


def test_negative_training_penalises_frequent_generations(tmp_path: Path) -> None:
    data = H.make_data_dir(tmp_path / "data")
    cfg = H.make_cfg(data, ["--criterion", "negative_training", "--nt-ratio", "0.01", "--nt-max-len", "6",
                            "--label-smoothing", "0"])
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    crit = task.build_criterion(cfg.criterion)
    sample = H.make_sample(task, H.PAIRS)
    model.train()
    loss, _, log = crit(model, sample)
    # the untrained model answers every source with [EOS]; with a 1% threshold every response of
    # a first batch of 3 is frequent (share 3/3); the negative term is sum_b log p([EOS] | source_b)
    assert crit.window.responses == 3 and log["nt_negatives"] == 3
    eos = _eos_responses(sample, task.target_dictionary)
    log_likelihood = float(torch.log(H.teacher_forced_probs(model, sample, eos, task.target_dictionary)).sum())
    mle = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.0)(model, sample)[0]
    assert float(log["nt_loss"]) == pytest.approx(log_likelihood, rel=1e-5)
    assert loss.item() == pytest.approx(mle.item() + log_likelihood, rel=1e-5)
    model.eval()
    loss_eval, _, log_eval = crit(model, sample)
    assert log_eval["nt_negatives"] == 0 and torch.equal(loss_eval, log_eval["mle_loss"])


def test_negative_training_sums_the_log_likelihood_of_each_frequent_response(tmp_path: Path) -> None:
    """Responses of 4 tokens (EOS silenced), all frequent: the negative term is
    sum_b sum_t log p(y_bt | x_b, y_b<t), each token at its own prefix."""
    data = H.make_data_dir(tmp_path / "data")
    cfg = H.make_cfg(data, ["--criterion", "negative_training", "--nt-ratio", "0.01", "--nt-max-len", "4",
                            "--label-smoothing", "0"])
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = _silenced_eos(task.build_model(cfg.model), task.target_dictionary)
    crit = task.build_criterion(cfg.criterion)
    sample = H.make_sample(task, H.PAIRS)
    d = task.target_dictionary
    model.eval()
    gen = H.greedy_reference(model, sample, 4, d)
    assert gen.shape == (3, 4) and not gen.eq(d.eos()).any()
    model.train()
    loss, _, log = crit(model, sample)
    assert log["nt_negatives"] == 3
    log_likelihood = float(torch.log(H.teacher_forced_probs(model, sample, gen, d)).sum())
    mle = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.0)(model, sample)[0]
    assert float(log["nt_loss"]) == pytest.approx(log_likelihood, rel=1e-5)
    assert loss.item() == pytest.approx(mle.item() + log_likelihood, rel=1e-5)


@pytest.mark.parametrize("count_eos", [False, True])
def test_end_symbol_is_counted_only_with_ul_count_eos(tmp_path: Path, count_eos: bool) -> None:
    task, model, crit = _criterion(tmp_path, "--ul-window", "1", "--ul-max-len", "8",
                                   *(["--ul-count-eos"] if count_eos else []))
    sample = H.make_sample(task, H.PAIRS)
    model.train()
    crit(model, sample)
    d = task.target_dictionary
    assert crit.human.total[d.pad()] == 0 and crit.generated.total[d.pad()] == 0
    n_targets = sample["target"].size(0)  # every target ends with EOS
    assert crit.human.total[d.eos()].item() == (n_targets if count_eos else 0)
    assert (crit.generated.total[d.eos()].item() > 0) == count_eos
