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
added: after fairseq's division every term enters as "per token" (MLE, L_pred) or "per element"
(MRSE), the balance Eq. 13 states.

The teacher: loaded from ``--teacher-path`` (a fairseq checkpoint of the same architecture,
trained with MLE on D_N, e.g. by examples/dailydialog/train_nd.sh), checked against the task's
dictionaries (here) and the student's decoder shape (first forward), frozen
(``requires_grad_(False)``), kept in eval mode and run under ``torch.no_grad()``. It is held in a
plain Python attribute, not as a sub-module, so it is neither in ``criterion.parameters()`` (the
optimizer) nor in any state dict (fairseq saves ``criterion.state_dict()`` only for criteria with
parameters), and it is moved to the student's device and dtype on the first forward.

The training step s: fairseq tells the model, not the criterion, the update number
(``task.train_step`` calls ``model.set_num_updates``). On its first forward the criterion chains
itself to the model's ``set_num_updates``, so from the second update on it knows s; for the first
forward it reads the update count the trainer last logged (right after resuming from a checkpoint
that is the checkpoint's), else keeps 0 (or what ``set_num_updates`` on the criterion was called
with). s counts completed updates (0 during the first). Logged: ``nd_alpha``, ``nd_step``, each term.
"""
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from fairseq import checkpoint_utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.data import Dictionary
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from fairseq_plugins.criterions._mle import label_smoothed_mle, reduce_mle_metrics, target_and_sample_size
from informative_dialogue.nd import losses as nd
from informative_dialogue.nd import soft_unlikelihood as su
from fairseq_plugins.models.capture import AttentionScoreCapture, attention_mask, greedy_decode, output_logits

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


def _same_dictionary(a: Dictionary, b: Dictionary) -> bool:
    return len(a) == len(b) and a.symbols == b.symbols and (a.pad(), a.eos(), a.unk(), a.bos()) == (
        b.pad(), b.eos(), b.unk(), b.bos())


def load_teacher(path: str, task) -> torch.nn.Module:
    """Load the teacher checkpoint with the student task's dictionaries, after checking they
    are the teacher's: its embedding sizes must equal the dictionaries' lengths and, where the
    teacher's data folder is still there, its dictionary files must hold the same symbols.

    Raises FileNotFoundError, or ValueError naming the mismatch.
    """
    if not path:
        raise ValueError("negative_distillation needs --teacher-path (a checkpoint of the negative teacher)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--teacher-path {path}: no such file")
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    cfg = state["cfg"]
    weights = state["model"]
    problems = []
    for side, dictionary in (("encoder", task.source_dictionary), ("decoder", task.target_dictionary)):
        key = f"{side}.embed_tokens.weight"
        if dictionary is not None and key in weights and weights[key].size(0) != len(dictionary):
            problems.append(f"{side} vocabulary: teacher {weights[key].size(0)} entries, "
                            f"student task {len(dictionary)}")
    teacher_data = getattr(cfg.task, "data", None) if cfg is not None and "task" in cfg else None
    if not problems and teacher_data:
        for lang, dictionary in ((getattr(cfg.task, "source_lang", None), task.source_dictionary),
                                 (getattr(cfg.task, "target_lang", None), task.target_dictionary)):
            dict_path = os.path.join(str(teacher_data).split(os.pathsep)[0], f"dict.{lang}.txt")
            if lang and dictionary is not None and os.path.isfile(dict_path):
                if not _same_dictionary(Dictionary.load(dict_path), dictionary):
                    problems.append(f"dictionary {dict_path} (the teacher's) differs from the student's "
                                    "(same size but different symbols or order)")
    if problems:
        raise ValueError(
            f"teacher {path} is incompatible with the student's dictionaries: " + "; ".join(problems)
            + ". Binarise the negative set with the student's dictionaries "
            "(fairseq-preprocess --srcdict/--tgtdict) and retrain the teacher."
        )
    model = task.build_model(cfg.model)
    model.load_state_dict(weights, strict=True, model_cfg=cfg.model)
    model.requires_grad_(False)
    model.eval()
    return model


def check_architecture(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """The ND terms pair the decoders layer by layer and element by element: raise ValueError
    unless both have the same number of decoder layers, model dimension, heads and vocabulary."""

    def shape(model):
        dec = model.decoder
        layer = dec.layers[0] if len(dec.layers) else None
        return {
            "decoder layers": len(dec.layers),
            "decoder embed dim": dec.embed_dim if hasattr(dec, "embed_dim") else None,
            "decoder attention heads": layer.self_attn.num_heads if layer is not None else None,
            "encoder-decoder attention heads": (
                layer.encoder_attn.num_heads if layer is not None and layer.encoder_attn is not None else None),
            "output vocabulary": dec.output_projection.out_features if hasattr(dec, "output_projection") else None,
        }

    s, t = shape(student), shape(teacher)
    diff = [f"{k}: student {s[k]}, teacher {t[k]}" for k in s if s[k] != t[k]]
    if diff:
        raise ValueError("negative teacher and student architectures differ (" + "; ".join(diff)
                         + "); train the teacher with the student's architecture flags")


def _trainer_num_updates() -> Optional[int]:
    """The update count fairseq's trainer last logged (``Trainer.set_num_updates`` logs it to the
    always-active "default" metrics aggregator, also when it resumes from a checkpoint), or None."""
    try:
        meter = metrics.get_meter("default", "num_updates")
    except Exception:  # pragma: no cover - metrics internals changed
        return None
    value = getattr(meter, "val", None) if meter is not None else None
    return int(value) if value is not None else None


@register_criterion("negative_distillation", dataclass=NegativeDistillationConfig)
class NegativeDistillationCriterion(FairseqCriterion):
    def __init__(self, task, teacher_path, label_smoothing=0.1, nd_alpha_schedule="progressive",
                 nd_alpha=0.33, nd_lambda=4.0, nd_gamma=25600.0, nd_beta=None, nd_temperature=1.0,
                 nd_terms="pred,hid,att", nd_attention="self", nd_target="soft", nd_random_targets="",
                 nd_clamp=1e-6, seed=1, sentence_avg=False):
        super().__init__(task)
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
        self._random_targets: Optional[List[torch.Tensor]] = None
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

    def _load_random_targets(self, path: str) -> List[torch.Tensor]:
        d = self.task.target_dictionary
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        if not lines:
            raise ValueError(f"--nd-random-targets {path} holds no response")
        return [d.encode_line(line, add_if_not_exist=False, append_eos=True).long() for line in lines]

    def set_num_updates(self, num_updates: int) -> None:
        """The training step s of the progressive schedule."""
        self.num_updates = int(num_updates)

    def _prepare(self, model) -> torch.nn.Module:
        """First forward: check shapes, chain to the model's set_num_updates; every forward:
        keep the teacher on the student's device/dtype and in eval mode."""
        teacher = self.teacher
        if not self._checked_student:
            check_architecture(model, teacher)
            resumed = _trainer_num_updates()
            if resumed is not None:
                self.num_updates = resumed
            if not getattr(model, "_nd_step_hooked", False):
                original = model.set_num_updates
                criterion = self

                def set_num_updates(num_updates, _original=original):
                    criterion.set_num_updates(num_updates)
                    _original(num_updates)

                model.set_num_updates = set_num_updates
                model._nd_step_hooked = True
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
    def _negative_tokens(self, sample, teacher, target) -> torch.Tensor:
        """``(B, T)`` one-hot negative targets for --nd-target hard/random, padded with pad."""
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

    def forward(self, model, sample, reduce=True):
        teacher = self._prepare(model)
        alpha = self.current_alpha()
        use = set(self.terms) if alpha != 0.0 else set()
        att_kind = self.attention if "att" in use else None

        capture_s = AttentionScoreCapture(model.decoder, att_kind) if att_kind else contextlib.nullcontext()
        with capture_s:
            net_output = model(**sample["net_input"])
        soft_pred = "pred" in use and self.target_kind == "soft"
        # at t = 1 the MLE term and L_pred are computed together from the student's log-softmax
        # (one log-softmax, one pass writing the gradient of both)
        fused = soft_pred and self.temperature == 1.0
        if fused:
            target, sample_size = target_and_sample_size(model, net_output, sample, self.sentence_avg)
        else:
            mle, nll, target, sample_size = label_smoothed_mle(
                model, net_output, sample, self.eps, self.padding_idx, self.sentence_avg
            )

        weighted = None  # (1 - alpha) mle + alpha pred, when fused
        pred = None
        hid: List[torch.Tensor] = []
        att: List[torch.Tensor] = []
        if use:
            target_mask = target.ne(self.padding_idx)
            net_input = sample["net_input"]
            capture_t = AttentionScoreCapture(teacher.decoder, att_kind) if att_kind else contextlib.nullcontext()
            with torch.no_grad(), capture_t:
                t_output = teacher(**net_input, features_only=True)
            if soft_pred:
                # the teacher's logits are read once, block by block, and their buffer then
                # holds L_pred's gradient (overwrite_teacher)
                t_logits = output_logits(teacher, t_output[0])
                if fused:
                    lprobs = model.get_normalized_probs(net_output, log_probs=True)
                    weighted, mle, nll, pred = su.mle_and_soft_unlikelihood(
                        lprobs, target, t_logits, alpha, self.eps, self.padding_idx, self.clamp,
                        overwrite_teacher=True)
                else:
                    pred = su.soft_unlikelihood(net_output[0], t_logits, target_mask, self.temperature, self.clamp,
                                                overwrite_teacher=True)
            elif "pred" in use:
                neg = self._negative_tokens(sample, teacher, target)
                pred = nd.hard_unlikelihood(net_output[0], neg, target_mask & neg.ne(self.padding_idx),
                                            self.temperature, self.clamp)
            if "hid" in use:
                s_states = net_output[1]["inner_states"][1:]
                t_states = t_output[1]["inner_states"][1:]
                state_mask = target_mask.t().unsqueeze(-1)  # (T, B, 1)
                hid = [nd.mrse(s, t, state_mask) * sample_size for s, t in zip(s_states, t_states)]
            if att_kind:
                prev = net_input["prev_output_tokens"]
                src_pad = net_input["src_tokens"].eq(self.padding_idx)
                for kind in capture_s.kinds:
                    key_pad = prev.eq(self.padding_idx) if kind == "self" else src_pad
                    mask = attention_mask(kind, target_mask, key_pad)
                    for s, t in zip(capture_s.scores[kind], capture_t.scores[kind]):
                        att.append(nd.mrse(s, t, mask) * sample_size)
        if weighted is not None:  # Eq. 13, its first two terms already summed
            loss = weighted + alpha * sum(hid + att) if hid or att else weighted
        else:
            loss = nd.combine(mle, alpha, pred, hid, att)

        logging_output = {
            "loss": loss.data,
            "nll_loss": nll.data,
            "mle_loss": mle.data,
            "nd_pred": pred.data if pred is not None else 0.0,
            "nd_hid": sum(h.data for h in hid) if hid else 0.0,
            "nd_att": sum(a.data for a in att) if att else 0.0,
            "nd_alpha": alpha,
            "nd_step": self.num_updates,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Sum the logs; losses per sample_size (loss, nll_loss in base 2 as fairseq's), the ND
        terms in their own units (L_pred in nats per token, MRSE sums over layers in [0, layers])."""
        total = reduce_mle_metrics(logging_outputs)
        sample_size = total("sample_size")
        if sample_size > 0:
            for key in ("nd_pred", "nd_hid", "nd_att"):
                metrics.log_scalar(key, total(key) / sample_size, sample_size, round=4)
        if logging_outputs:
            metrics.log_scalar("nd_alpha", total("nd_alpha") / len(logging_outputs), 1, round=4)
            metrics.log_scalar("nd_step", max(float(log.get("nd_step", 0)) for log in logging_outputs),
                               weight=0, round=0)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        # nd_alpha and nd_step are averaged / maxed, not summed
        return False
