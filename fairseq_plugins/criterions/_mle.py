"""The label-smoothed MLE term shared by the plugin's criteria (ND, UL, NT)."""
import math
from typing import Any, Callable, Sequence, Tuple

from fairseq import utils
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.logging import metrics
from torch import Tensor


def label_smoothed_mle(
    model: Any, net_output: Any, sample: dict, eps: float, padding_idx: int, sentence_avg: bool,
) -> Tuple[Tensor, Tensor, Tensor, int]:
    """fairseq's label-smoothed cross-entropy of ``net_output`` against the sample's targets.

    Returns ``(mle, nll, target, sample_size)``: the smoothed and the plain negative
    log-likelihoods summed over non-padding tokens (scalars), the targets ``(B, T)``, and the
    sample size (see :func:`target_and_sample_size`).
    """
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    target, sample_size = target_and_sample_size(model, net_output, sample, sentence_avg)
    mle, nll = label_smoothed_nll_loss(
        lprobs.view(-1, lprobs.size(-1)), target.view(-1), eps, ignore_index=padding_idx, reduce=True
    )
    return mle, nll, target, sample_size


def target_and_sample_size(model: Any, net_output: Any, sample: dict, sentence_avg: bool) -> Tuple[Tensor, int]:
    """The targets ``(B, T)`` of ``net_output`` and fairseq's sample size: sentences if
    ``sentence_avg`` else target tokens."""
    target = model.get_targets(sample, net_output)
    sample_size = sample["target"].size(0) if sentence_avg else sample["ntokens"]
    return target, sample_size


def batch_counts(sample: dict, sample_size: int) -> dict:
    """The counts every logging output carries: ``ntokens``, ``nsentences`` (rows of
    ``sample["target"]``, (B, T)) and ``sample_size``."""
    return {"ntokens": sample["ntokens"], "nsentences": sample["target"].size(0), "sample_size": sample_size}


def reduce_mle_metrics(logging_outputs, per_sample_losses: Sequence[str] = ("mle_loss",)) -> Callable[[str], float]:
    """Log ``loss`` and each of ``per_sample_losses`` per sample_size, ``nll_loss`` per target
    token (all base 2, as fairseq) and ``ppl``, summed over workers; return the summing function
    so a criterion can log its own keys the same way."""

    def total(key: str) -> float:
        return sum(float(log.get(key, 0)) for log in logging_outputs)

    sample_size, ntokens = total("sample_size"), total("ntokens")
    if sample_size > 0:
        for key in ("loss", *per_sample_losses):
            metrics.log_scalar(key, total(key) / sample_size / math.log(2), sample_size, round=3)
    if ntokens > 0:
        metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
    return total
