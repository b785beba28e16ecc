"""Criterion ``knowledge_internalization`` (Eq. 2–4) on tiny in-process fairseq models: exact
hinge values, λ = 0 equals label_smoothed_cross_entropy, padding-side invariance, negative
sampling, input checks (the LSTM encoder and fairseq's Trainer: test_ki_criterion_training.py;
the start-up check of a split's ids: test_ki_criterion_startup.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import torch
from fairseq import tasks
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.data import LanguagePairDataset, data_utils

from fairseq_plugins.criterions.knowledge_internalization import (
    KnowledgeInternalizationCriterion,
    load_knowledge_table,
)
from informative_dialogue.ki import loss as ki
from fairseq_plugins.models.encoder_capture import EncoderOutputCapture
from tests import nd_helpers as H

DK = 4  # knowledge embedding size of the test table
TABLE_ROWS = 7  # ids 0..6
# (source, target, knowledge id per source word)
ITEMS = [
    ("a b c d", "e f g", [1, 0, 2, 2]),
    ("h i", "j k l m n", [3, 4]),
    ("o p q r s t", "a", [0, 5, 1, 0, 6, 3]),
]
LSTM_ARCH = [
    "--arch", "lstm", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "16", "--encoder-hidden-size", "8", "--encoder-bidirectional",
    "--decoder-embed-dim", "16", "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16",
    "--dropout", "0.0",
]


def write_table(path: Path, rows: int = TABLE_ROWS, dim: int = DK, seed: int = 0, dtype=np.float16) -> Path:
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(rows, dim)).astype(dtype)
    table[0] = 0
    np.save(path, table)
    return path


def make_setup(tmp: Path):
    """``(tmp, data folder, knowledge table, cfg, task)`` of the tests (the fixture ``setup``)."""
    data = H.make_data_dir(tmp / "data")
    table = write_table(tmp / "table.npy")
    cfg = H.make_cfg(data)
    return tmp, data, table, cfg, tasks.setup_task(cfg.task)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    return make_setup(tmp_path_factory.mktemp("ki"))


def criterion(setup, **kwargs) -> KnowledgeInternalizationCriterion:
    _, _, table, _, task = setup
    kwargs.setdefault("ki_encoder_dim", 16)
    kwargs.setdefault("ki_projection_dim", 8)
    return KnowledgeInternalizationCriterion(task, ki_knowledge_table=str(table), **kwargs)


def model_of(task, cfg, seed: int = 0):
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    model.train()  # dropout 0: deterministic
    return model


def make_batch(task, items: Sequence[tuple], left_pad: bool = True, with_knowledge: bool = True) -> dict:
    """Collated batch; ``sample["knowledge"]`` padded on the source's side, 0 at EOS and padding."""
    d = task.source_dictionary
    src = [d.encode_line(s, add_if_not_exist=False).long() for s, _, _ in items]
    tgt = [task.target_dictionary.encode_line(t, add_if_not_exist=False).long() for _, t, _ in items]
    ds = LanguagePairDataset(src, [len(x) for x in src], d, tgt, [len(x) for x in tgt], task.target_dictionary,
                             left_pad_source=left_pad)
    sample = ds.collater([ds[i] for i in range(len(items))])
    if with_knowledge:
        labels = [torch.tensor(items[i][2] + [0]) for i in sample["id"].tolist()]
        sample["knowledge"] = data_utils.collate_tokens(labels, 0, left_pad=left_pad)
    return sample


