"""Criterion ``negative_distillation``: MLE plus negative distillation from a frozen negative
teacher (paper: shared/papers/negative_distillation.txt, Eq. 5–16)::

    L = (1 - α) L_mle + α (L_pred + Σ_l L_hid^l + Σ_l L_att^l)

- L_mle: label-smoothed token NLL (appendix A: smoothing 0.1; ``--label-smoothing 0`` = plain NLL).
- L_pred: soft unlikelihood ``-Σ_i Σ_k p_N(k) log(1 - p_S(k))`` with temperature t (Eq. 6–7);
  ``--nd-target hard`` replaces p_N by the one-hot tokens of the teacher's greedy response,
  ``--nd-target random`` by a random response of D_N (Table 9).
- L_hid^l, L_att^l: MRSE ``mean(exp(-(A - B)^2))`` between teacher and student outputs of
  decoder layer l and their pre-softmax attention scores QK^T/sqrt(d_k) (Eq. 8–12); self-attention
  by default, ``--nd-attention encoder|both`` for encoder–decoder attention. Minimising MRSE pushes
  the student's features away from the teacher's (see informative_dialogue/nd/losses.py).
- α: progressive ``λ σ'(β (s - γ))`` (λ = 4, γ = 25600, β = 6/γ, paper §3.2) or fixed
  (``--nd-alpha-schedule fixed --nd-alpha A``, Table 8). ``--nd-terms`` selects the terms (Table 5).

Normalisation: fairseq divides the returned loss by ``sample_size`` (target tokens, or sentences
with ``--sentence-avg``). L_mle and L_pred are sums over target tokens, as in Eq. 1 and 6; each
MRSE is a mean over its elements (Eq. 8), so it is multiplied by ``sample_size`` before being
added: after fairseq's division every term enters as "per token" (MLE, L_pred; per sentence with
``--sentence-avg``) or "per element" (MRSE, with or without it), the balance Eq. 13 states.

The teacher: loaded from ``--teacher-path`` (a fairseq checkpoint of the same architecture,
trained with MLE on D_N, e.g. by examples/dailydialog/train_nd.sh) and checked against the
student task's dictionaries by ``teacher.py`` (one place for every teacher check), checked
against the student's decoder shape on the first forward, frozen (``requires_grad_(False)``),
kept in eval mode and run under ``torch.no_grad()``. It is held in a plain Python attribute, not
as a sub-module, so it is neither in ``criterion.parameters()`` (the optimizer) nor in any state
dict (fairseq saves ``criterion.state_dict()`` only for criteria with parameters), and it is
moved to the student's device and dtype on the first forward.

The training step s: fairseq hands the update number to the task's ``train_step``;
``--task knowledge_dialog`` passes it on through ``set_update_num`` before each training forward
(``_task_contract.py``; after a resume it is the checkpoint's count), validation keeps the last
training update's. s counts completed updates (0 during the first). The criterion refuses tasks
that do not pass it on. Logged: ``nd_alpha``, ``nd_step``, each term.
"""
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II
from torch import Tensor

from fairseq_plugins.criterions._mle import batch_counts, reduce_mle_metrics, target_and_sample_size
from fairseq_plugins.criterions._task_contract import passes_update_num
from fairseq_plugins.criterions.teacher import check_architecture, load_teacher
from fairseq_plugins.models.capture import attention_mask, forward_with_scores, greedy_decode, output_logits
from informative_dialogue.nd import losses as nd
from informative_dialogue.nd import soft_unlikelihood as su

logger = logging.getLogger(__name__)

TERMS = ("pred", "hid", "att")


