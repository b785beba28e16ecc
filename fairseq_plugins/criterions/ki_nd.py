"""Criterion ``ki_negative_distillation``: knowledge internalization and negative distillation in
one training run (papers: shared/papers/knowledge_internalization.txt Eq. 2-4 and
shared/papers/negative_distillation.txt Eq. 5-16), on top of label-smoothed cross-entropy::

    L = (1 - α) L_mle + α (L_pred + Σ_l L_hid^l + Σ_l L_att^l) + λ L_KI

- the first two terms are ``negative_distillation``'s loss (Eq. 13) exactly: L_mle the
  label-smoothed NLL (``--label-smoothing``), L_pred / L_hid / L_att against the frozen negative
  teacher ``--teacher-path``, α progressive (``--nd-lambda``, ``--nd-gamma``, ``--nd-beta``) or
  fixed (``--nd-alpha-schedule fixed --nd-alpha A``), terms ``--nd-terms``, every ``--nd-*`` flag
  as there;
- λ L_KI is ``knowledge_internalization``'s term exactly: the hinge of Eq. 3 on the student's
  encoder states, summed over the labelled source tokens, with the projection heads f1, f2 and
  the knowledge table ``--ki-knowledge-table``, weight λ = ``--ki-lambda``, every ``--ki-*`` flag
  as there.

λ L_KI is added outside ND's (1 - α) / α split, not scaled by (1 - α): KI's objective is
L_mle + λ L_KI, ND's replaces L_mle by the mixture of Eq. 13, and the hinge trains the encoder's
states, which ND's terms (on decoder outputs, states and attention scores) do not touch. Scaling
it by (1 - α) would switch KI off at ND's peak (α = λ_ND / 4 = 1 with the paper's defaults).
Hence the two limits: ``--nd-alpha-schedule fixed --nd-alpha 0`` gives ``knowledge_internalization``'s
loss and gradients, ``--ki-lambda 0`` gives ``negative_distillation``'s (tests/test_ki_nd_criterion.py).
Normalisation is both criteria's: fairseq divides the sum by ``sample_size`` (target tokens, or
sentences with ``--sentence-avg``).

How it composes, without a copy of either criterion: it holds one ``negative_distillation``
criterion (``self.nd``) and one ``knowledge_internalization`` criterion (``self.ki``), each
built from this criterion's config (:func:`child_kwargs`: the fields named like its
``__init__`` arguments; the config is the union of both dataclasses, so each flag and its
default are defined once, in its own criterion). ``forward`` runs ND's :meth:`loss_pieces`
(student forward pass with the attention capture, teacher pass, Eq. 13) inside KI's encoder
capture, so both read the same single forward pass, then adds λ times KI's :meth:`ki_term`.

Checkpoint: the teacher is hidden from module registration by ND (no parameters, no state),
the knowledge table is a non-persistent buffer (or, with ``--ki-trainable-table``, a trained
embedding), so the criterion state that fairseq saves and restores strictly on resume is KI's
heads under ``ki.`` (``ki.f1.weight``, ``ki.f1.bias``, ``ki.f2.weight``, ``ki.f2.bias``); the
model's state dict is the plain architecture and ``fairseq-generate`` needs neither teacher nor
knowledge. Resume continues exactly: α reads the update number that ``--task knowledge_dialog``
hands over, KI's negatives use the RNG that fairseq's Trainer seeds per update.

Task: ``--task knowledge_dialog`` (ND's update number) with ``--knowledge-alignments`` (KI's
``sample["knowledge"]``); without the alignments and λ > 0 the criterion refuses to start, since
KI would silently contribute nothing. Logged: every key of both criteria (``loss``,
``nll_loss``, ``mle_loss``, ``nd_*``, ``ki_*``).
"""
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Dict

from fairseq.criterions import FairseqCriterion, register_criterion
from torch import Tensor

from fairseq_plugins.criterions._mle import batch_counts, reduce_mle_metrics
from fairseq_plugins.criterions.knowledge_internalization import (
    KnowledgeInternalizationConfig,
    KnowledgeInternalizationCriterion,
    log_ki_metrics,
)
from fairseq_plugins.criterions.negative_distillation import (
    NegativeDistillationConfig,
    NegativeDistillationCriterion,
    log_nd_metrics,
)
from fairseq_plugins.models.encoder_capture import EncoderOutputCapture