# --- the pure functions and the hand-computed hinge ------------------------------------------------------
def hand_criterion(setup, tmp_path: Path, normalize: bool) -> KnowledgeInternalizationCriterion:
    table = np.array([[0, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    np.save(tmp_path / "hand.npy", table)
    crit = KnowledgeInternalizationCriterion(setup[4], ki_knowledge_table=str(tmp_path / "hand.npy"),
                                             ki_encoder_dim=2, ki_projection_dim=2, ki_margin=0.5,
                                             ki_no_normalize=not normalize)
    with torch.no_grad():
        for lin in (crit.f1, crit.f2):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    return crit


# states (2 sentences, right-padded), labels, and the negatives the fake sampler returns
HAND_STATES = torch.tensor([[[2.0, 0.0], [5.0, 5.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, 4.0], [9.0, 9.0]]])
HAND_VALID = torch.tensor([[True, True, True], [True, True, False]])
HAND_LABELS = torch.tensor([[1, 0, 3], [2, 1, 0]])
HAND_NEG = torch.tensor([[2], [3], [0], [1]])  # labelled tokens t0..t3 -> t2, t3, t0, t1


def fixed_sampler(ids, sentence, num=1, **_):
    assert ids.tolist() == [1, 3, 2, 1] and sentence.tolist() == [0, 0, 1, 1]
    return HAND_NEG.clone(), torch.ones(4, dtype=torch.bool)


@pytest.mark.parametrize("normalize, expected", [(False, 3.0), (True, 1.4)])
def test_hand_computed_hinge(setup, tmp_path: Path, monkeypatch, normalize: bool, expected: float) -> None:
    # no normalisation (m = 0.5): t0 max(0, .5-2+0)=0; t1 max(0, .5-.8+0)=0 (neg t3: K1);
    # t2 .5-1+1=.5 (neg t0: K1); t3 .5-3+(3,4).(.6,.8)=2.5 (neg t1: K3) -> 3.0.
    # normalised: t0 .5-1+0 ->0; t1 .5-.8+0 ->0; t2 .5-.7071+.7071=.5; t3 .5-.6+1=.9 -> 1.4.
    monkeypatch.setattr(ki, "sample_negatives", fixed_sampler)
    crit = hand_criterion(setup, tmp_path, normalize)
    loss, used, labelled = crit.ki_loss(HAND_STATES, HAND_VALID, HAND_LABELS, HAND_VALID)
    assert (used, labelled) == (4, 4)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # the state of the token without knowledge (5, 5) and the padded state play no part
    states = HAND_STATES.clone()
    states[0, 1] = torch.tensor([-100.0, 7.0])
    states[1, 2] = torch.tensor([1e4, -1e4])
    assert crit.ki_loss(states, HAND_VALID, HAND_LABELS, HAND_VALID)[0].item() == pytest.approx(expected, abs=1e-6)


def test_hinge_averages_over_negatives() -> None:
    got = ki.hinge(torch.tensor([1.0]), torch.tensor([[0.8, 0.2]]), margin=0.5)
    assert got.tolist() == pytest.approx([(0.3 + 0.0) / 2])
    h = torch.tensor([[1.0, 0.0]])
    k_pos = torch.tensor([[0.0, 1.0]])
    k_neg = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # scores 1 and 0, pos 0
    assert ki.ki_token_losses(h, k_pos, k_neg, 0.5).tolist() == pytest.approx([(1.5 + 0.5) / 2])


def test_align_by_order_pairs_left_padded_labels_with_right_padded_states() -> None:
    states = torch.arange(12.0).view(2, 3, 2)  # row 1: 2 real states at positions 0, 1 (right-padded)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    labels = torch.tensor([[7, 8, 9], [0, 5, 6]])  # row 1 left-padded
    lvalid = torch.tensor([[True, True, True], [False, True, True]])
    h, ids, sent = ki.align_by_order(states, valid, labels, lvalid)
    assert ids.tolist() == [7, 8, 9, 5, 6] and sent.tolist() == [0, 0, 0, 1, 1]
    assert torch.equal(h[3], states[1, 0]) and torch.equal(h[4], states[1, 1])
    with pytest.raises(ValueError, match="row 1: the encoder has 2 non-pad states but the labels cover 3"):
        ki.align_by_order(states, valid, labels, torch.ones(2, 3, dtype=torch.bool))


def brute_force_valid(ids: List[int], sent: List[int], i: int) -> List[int]:
    return [j for j in range(len(ids)) if sent[j] != sent[i] and ids[j] != ids[i]]


@pytest.mark.parametrize("max_rounds", [8, 0])  # 0: every draw through the exact fallback
def test_negatives_valid_and_uniform(max_rounds: int) -> None:
    ids = torch.tensor([1, 2, 2, 1, 2, 3, 1, 1, 4, 2])
    sent = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    ids_l, sent_l = ids.tolist(), sent.tolist()
    counts = ki.count_negatives(ids, sent)
    assert counts.tolist() == [len(brute_force_valid(ids_l, sent_l, i)) for i in range(10)]
    gen = torch.Generator().manual_seed(0)
    draws = 600
    neg, has = ki.sample_negatives(ids, sent, num=draws, max_rounds=max_rounds, generator=gen)
    assert has.all() and neg.shape == (10, draws)
    assert (ids[neg] != ids[:, None]).all()  # never the positive id
    assert (sent[neg] != sent[:, None]).all()  # never the same sentence
    for i in range(10):  # uniform over the valid tokens (tolerance ~6 sigma)
        valid = brute_force_valid(ids_l, sent_l, i)
        freq = torch.bincount(neg[i], minlength=10)[valid].double() / draws
        p = 1.0 / len(valid)
        assert (freq - p).abs().max() < 6 * (p * (1 - p) / draws) ** 0.5 + 1e-9
    # a token whose every other-sentence token carries its own id, and a one-sentence batch
    neg, has = ki.sample_negatives(torch.tensor([1, 2, 1]), torch.tensor([0, 0, 1]))
    assert has.tolist() == [False, True, True] and neg[1:, 0].tolist() == [2, 1]
    neg, has = ki.sample_negatives(torch.tensor([1, 2, 3]), torch.tensor([0, 0, 0]), num=2)
    assert not has.any() and neg.shape == (3, 2)


def test_sampling_uses_the_global_rng() -> None:
    ids, sent = torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([0, 0, 1, 1, 2, 2])
    torch.manual_seed(5)
    a = ki.sample_negatives(ids, sent, num=3)[0]
    torch.manual_seed(5)
    assert torch.equal(a, ki.sample_negatives(ids, sent, num=3)[0])


# --- the criterion on a tiny transformer ------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_lambda_zero_equals_label_smoothed_cross_entropy(setup, eps: float) -> None:
    _, _, _, cfg, task = setup
    model = model_of(task, cfg)
    crit = criterion(setup, ki_lambda=0.0, label_smoothing=eps)
    ref = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=eps)
    sample = make_batch(task, ITEMS)
    loss, size, log = crit(model, sample)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert float(log["ki_loss"]) > 0  # still computed and logged
    model.zero_grad()
    loss_ref, size_ref, log_ref = ref(model, sample)
    loss_ref.backward()
    assert size == size_ref
    assert torch.equal(loss, loss_ref) and torch.equal(log["nll_loss"], log_ref["nll_loss"])
    for g, p in zip(grads, model.parameters()):
        assert torch.equal(g, p.grad)
    assert all(p.grad is None for p in crit.parameters())


def test_full_loss_is_mle_plus_lambda_ki_and_trains_encoder_and_heads(setup) -> None:
    _, _, _, cfg, task = setup
    model = model_of(task, cfg)
    crit = criterion(setup, ki_lambda=0.7, ki_negatives=2)
    sample = make_batch(task, ITEMS)
    torch.manual_seed(1)
    loss, _, log = crit(model, sample)
    mle = criterion(setup, ki_lambda=0.0)(model, sample)[0]
    assert loss.item() == pytest.approx(mle.item() + 0.7 * float(log["ki_loss"]), rel=1e-6)
    # recompute L_KI from the pure functions with the same draw
    with torch.no_grad(), EncoderOutputCapture(model.encoder) as cap:
        model(**sample["net_input"])
    states, valid = cap.states()
    h, ids, sent = ki.align_by_order(states, valid, sample["knowledge"], sample["net_input"]["src_tokens"].ne(1))
    h, ids, sent = h[ids != 0], ids[ids != 0], sent[ids != 0]
    torch.manual_seed(1)
    neg, has = ki.sample_negatives(ids, sent, 2)
    table = torch.from_numpy(np.load(setup[2]).astype(np.float32))
    with torch.no_grad():
        k = ki.project(table[ids], crit.f2)
        expected = ki.ki_token_losses(ki.project(h, crit.f1), k, k[neg], 0.5).sum()
    assert float(log["ki_loss"]) == pytest.approx(expected.item(), rel=1e-6)
    assert log["ki_labelled"] == 9 and log["ki_tokens"] == 9 and log["ki_no_negative"] == 0
    assert log["src_tokens"] == 12 and log["ki_absent"] == 0
    loss.backward()
    assert crit.f1.weight.grad.abs().sum() > 0 and crit.f2.weight.grad.abs().sum() > 0
    assert model.encoder.layers[0].fc1.weight.grad.abs().sum() > 0


def test_tokens_without_knowledge_contribute_nothing(setup) -> None:
    _, _, _, cfg, task = setup
    model = model_of(task, cfg)
    crit = criterion(setup)
    sample = make_batch(task, ITEMS)
    mle = criterion(setup, ki_lambda=0.0)(model, sample)[0]
    # all-zero knowledge: KI term 0, loss = MLE
    zero = dict(sample, knowledge=torch.zeros_like(sample["knowledge"]))
    loss, _, log = crit(model, zero)
    assert float(log["ki_loss"]) == 0.0 and log["ki_labelled"] == 0 and torch.equal(loss, mle)
    # changing the source word of an unlabelled token changes the states of the others (attention),
    # so compare on the hinge level: unlabelled states are dropped before anything is computed
    states = torch.randn(2, 3, 16)
    valid = torch.ones(2, 3, dtype=torch.bool)
    labels = torch.tensor([[1, 0, 2], [3, 0, 4]])
    torch.manual_seed(2)
    a = crit.ki_loss(states, valid, labels, valid)[0]
    states[:, 1] = 1e3
    torch.manual_seed(2)
    assert crit.ki_loss(states, valid, labels, valid)[0].item() == pytest.approx(a.item(), rel=1e-6)
    # missing knowledge (e.g. a validation split without alignments): KI 0, counted
    no_k = make_batch(task, ITEMS, with_knowledge=False)
    loss, _, log = crit(model, no_k)
    assert torch.equal(loss, mle) and log["ki_absent"] == 3 and log["ki_tokens"] == 0


def test_padding_side_invariance(setup) -> None:
    _, _, _, cfg, task = setup
    model = model_of(task, cfg)
    crit = criterion(setup, ki_negatives=3)
    results = []
    for left in (True, False):
        sample = make_batch(task, ITEMS, left_pad=left)
        torch.manual_seed(4)
        loss, _, log = crit(model, sample)
        results.append((loss.item(), float(log["ki_loss"]), float(log["nll_loss"])))
    assert make_batch(task, ITEMS, left_pad=True)["net_input"]["src_tokens"][2, 0] == 1  # really left-padded
    for a, b in zip(*results):
        assert a == pytest.approx(b, rel=1e-5)


def test_one_sentence_batch_has_no_negatives(setup) -> None:
    _, _, _, cfg, task = setup
    model = model_of(task, cfg)
    crit = criterion(setup)
    loss, _, log = crit(model, make_batch(task, ITEMS[:1]))
    assert float(log["ki_loss"]) == 0.0 and log["ki_tokens"] == 0
    assert log["ki_labelled"] == 3 and log["ki_no_negative"] == 3
    loss.backward()  # the heads stay in the graph (zero gradient), as DDP needs
    assert crit.f1.weight.grad is not None and crit.f1.weight.grad.abs().sum() == 0


def test_bad_knowledge_is_a_clear_error(setup) -> None:
    _, _, table, cfg, task = setup
    model = model_of(task, cfg)
    crit = criterion(setup)
    sample = make_batch(task, ITEMS)
    bad = sample["knowledge"].clone()
    bad[0, -2] = TABLE_ROWS
    with pytest.raises(ValueError, match=f"knowledge id 7 out of range: the table {table} has 7 rows"):
        crit(model, dict(sample, knowledge=bad))
    bad[0, -2] = -1
    with pytest.raises(ValueError, match="knowledge id -1 out of range"):
        crit(model, dict(sample, knowledge=bad))
    right = make_batch(task, ITEMS, left_pad=False)["knowledge"]  # padded on the other side
    with pytest.raises(ValueError, match="at a (padding|EOS) position"):
        crit(model, dict(sample, knowledge=right))
    eos = sample["knowledge"].clone()
    eos[:, -1] = 2  # left-padded source: EOS is the last column
    with pytest.raises(ValueError, match="at a EOS position"):
        crit(model, dict(sample, knowledge=eos))
    with pytest.raises(ValueError, match="shape"):
        crit(model, dict(sample, knowledge=sample["knowledge"][:, 1:]))
    with pytest.raises(ValueError, match="encoder states have size 16 but --ki-encoder-dim is 32"):
        criterion(setup, ki_encoder_dim=32)(model, sample)


def test_table_checks(tmp_path: Path) -> None:
    good = write_table(tmp_path / "t.npy", dtype=np.float16)
    table = load_knowledge_table(str(good))
    assert table.dtype == torch.float32 and table.shape == (TABLE_ROWS, DK)
    shifted = np.ones((3, 2), dtype=np.float32)
    np.save(tmp_path / "s.npy", shifted)
    with pytest.raises(ValueError, match="row 0 must be zeros"):
        load_knowledge_table(str(tmp_path / "s.npy"))
    np.save(tmp_path / "v.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="expected a 2-d array"):
        load_knowledge_table(str(tmp_path / "v.npy"))
    np.save(tmp_path / "i.npy", np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="float16/32/64"):
        load_knowledge_table(str(tmp_path / "i.npy"))
    nan = np.zeros((3, 2), dtype=np.float32)
    nan[2, 1] = np.nan
    np.save(tmp_path / "n.npy", nan)
    with pytest.raises(ValueError, match="row 2 holds NaN"):
        load_knowledge_table(str(tmp_path / "n.npy"))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_knowledge_table(str(tmp_path / "missing.npy"))


def test_frozen_and_trainable_table(setup) -> None:
    _, _, _, cfg, task = setup
    frozen = criterion(setup)
    assert set(frozen.state_dict()) == {"f1.weight", "f1.bias", "f2.weight", "f2.bias"}
    assert frozen.knowledge_table.dtype == torch.float32
    trainable = criterion(setup, ki_trainable_table=True)
    assert "knowledge.weight" in trainable.state_dict()
    model = model_of(task, cfg)
    loss, _, _ = trainable(model, make_batch(task, ITEMS))
    loss.backward()
    grad = trainable.knowledge.weight.grad
    assert grad[0].abs().sum() == 0 and grad[1:].abs().sum() > 0


def test_options_through_fairseq_parser(setup) -> None:
    _, data, table, _, _ = setup
    cfg = H.make_cfg(data, ["--criterion", "knowledge_internalization", "--ki-knowledge-table", str(table),
                            "--ki-encoder-dim", "16", "--ki-projection-dim", "4", "--ki-margin", "0.2",
                            "--ki-lambda", "2", "--ki-negatives", "3", "--ki-no-normalize",
                            "--label-smoothing", "0.05"])
    task = tasks.setup_task(cfg.task)
    crit = task.build_criterion(cfg.criterion)
    assert isinstance(crit, KnowledgeInternalizationCriterion)
    assert (crit.margin, crit.lam, crit.num_negatives, crit.normalize, crit.eps) == (0.2, 2.0, 3, False, 0.05)
    assert crit.f1.weight.shape == (4, 16) and crit.f2.weight.shape == (4, DK)