@dataclass
class NegativeDistillationConfig(FairseqDataclass):
    teacher_path: str = field(
        default="",
        metadata={"help": "checkpoint of the negative teacher (same architecture and dictionaries as the student)"},
    )
    label_smoothing: float = field(
        default=0.1, metadata={"help": "label smoothing of L_mle (paper appendix A: 0.1; 0 = plain NLL)"}
    )
    nd_alpha_schedule: ChoiceEnum(["progressive", "fixed"]) = field(
        default="progressive",
        metadata={"help": "progressive: alpha = lambda * sigma'(beta (step - gamma)) (Eq. 15-16); fixed: --nd-alpha"},
    )
    nd_alpha: float = field(
        default=0.33,
        metadata={"help": "alpha of the fixed schedule (Table 8: the mean of the progressive alpha over "
                  "training; 0.33 = that mean over 2*gamma steps with the default lambda, beta, gamma)"},
    )
    nd_lambda: float = field(default=4.0, metadata={"help": "lambda of Eq. 15 (peak alpha = lambda / 4)"})
    nd_gamma: float = field(default=25600.0, metadata={"help": "gamma of Eq. 16: the step of the peak"})
    nd_beta: Optional[float] = field(
        default=None, metadata={"help": "beta of Eq. 16 (the width); default 6 / gamma"}
    )
    nd_temperature: float = field(default=1.0, metadata={"help": "temperature t of Eq. 7, on both softmaxes"})
    nd_terms: str = field(
        default="pred,hid,att",
        metadata={"help": "comma-separated ND terms to use, of pred (Eq. 6), hid (Eq. 9), att (Eq. 12); "
                  "'none' = MLE only (Table 5 ablations)"},
    )
    nd_attention: ChoiceEnum(["self", "encoder", "both"]) = field(
        default="self", metadata={"help": "which decoder attention's scores L_att compares"}
    )
    nd_target: ChoiceEnum(["soft", "hard", "random"]) = field(
        default="soft",
        metadata={"help": "L_pred targets (Table 9): soft = teacher distributions; hard = the teacher's greedy "
                  "response, one-hot; random = a random D_N response (needs --nd-random-targets)"},
    )
    nd_random_targets: str = field(
        default="",
        metadata={"help": "text file of D_N responses, tokenised like the data (one per line), for --nd-target random"},
    )
    nd_clamp: float = field(
        default=1e-6, metadata={"help": "floor of 1 - p_S inside log(1 - p_S)"}
    )
    seed: int = II("common.seed")
    sentence_avg: bool = II("optimization.sentence_avg")


def parse_terms(spec: str) -> Tuple[str, ...]:
    """``"pred,hid"`` -> ``("pred", "hid")``; ``"none"`` or ``""`` -> ``()``; unknown names raise."""
    names = [t.strip() for t in spec.split(",") if t.strip() and t.strip() != "none"]
    unknown = [t for t in names if t not in TERMS]
    if unknown:
        raise ValueError(f"--nd-terms: unknown term(s) {unknown}; expected some of {TERMS} or 'none'")
    return tuple(dict.fromkeys(names))


def feature_terms(net_output, t_output, s_scores: Dict[str, List[Tensor]], t_scores: Dict[str, List[Tensor]],
                  net_input: dict, target_mask: Tensor, pad: int, use_hid: bool, scale: float
                  ) -> Tuple[List[Tensor], List[Tensor]]:
    """``(L_hid^l for each layer, L_att^l for each layer and attention kind)`` (Eq. 9, 12), each
    MRSE times ``scale`` (the sample size). Hidden states: the decoder layers' outputs
    ``inner_states[1:]`` ``(T, B, C)`` at real target positions; attention scores ``(B, H, T, S)``
    at real query rows and valid keys (causal and non-pad for self-attention, non-pad source for
    encoder attention)."""
    hid = []
    if use_hid:
        hid = nd.scaled_mrse(net_output[1]["inner_states"][1:], t_output[1]["inner_states"][1:],
                             target_mask.t().unsqueeze(-1), scale)
    att = []
    for kind, scores in s_scores.items():
        keys = net_input["prev_output_tokens"] if kind == "self" else net_input["src_tokens"]
        mask = attention_mask(kind, target_mask, keys.eq(pad))
        att += nd.scaled_mrse(scores, t_scores[kind], mask, scale)
    return hid, att


def log_nd_metrics(total: Callable[[str], float], logging_outputs) -> None:
    """Log the ND metrics from ``total`` (key -> sum over the logging outputs, as
    ``reduce_mle_metrics`` returns it): the ND terms per sample_size in their own units (L_pred in
    nats per token, MRSE sums over layers in [0, layers]), nd_alpha and nd_step averaged over the
    batches (``nd_batches``, 1 per logging output: every batch of an update or of a validation has
    the same step, so the mean is that step and its alpha). The logs are sums only, so fairseq may
    add them up across ranks (``logging_outputs_can_be_summed``) before this runs."""
    sample_size = total("sample_size")
    if sample_size > 0:
        for key in ("nd_pred", "nd_hid", "nd_att"):
            metrics.log_scalar(key, total(key) / sample_size, sample_size, round=4)
    batches = total("nd_batches")
    if batches > 0:
        metrics.log_scalar("nd_alpha", total("nd_alpha") / batches, 1, round=4)
        metrics.log_scalar("nd_step", total("nd_step") / batches, weight=0, round=0)


