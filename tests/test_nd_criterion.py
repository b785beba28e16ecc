"""Criterion ``negative_distillation`` on tiny in-process fairseq Transformers, the attention
capture it relies on, and one fairseq-train run with --user-dir."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils, tasks
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from fairseq_plugins.criterions.negative_distillation import NegativeDistillationCriterion
from informative_dialogue.nd import losses as nd
from informative_dialogue.nd import soft_unlikelihood as su
from fairseq_plugins.models.capture import AttentionScoreCapture, attention_mask, greedy_decode, output_logits
from tests import nd_helpers as H
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("nd")
    teacher_path = H.make_teacher(tmp)
    data = H.make_data_dir(tmp / "student")
    cfg = H.make_cfg(data)
    return tmp, teacher_path, data, cfg, tasks.setup_task(cfg.task)


def nd_criterion(data: Path, teacher_path: Path, *extra: str):
    """Through fairseq's command-line parsing, as fairseq-train builds it."""
    cfg = H.make_cfg(data, ["--criterion", "negative_distillation", "--teacher-path", str(teacher_path), *extra])
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    return task, model, task.build_criterion(cfg.criterion)


def direct(setup, teacher_path=None, **kwargs):
    """The same, constructed directly (faster): kwargs are the config's field names."""
    _, default_teacher, _, cfg, task = setup
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    crit = NegativeDistillationCriterion(task, teacher_path=str(teacher_path or default_teacher), **kwargs)
    return task, model, crit


def test_teacher_is_frozen_hidden_and_gets_no_gradient(setup) -> None:
    _, teacher_path, data, _, _ = setup
    task, model, crit = nd_criterion(data, teacher_path, "--nd-alpha-schedule", "fixed", "--nd-alpha", "0.5")
    assert isinstance(crit, NegativeDistillationCriterion)
    assert list(crit.parameters()) == [] and crit.state_dict() == {}
    assert all(not p.requires_grad for p in crit.teacher.parameters())
    model.train()
    loss, sample_size, log = crit(model, H.make_sample(task, H.PAIRS))
    loss.backward()
    assert all(p.grad is None for p in crit.teacher.parameters())
    assert not crit.teacher.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert sample_size == log["ntokens"] == 12  # 9 words + 3 EOS
    for key in ("nd_pred", "nd_hid", "nd_att"):
        assert float(log[key]) > 0
    # the teacher's weights are the checkpoint's, not the student's
    saved = torch.load(teacher_path, weights_only=False)["model"]
    name, param = next(iter(crit.teacher.named_parameters()))
    assert torch.equal(param, saved[name])


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_alpha_zero_equals_plain_mle_loss_and_gradients(setup, eps: float) -> None:
    task, model, crit = direct(setup, nd_alpha_schedule="fixed", nd_alpha=0.0, label_smoothing=eps)
    sample = H.make_sample(task, H.PAIRS)
    ref = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=eps)
    model.train()  # dropout is 0 in the tiny config, so both passes see the same network
    loss_nd, size_nd, _ = crit(model, sample)
    loss_nd.backward()
    grads_nd = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss_ref, size_ref, _ = ref(model, sample)
    loss_ref.backward()
    assert size_nd == size_ref
    assert torch.equal(loss_nd, loss_ref)
    for g_nd, p in zip(grads_nd, model.parameters()):
        assert torch.equal(g_nd, p.grad)


