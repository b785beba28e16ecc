"""The label-smoothed MLE term shared by the plugin's criteria (ND, UL, NT)."""
from typing import Any, Tuple

from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from torch import Tensor


def label_smoothed_mle(
    model: Any, net_output: Any, sample: dict, eps: float, padding_idx: int, sentence_avg: bool
) -> Tuple[Tensor, Tensor, Tensor, int]:
    """fairseq's label-smoothed cross-entropy of ``net_output`` against the sample's targets.

    Returns ``(mle, nll, target, sample_size)``: the smoothed and the plain negative
    log-likelihoods summed over non-padding tokens (scalars), the targets ``(B, T)``, and the
    sample size (sentences if ``sentence_avg`` else target tokens).
    """
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    target = model.get_targets(sample, net_output)
    mle, nll = label_smoothed_nll_loss(
        lprobs.view(-1, lprobs.size(-1)), target.view(-1), eps, ignore_index=padding_idx, reduce=True
    )
    sample_size = sample["target"].size(0) if sentence_avg else sample["ntokens"]
    return mle, nll, target, sample_size