@register_criterion("negative_distillation", dataclass=NegativeDistillationConfig)
class NegativeDistillationCriterion(FairseqCriterion):
    def __init__(self, task, teacher_path, label_smoothing=0.1, nd_alpha_schedule="progressive",
                 nd_alpha=0.33, nd_lambda=4.0, nd_gamma=25600.0, nd_beta=None, nd_temperature=1.0,
                 nd_terms="pred,hid,att", nd_attention="self", nd_target="soft", nd_random_targets="",
                 nd_clamp=1e-6, seed=1, sentence_avg=False):
        super().__init__(task)
        if not passes_update_num(task):
            raise ValueError(f"negative_distillation needs --task knowledge_dialog (task {type(task).__name__} "
                             "does not hand the criterion the update number its alpha schedule needs)")
        self.sentence_avg = sentence_avg
        self.eps = label_smoothing
        self.alpha_schedule = str(nd_alpha_schedule)
        if self.alpha_schedule not in ("progressive", "fixed"):
            raise ValueError(f"--nd-alpha-schedule: {nd_alpha_schedule!r}")
        self.fixed_alpha = nd_alpha
        self.lam, self.gamma = nd_lambda, nd_gamma
        self.beta = nd_beta if nd_beta is not None else 6.0 / nd_gamma
        if nd_temperature <= 0:
            raise ValueError(f"--nd-temperature must be > 0, got {nd_temperature}")
        self.temperature = nd_temperature
        self.terms = parse_terms(nd_terms)
        self.attention = str(nd_attention)
        self.target_kind = str(nd_target)
        self.clamp = nd_clamp
        self.seed = seed
        self.num_updates = 0
        self._random_calls = 0
        self._checked_student = False
        # a plain list hides the teacher from nn.Module registration: no parameters, no state dict
        self._teacher: List[torch.nn.Module] = [load_teacher(teacher_path, task)]
        self._random_targets: Optional[List[Tensor]] = None
        if self.target_kind == "random":
            if not nd_random_targets:
                raise ValueError("--nd-target random needs --nd-random-targets (the D_N responses)")
            self._random_targets = self._load_random_targets(nd_random_targets)
        logger.info("negative teacher %s: %d parameters, frozen; terms %s, alpha %s, targets %s",
                    teacher_path, sum(p.numel() for p in self.teacher.parameters()), self.terms or "none",
                    self.alpha_schedule, self.target_kind)

    # --- teacher and step -------------------------------------------------------------------
    @property
    def teacher(self) -> torch.nn.Module:
        return self._teacher[0]

    def _load_random_targets(self, path: str) -> List[Tensor]:
        d = self.task.target_dictionary
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        if not lines:
            raise ValueError(f"--nd-random-targets {path} holds no response")
        return [d.encode_line(line, add_if_not_exist=False, append_eos=True).long() for line in lines]

    def set_update_num(self, update_num: int) -> None:
        """The training step s of the progressive schedule (from ``knowledge_dialog``'s train_step)."""
        self.num_updates = int(update_num)

    def _prepare(self, model) -> torch.nn.Module:
        """First forward: check the student's shape; every forward: keep the teacher on the
        student's device/dtype and in eval mode."""
        teacher = self.teacher
        if not self._checked_student:
            check_architecture(model, teacher)
            self._checked_student = True
        param = next(model.parameters())
        tparam = next(teacher.parameters())
        if tparam.device != param.device or tparam.dtype != param.dtype:
            teacher.to(device=param.device, dtype=param.dtype)
        if teacher.training:
            teacher.eval()
        return teacher

    def current_alpha(self) -> float:
        if self.alpha_schedule == "fixed":
            return float(self.fixed_alpha)
        return nd.progressive_alpha(self.num_updates, self.lam, self.gamma, self.beta)

    # --- loss -------------------------------------------------------------------------------
    def _negative_tokens(self, sample, teacher, target) -> Tensor:
        """``(B, T)`` one-hot negative targets for --nd-target hard (the teacher's greedy response)
        or random (a random D_N response), padded with pad."""
        bsz, tgt_len = target.shape
        pad = self.padding_idx
        if self.target_kind == "hard":
            net_input = sample["net_input"]
            d = self.task.target_dictionary
            tokens = greedy_decode(teacher, net_input["src_tokens"], net_input["src_lengths"], tgt_len,
                                   bos=d.eos(), eos=d.eos(), pad=pad)
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.num_updates * 1009 + self._random_calls)
            self._random_calls += 1
            picks = torch.randint(len(self._random_targets), (bsz,), generator=gen).tolist()
            tokens = target.new_full((bsz, tgt_len), pad)
            for row, idx in enumerate(picks):
                seq = self._random_targets[idx][:tgt_len]
                tokens[row, : seq.numel()] = seq.to(tokens.device)
        if tokens.size(1) < tgt_len:
            tokens = torch.cat([tokens, tokens.new_full((bsz, tgt_len - tokens.size(1)), pad)], dim=1)
        return tokens[:, :tgt_len]

    def mle_and_pred(self, model, net_output, sample, target, teacher, t_output, alpha: float, use_pred: bool):
        """The first two terms of Eq. 13: ``(head, mle, nll, pred)``, head =
        ``(1 - alpha) L_mle + alpha L_pred`` (differentiable), the others for the logs (pred
        None without L_pred). Soft targets at t = 1: one fused pass over the student's
        log-probabilities (``soft_unlikelihood.mle_and_soft_unlikelihood``); else L_mle is
        fairseq's label-smoothed NLL and L_pred the soft or one-hot unlikelihood."""
        pad = self.padding_idx
        target_mask = target.ne(pad)
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        pred = None
        if use_pred and self.target_kind == "soft":
            # the teacher's logits are read once, block by block; their buffer then holds L_pred's gradient
            t_logits = output_logits(teacher, t_output[0])
            if self.temperature == 1.0:
                return su.mle_and_soft_unlikelihood(lprobs, target, t_logits, alpha, self.eps, pad, self.clamp,
                                                    overwrite_teacher=True)
            pred = su.soft_unlikelihood(net_output[0], t_logits, target_mask, self.temperature, self.clamp,
                                        overwrite_teacher=True)
        elif use_pred:
            neg = self._negative_tokens(sample, teacher, target)
            pred = nd.hard_unlikelihood(net_output[0], neg, target_mask & neg.ne(pad), self.temperature, self.clamp)
        mle, nll = label_smoothed_nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1), self.eps,
                                           ignore_index=pad, reduce=True)
        return nd.mle_and_pred(mle, alpha, pred), mle, nll, pred

    def loss_pieces(self, model, sample) -> Tuple[Tensor, int, dict]:
        """Eq. 13 of a batch, assembled as :meth:`mle_and_pred` + alpha * (L_hid + L_att)
        (``nd.add_features``), with the student's forward pass (exactly one call of
        ``model.encoder``, so a caller may hook it). Returns ``(loss, sample_size, logs)``, logs the
        ND entries of the logging output (``nll_loss``, ``mle_loss``, ``nd_pred``, ``nd_hid``,
        ``nd_att``, ``nd_alpha``, ``nd_step``, ``nd_batches``). Shared by this criterion and
        ``ki_negative_distillation``."""
        teacher = self._prepare(model)
        alpha = self.current_alpha()
        use = set(self.terms) if alpha != 0.0 else set()
        att_kind = self.attention if "att" in use else None
        net_input = sample["net_input"]
        net_output, s_scores = forward_with_scores(model, net_input, att_kind)
        target, sample_size = target_and_sample_size(model, net_output, sample, self.sentence_avg)
        t_output, t_scores = None, {}
        if use:
            with torch.no_grad():
                t_output, t_scores = forward_with_scores(teacher, net_input, att_kind, features_only=True)
        head, mle, nll, pred = self.mle_and_pred(model, net_output, sample, target, teacher, t_output, alpha,
                                                 "pred" in use)
        hid, att = [], []
        if "hid" in use or att_kind:
            hid, att = feature_terms(net_output, t_output, s_scores, t_scores, net_input, target.ne(self.padding_idx),
                                     self.padding_idx, "hid" in use, sample_size)
        loss = nd.add_features(head, alpha, hid + att)
        logs = {
            "nll_loss": nll.data,
            "mle_loss": mle.data,
            "nd_pred": pred.data if pred is not None else 0.0,
            "nd_hid": sum(h.data for h in hid) if hid else 0.0,
            "nd_att": sum(a.data for a in att) if att else 0.0,
            "nd_alpha": alpha,
            "nd_step": self.num_updates,
            "nd_batches": 1,
        }
        return loss, sample_size, logs

    def forward(self, model, sample, reduce=True):
        """Eq. 13 (:meth:`loss_pieces`) and fairseq's logging output."""
        loss, sample_size, nd_logs = self.loss_pieces(model, sample)
        logging_output = {
            "loss": loss.data,
            **nd_logs,
            **batch_counts(sample, sample_size),
        }
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Sum the logs; losses per sample_size (loss, nll_loss in base 2 as fairseq's), the ND
        terms of :func:`log_nd_metrics`."""
        log_nd_metrics(reduce_mle_metrics(logging_outputs), logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        # every entry is a sum (nd_alpha and nd_step are divided by nd_batches), so fairseq may
        # all-reduce them across ranks (its all_gather_list path needs CUDA tensors)
        return True