@pytest.mark.parametrize("terms", ["pred,hid,att", "hid,att"])
def test_loss_equals_eq13_from_the_pure_functions(setup, terms: str) -> None:
    """All terms, and without L_pred (where the teacher runs without its output projection)."""
    task, model, crit = direct(setup, nd_alpha_schedule="fixed", nd_alpha=0.3, label_smoothing=0.0,
                               nd_temperature=2.0, nd_terms=terms)
    sample = H.make_sample(task, H.PAIRS)
    loss, sample_size, log = crit(model, sample)
    with AttentionScoreCapture(model.decoder) as cs:
        out_s = model(**sample["net_input"])
    with torch.no_grad(), AttentionScoreCapture(crit.teacher.decoder) as ct:
        out_t = crit.teacher(**sample["net_input"])
    target = sample["target"]
    mask = target.ne(1)
    mle = torch.nn.functional.cross_entropy(out_s[0].view(-1, out_s[0].size(-1)), target.view(-1),
                                            ignore_index=1, reduction="sum")
    pred = su.soft_unlikelihood(out_s[0], out_t[0], mask, temperature=2.0)
    hid = [nd.mrse(s, t, mask.t()[:, :, None]) for s, t in zip(out_s[1]["inner_states"][1:],
                                                               out_t[1]["inner_states"][1:])]
    amask = attention_mask("self", mask, sample["net_input"]["prev_output_tokens"].eq(1))
    att = [nd.mrse(s, t, amask) for s, t in zip(cs.scores["self"], ct.scores["self"])]
    assert len(hid) == len(att) == 2
    if "pred" not in terms:
        pred = 0.0
    expected = 0.7 * mle + 0.3 * (pred + sample_size * (sum(hid) + sum(att)))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_temperature_one_fuses_mle_and_l_pred_with_identical_loss_and_gradients(setup) -> None:
    """At t = 1 the criterion computes the MLE term and L_pred together from the student's
    log-probabilities; loss and gradients are those of Eq. 13 built from fairseq's criterion
    and the logits form of L_pred (to float32 rounding: the gradient's sums run in another
    order)."""
    task, model, crit = direct(setup, nd_alpha_schedule="fixed", nd_alpha=0.4, label_smoothing=0.1,
                               nd_terms="pred")
    sample = H.make_sample(task, H.PAIRS)
    model.train()
    loss, sample_size, log = crit(model, sample)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_s = model(**sample["net_input"])
    with torch.no_grad():
        out_t = crit.teacher(**sample["net_input"])
    ref_crit = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    mle, _ = ref_crit.compute_loss(model, out_s, sample, reduce=True)
    pred = su.soft_unlikelihood(out_s[0], out_t[0], sample["target"].ne(1), temperature=1.0)
    expected = 0.6 * mle + 0.4 * pred
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert float(log["nd_pred"]) == pytest.approx(pred.item(), rel=1e-6)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6), (g - p.grad).abs().max()


def test_terms_can_be_switched_off(setup) -> None:
    task, model, crit = direct(setup, nd_alpha_schedule="fixed", nd_alpha=0.5, nd_terms="hid")
    _, _, log = crit(model, H.make_sample(task, H.PAIRS))
    assert log["nd_pred"] == 0.0 and log["nd_att"] == 0.0 and float(log["nd_hid"]) > 0
    with pytest.raises(ValueError, match="unknown term"):
        direct(setup, nd_terms="pred,foo")


def test_encoder_decoder_attention_option(setup) -> None:
    sample = None
    values = {}
    for kind in ("self", "encoder", "both"):
        task, model, crit = direct(setup, nd_alpha_schedule="fixed", nd_alpha=1.0, nd_terms="att", nd_attention=kind)
        sample = sample or H.make_sample(task, H.PAIRS)
        values[kind] = float(crit(model, sample)[2]["nd_att"])
    assert values["both"] == pytest.approx(values["self"] + values["encoder"], rel=1e-6)
    assert values["self"] != pytest.approx(values["encoder"])