logger = logging.getLogger(__name__)

NAME = "ki_negative_distillation"


@dataclass
class KINegativeDistillationConfig(KnowledgeInternalizationConfig, NegativeDistillationConfig):
    """The union of ``knowledge_internalization``'s and ``negative_distillation``'s flags (the
    shared ``--label-smoothing`` and ``--sentence-avg`` once)."""


def child_kwargs(criterion_cls: type, cfg: Any) -> Dict[str, Any]:
    """The arguments of ``criterion_cls.__init__`` (other than ``task``) read from ``cfg`` by
    name, as fairseq's ``build_criterion`` does for a criterion of its own."""
    names = [p for p in inspect.signature(criterion_cls.__init__).parameters if p not in ("self", "task")]
    missing = [n for n in names if not hasattr(cfg, n)]
    if missing:
        raise ValueError(f"{NAME}: the config lacks {missing} for {criterion_cls.__name__}")
    return {n: getattr(cfg, n) for n in names}


@register_criterion(NAME, dataclass=KINegativeDistillationConfig)
class KINegativeDistillationCriterion(FairseqCriterion):
    def __init__(self, task, cfg: KINegativeDistillationConfig):
        super().__init__(task)
        task_cfg = getattr(task, "cfg", None)
        if cfg.ki_lambda > 0 and not getattr(task_cfg, "knowledge_alignments", False):
            raise ValueError(f"{NAME} with --ki-lambda {cfg.ki_lambda} needs --task knowledge_dialog "
                             "--knowledge-alignments (the batches' knowledge labels); without them L_KI would "
                             "be 0 throughout. Use --criterion negative_distillation for ND alone.")
        # KI first: its heads draw the same initial weights as knowledge_internalization's under the
        # same seed (building the teacher consumes the RNG; fairseq's Trainer reseeds every update)
        self.ki = KnowledgeInternalizationCriterion(task, **child_kwargs(KnowledgeInternalizationCriterion, cfg))
        self.nd = NegativeDistillationCriterion(task, **child_kwargs(NegativeDistillationCriterion, cfg))
        logger.info("%s: L = (1 - alpha) L_mle + alpha (ND terms %s) + %g L_KI", NAME,
                    ",".join(self.nd.terms) or "none", self.ki.lam)

    # --- what --task knowledge_dialog hands over (_task_contract.py) ----------------------------
    def set_update_num(self, update_num: int) -> None:
        """ND's step s (the progressive α)."""
        self.nd.set_update_num(update_num)

    def check_dataset(self, split: str, dataset) -> None:
        """KI's start-up check of a loaded split's knowledge ids against the table."""
        self.ki.check_dataset(split, dataset)

    # --- loss -------------------------------------------------------------------------------
    def combine(self, nd_loss: Tensor, ki_sum: Tensor) -> Tensor:
        """``nd_loss + λ ki_sum``; ``nd_loss`` itself when λ = 0 (no added term, not even a zero)."""
        lam = self.ki.lam
        return nd_loss + lam * ki_sum if lam != 0.0 else nd_loss

    def forward(self, model, sample, reduce=True):
        with EncoderOutputCapture(self.ki.encoder_of(model)) as capture:
            nd_loss, sample_size, nd_logs = self.nd.loss_pieces(model, sample)
        ki_sum, ki_logs = self.ki.ki_term(sample, capture)
        loss = self.combine(nd_loss, ki_sum)
        logging_output = {
            "loss": loss.data,
            **nd_logs,
            **ki_logs,
            **batch_counts(sample, sample_size),
        }
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """loss, mle_loss per sample_size and nll_loss per target token (base 2), ppl, then ND's
        metrics (``log_nd_metrics``) and KI's (``log_ki_metrics``)."""
        total = reduce_mle_metrics(logging_outputs, per_sample_losses=("mle_loss",))
        log_nd_metrics(total, logging_outputs)
        log_ki_metrics(total)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        # every entry is a sum (nd_alpha and nd_step are divided by nd_batches), so fairseq may
        # all-reduce them across ranks (its all_gather_list path needs CUDA tensors)
        return True