def _one_hot_unlikelihood(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """-sum log(1 - p(token)) over the masked positions, written out (no clamp needed here)."""
    p = torch.softmax(logits.double(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return float(-(torch.log1p(-p) * mask).sum())


def test_hard_targets_are_the_teachers_greedy_response_not_the_gold_one(setup) -> None:
    task, model, crit = direct(setup, nd_alpha_schedule="fixed", nd_alpha=0.5, nd_target="hard", nd_terms="pred",
                               label_smoothing=0.0)
    sample = H.make_sample(task, H.PAIRS)
    d, target = task.target_dictionary, sample["target"]
    loss, _, log = crit(model, sample)
    greedy = H.greedy_reference(crit.teacher, sample, target.size(1), d)
    real = target.ne(d.pad())
    assert not torch.equal(greedy[real], target[real])  # the test can tell the two apart
    with torch.no_grad():
        logits = model(**sample["net_input"])[0]
    from_teacher = _one_hot_unlikelihood(logits, greedy, real & greedy.ne(d.pad()))
    from_gold = _one_hot_unlikelihood(logits, target, real)
    assert from_teacher != pytest.approx(from_gold, rel=1e-3)
    assert float(log["nd_pred"]) == pytest.approx(from_teacher, rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * float(log["mle_loss"]) + 0.5 * from_teacher, rel=1e-5)
    assert torch.equal(crit._negative_tokens(sample, crit.teacher, target), greedy)


def test_random_targets_come_from_the_file(setup, tmp_path: Path) -> None:
    responses = tmp_path / "dn.tgt"
    responses.write_text("a b c\nd e\n")
    task, model, crit = direct(setup, nd_alpha_schedule="fixed", nd_alpha=0.5, nd_target="random", nd_terms="pred",
                               nd_random_targets=str(responses))
    sample = H.make_sample(task, H.PAIRS)
    d = task.target_dictionary
    neg = crit._negative_tokens(sample, crit.teacher, sample["target"])
    assert neg.shape == sample["target"].shape
    allowed = {tuple(d.encode_line(s, add_if_not_exist=False).tolist()) for s in ("a b c", "d e")}
    for row in neg.tolist():
        toks = tuple(t for t in row if t != d.pad())
        assert any(a[: len(toks)] == toks for a in allowed)
    crit._random_calls -= 1  # the forward pass draws the same responses again
    _, _, log = crit(model, sample)
    with torch.no_grad():
        logits = model(**sample["net_input"])[0]
    real = sample["target"].ne(d.pad())
    assert float(log["nd_pred"]) == pytest.approx(_one_hot_unlikelihood(logits, neg, real & neg.ne(d.pad())), rel=1e-5)


@pytest.mark.parametrize("sentence_avg, sample_size", [(False, 12), (True, 3)])
def test_mrse_terms_scale_with_the_sample_size(setup, sentence_avg: bool, sample_size: int) -> None:
    """Each MRSE (a mean) is multiplied by sample_size before fairseq divides the loss by it:
    target tokens (12), or sentences (3) with --sentence-avg."""
    from fairseq.logging import metrics

    task, model, crit = direct(setup, nd_alpha_schedule="fixed", nd_alpha=0.25, nd_terms="hid,att",
                               label_smoothing=0.0, sentence_avg=sentence_avg)
    sample = H.make_sample(task, H.PAIRS)
    loss, size, log = crit(model, sample)
    assert size == sample_size
    with torch.no_grad(), AttentionScoreCapture(model.decoder) as cs:
        out_s = model(**sample["net_input"])
    with torch.no_grad(), AttentionScoreCapture(crit.teacher.decoder) as ct:
        out_t = crit.teacher(**sample["net_input"])
    mask = sample["target"].ne(1)
    hid = sum(nd.mrse(s, t, mask.t()[:, :, None]).item() for s, t in zip(out_s[1]["inner_states"][1:],
                                                                          out_t[1]["inner_states"][1:]))
    amask = attention_mask("self", mask, sample["net_input"]["prev_output_tokens"].eq(1))
    att = sum(nd.mrse(s, t, amask).item() for s, t in zip(cs.scores["self"], ct.scores["self"]))
    mle = torch.nn.functional.cross_entropy(out_s[0].view(-1, out_s[0].size(-1)), sample["target"].view(-1),
                                            ignore_index=1, reduction="sum").item()
    assert loss.item() == pytest.approx(0.75 * mle + 0.25 * sample_size * (hid + att), rel=1e-5)
    assert float(log["nd_hid"]) == pytest.approx(sample_size * hid, rel=1e-5)
    with metrics.aggregate() as agg:  # logged per sample_size: the MRSE sums themselves
        type(crit).reduce_metrics([log])
    assert agg.get_smoothed_values()["nd_att"] == pytest.approx(att, abs=1e-4)


def test_greedy_decode_matches_full_recomputation(setup) -> None:
    task, model, _ = direct(setup)
    sample = H.make_sample(task, H.PAIRS)
    d = task.target_dictionary
    src, lengths = sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"]
    got = greedy_decode(model, src, lengths, 6, bos=d.eos(), eos=d.eos(), pad=d.pad())
    # reference: re-run the whole decoder on the prefix at every step, no incremental state
    prefix = src.new_full((src.size(0), 1), d.eos())
    done = torch.zeros(src.size(0), dtype=torch.bool)
    with torch.no_grad():
        for step in range(got.size(1)):
            logits, _ = model(src, lengths, prefix)
            logits[:, -1, d.pad()] = float("-inf")
            nxt = logits[:, -1].argmax(-1).masked_fill(done, d.pad())
            assert torch.equal(nxt, got[:, step])
            done |= nxt.eq(d.eos())
            prefix = torch.cat([prefix, nxt[:, None]], 1)


def test_output_logits_equal_the_models_full_forward(setup) -> None:
    task, model, _ = direct(setup)
    model.eval()
    sample = H.make_sample(task, H.PAIRS)
    with torch.no_grad():
        full = model(**sample["net_input"])[0]
        features = model(**sample["net_input"], features_only=True)[0]
        got = output_logits(model, features)
    assert got.shape == full.shape and torch.allclose(got, full, atol=1e-6)


@pytest.mark.parametrize("kind", ["self", "encoder"])
def test_captured_scores_equal_fairseq_pre_softmax_scores(setup, kind: str) -> None:
    task, model, _ = direct(setup)
    sample = H.make_sample(task, H.PAIRS)
    calls = []
    modules = [getattr(layer, "self_attn" if kind == "self" else "encoder_attn") for layer in model.decoder.layers]
    handles = [m.register_forward_pre_hook(lambda mod, a, kw: calls.append((mod, kw)), with_kwargs=True)
               for m in modules]
    with torch.no_grad():
        plain = model(**sample["net_input"])[0]
        with AttentionScoreCapture(model.decoder, kind) as cap:
            captured_out = model(**sample["net_input"])[0]
    for h in handles:
        h.remove()
    assert torch.equal(plain, captured_out)  # capturing changes nothing
    assert len(cap.scores[kind]) == 2
    for (module, kwargs), scores in zip(calls[2:], cap.scores[kind]):  # calls[:2]: the plain pass
        kw = dict(kwargs, before_softmax=True, need_weights=True)
        # fairseq's non-fused path returns the masked pre-softmax scores with before_softmax=True
        ref = _fairseq_scores(module, kw)
        bsz, heads, tgt_len, src_len = scores.shape
        ref = ref.view(bsz, heads, tgt_len, src_len)
        finite = torch.isfinite(ref)
        assert finite.any()
        assert torch.allclose(scores[finite], ref[finite], atol=1e-5)
        # the masked elements are exactly those attention_mask excludes (for real target rows)
        tmask = sample["target"].ne(1)
        key_pad = (sample["net_input"]["prev_output_tokens"].eq(1) if kind == "self"
                   else sample["net_input"]["src_tokens"].eq(1))
        valid = attention_mask(kind, tmask, key_pad).expand_as(ref)
        assert torch.equal(valid, finite & tmask[:, None, :, None])


def _fairseq_scores(module, kwargs):
    """MultiheadAttention's own pre-softmax scores: ``before_softmax=True`` on its non-fused
    path (skip_embed_dim_check forces that path without changing the computation)."""
    saved = module.skip_embed_dim_check
    module.skip_embed_dim_check = True
    try:
        with torch.no_grad():
            scores, _ = module(**kwargs)
    finally:
        module.skip_embed_dim_check = saved
    return scores


def _run(cmd, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_fairseq_train_cli_saves_no_teacher(tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.mkdir()
    lines_src = ["a b c d", "e f g", "h i j", "k l m n o", "p q", "r s t a b"] * 4
    lines_tgt = ["e f", "g h i", "j k", "l m", "n o p q", "r s"] * 4
    for split in ("train", "valid"):
        (text / f"{split}.src").write_text("\n".join(lines_src) + "\n")
        (text / f"{split}.tgt").write_text("\n".join(lines_tgt) + "\n")
    bin_dir = H.binarize(text, tmp_path / "bin")
    cfg = H.make_cfg(bin_dir)
    torch.manual_seed(11)
    _, teacher = H.build(cfg)
    teacher_path = H.save_checkpoint(teacher, cfg, tmp_path / "teacher" / "checkpoint_best.pt")
    save_dir = tmp_path / "student"
    proc = _run(["fairseq-train", str(bin_dir), "--user-dir", str(REPO_ROOT / "fairseq_plugins"),
                 "--task", "knowledge_dialog", "--source-lang", "src", "--target-lang", "tgt", *H.TINY_ARCH,
                 "--criterion", "negative_distillation", "--teacher-path", str(teacher_path),
                 "--nd-gamma", "2", "--optimizer", "adam", "--lr", "0.001", "--max-tokens", "64",
                 "--max-update", "3", "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--num-workers", "0",
                 "--log-format", "simple", "--log-interval", "1", "--seed", "1", "--cpu"])
    log = proc.stdout + proc.stderr
    assert "nd_alpha" in log and "nd_hid" in log and "nd_step" in log
    state = checkpoint_utils.load_checkpoint_to_cpu(str(save_dir / "checkpoint_last.pt"))
    assert state["criterion"] is None
    # knowledge_dialog stores the dictionaries' symbols in the checkpoint (for its use as a teacher)
    from fairseq.data import Dictionary

    symbols = state["task_state"]["dictionary_symbols"]
    assert symbols["source"] == symbols["target"] == Dictionary.load(str(bin_dir / "dict.src.txt")).symbols
    student_keys = set(state["model"])
    teacher_keys = set(torch.load(teacher_path, weights_only=False)["model"])
    assert student_keys == teacher_keys  # same architecture: exactly one model's parameters, no extra copy
    assert not any("teacher" in k for k in student_keys)
    assert state["optimizer_history"][-1]["num_updates"] == 3
    # the optimizer holds exactly the student's parameters (shared embeddings once), no teacher's
    _, student = H.build(cfg)
    n_student = sum(p.numel() for p in student.parameters())
    moments = [s["exp_avg"].numel() for s in state["last_optimizer_state"]["state"].values()]
    assert len(moments) == len(list(student.parameters())) and sum(moments) == n_student
