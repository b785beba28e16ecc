"""Criterion ``unlikelihood``: the UL baseline of the negative distillation paper
(Li et al., 2020, vocabulary-usage unlikelihood; see informative_dialogue/nd/unlikelihood.py)::

    L = L_mle + alpha * L_UL,   L_UL = -(1/|C|) sum_{t in C} beta(y_t) log(1 - p(y_t | y_<t, x))

where y is the model's own greedy generation for the batch and C the positions of y holding a
token the model over-uses: over the last ``--ul-window`` training batches, its share among the
generated tokens exceeds its share among the gold target tokens (weights ``--ul-weighting``).
As in Li et al.'s released agent the penalty starts once the window is full, is averaged over
the penalised tokens, and is added to the per-token MLE (here: multiplied by ``sample_size``
because fairseq divides the returned sum by it). Unlike their agent, the end-of-sentence
symbol is not counted by default (``--ul-count-eos`` counts it): a model whose responses are
shorter than the human ones over-uses it, and penalising it teaches the model never to stop
(measured on DailyDialog: every response ran to the length limit, examples/dailydialog/RESULTS.md).
The ND paper (appendix B) used alpha = 1000 and fine-tuned a trained Standard model
("refined on the well-trained Standard model"): examples/dailydialog/train_ul.sh does that.
Validation reports the MLE part only (no generation).

Criterion ``negative_training``: the NT baseline (He & Glass, 2020, frequent responses)::

    L = lambda_POS * L_mle + nt_weight * sum_{x: y_gen(x) frequent} log p(y_gen(x) | x)

y_gen is the model's greedy response; it is *frequent* when its share among the responses
generated over the last ``--nt-window`` batches exceeds ``--nt-ratio`` (r_thres; ND paper
appendix B: 1%, lambda_POS = 1). Minimising ``log p`` of a frequent response is the "negative
update" (gradient ascent on its NLL); it is unbounded, which is why NT fine-tunes a trained
model for a short time (``STAGES``/``MAX_EPOCH`` of the recipe). Validation: MLE only.
"""
import logging
from dataclasses import dataclass, field

import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from fairseq_plugins.criterions._mle import batch_counts, label_smoothed_mle, reduce_mle_metrics
from informative_dialogue.nd import unlikelihood as ul
from fairseq_plugins.models.capture import greedy_decode

logger = logging.getLogger(__name__)



def greedy_in_eval_mode(model, net_input: dict, max_len: int, dictionary) -> torch.Tensor:
    """The model's greedy responses ``(B, <= max_len)`` to ``net_input``'s sources, decoded with
    dropout off; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        return greedy_decode(model, net_input["src_tokens"], net_input["src_lengths"], max_len,
                             bos=dictionary.eos(), eos=dictionary.eos(), pad=dictionary.pad())
    finally:
        model.train(was_training)


@dataclass
class VocabUnlikelihoodConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the MLE term (0 = plain NLL)"})
    ul_alpha: float = field(
        default=1000.0, metadata={"help": "weight of the unlikelihood term (ND paper appendix B: 1000, "
                                  "searched in 1, 10, 100, 1000)"})
    ul_window: int = field(default=32, metadata={"help": "batches over which token frequencies are counted"})
    ul_weighting: ChoiceEnum(list(ul.WEIGHTINGS)) = field(
        default="kldiv", metadata={"help": "penalty weight per over-used token (kldiv = Li et al.)"})
    ul_threshold: float = field(default=1e-3, metadata={"help": "minimum weight (kldiv) or frequency excess"})
    ul_max_len: int = field(default=50, metadata={"help": "maximum length of the greedy generations"})
    ul_clamp: float = field(default=1e-6, metadata={"help": "floor of 1 - p inside log(1 - p)"})
    ul_count_eos: bool = field(
        default=False, metadata={"help": "count (and so possibly penalise) the end-of-sentence symbol like "
                                 "any token, as Li et al.'s agent does; off: it is no vocabulary usage"})
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("unlikelihood", dataclass=VocabUnlikelihoodConfig)
class VocabUnlikelihoodCriterion(FairseqCriterion):
    def __init__(self, task, label_smoothing=0.1, ul_alpha=1000.0, ul_window=32, ul_weighting="kldiv",
                 ul_threshold=1e-3, ul_max_len=50, ul_clamp=1e-6, ul_count_eos=False, sentence_avg=False):
        super().__init__(task)
        self.eps = label_smoothing
        self.alpha = ul_alpha
        self.weighting = str(ul_weighting)
        if self.weighting not in ul.WEIGHTINGS:
            raise ValueError(f"--ul-weighting: {ul_weighting!r}")
        self.threshold = ul_threshold
        self.max_len = ul_max_len
        self.clamp = ul_clamp
        self.sentence_avg = sentence_avg
        d = task.target_dictionary
        self.uncounted = (d.pad(),) if ul_count_eos else (d.pad(), d.eos())
        vocab = len(d)
        self.generated = ul.RunningCounts(vocab, ul_window)
        self.human = ul.RunningCounts(vocab, ul_window)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        mle, nll, target, sample_size = label_smoothed_mle(
            model, net_output, sample, self.eps, self.padding_idx, self.sentence_avg
        )
        loss = mle
        ul_loss = mle.new_zeros(())
        n_penalised = 0
        n_candidates = 0
        if model.training and self.alpha != 0.0:
            ul_loss, n_penalised, n_candidates = self._unlikelihood(model, sample, target)
            if n_penalised > 0:
                loss = mle + self.alpha * ul_loss / n_penalised * sample_size
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll.data,
            "mle_loss": mle.data,
            "ul_loss": ul_loss.data,
            "ul_tokens": n_penalised,
            "ul_candidates": n_candidates,
            "ul_batches": 1,
            **batch_counts(sample, sample_size),
        }
        return loss, sample_size, logging_output

    def _unlikelihood(self, model, sample, target):
        """Generate greedily, update the windows, and return (sum of weighted UL over the
        penalised generated tokens, their number, the number of candidate vocabulary entries)."""
        d = self.task.target_dictionary
        net_input = sample["net_input"]
        gen = greedy_in_eval_mode(model, net_input, self.max_len, d)
        self.generated.add(gen, ignore=self.uncounted)
        self.human.add(target, ignore=self.uncounted)
        zero = target.new_zeros((), dtype=torch.float)
        if not self.generated.full or gen.numel() == 0:
            return zero, 0, 0
        vocab_weights = ul.penalty_weights(self.generated.total, self.human.total, self.weighting, self.threshold)
        n_candidates = int((vocab_weights > 0).sum())
        weights = vocab_weights.to(gen.device)[gen].masked_fill(gen.eq(d.pad()), 0.0)
        n_penalised = int((weights > 0).sum())
        if n_penalised == 0:
            return zero, 0, n_candidates
        prev = torch.cat([gen.new_full((gen.size(0), 1), d.eos()), gen[:, :-1]], dim=1)
        logits, _ = model(net_input["src_tokens"], net_input["src_lengths"], prev)
        return ul.token_unlikelihood(logits, gen, weights, self.clamp), n_penalised, n_candidates

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        total = reduce_mle_metrics(logging_outputs)
        n_ul = total("ul_tokens")
        if n_ul > 0:
            metrics.log_scalar("ul_loss", total("ul_loss") / n_ul, n_ul, round=4)
        metrics.log_scalar("ul_tokens", n_ul, round=0)
        batches = total("ul_batches")  # 1 per batch: sums only, so fairseq may all-reduce the logs
        if batches > 0:
            metrics.log_scalar("ul_candidates", total("ul_candidates") / batches, 1, round=1)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        # every entry is a sum (ul_candidates is divided by ul_batches), so fairseq may all-reduce
        # them across ranks (its all_gather_list path needs CUDA tensors)
        return True


@dataclass
class NegativeTrainingConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the MLE term (0 = plain NLL)"})
    nt_ratio: float = field(default=0.01, metadata={"help": "r_thres: a generated response is frequent above "
                                                    "this share of the window (ND paper: 1%)"})
    nt_pos_weight: float = field(default=1.0, metadata={"help": "lambda_POS, weight of the MLE term (1)"})
    nt_weight: float = field(default=1.0, metadata={"help": "weight of the negative term"})
    nt_window: int = field(default=32, metadata={"help": "batches over which response frequencies are counted"})
    nt_max_len: int = field(default=50, metadata={"help": "maximum length of the greedy generations"})
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("negative_training", dataclass=NegativeTrainingConfig)
class NegativeTrainingCriterion(FairseqCriterion):
    def __init__(self, task, label_smoothing=0.1, nt_ratio=0.01, nt_pos_weight=1.0, nt_weight=1.0,
                 nt_window=32, nt_max_len=50, sentence_avg=False):
        super().__init__(task)
        self.eps = label_smoothing
        self.ratio = nt_ratio
        self.pos_weight = nt_pos_weight
        self.neg_weight = nt_weight
        self.max_len = nt_max_len
        self.sentence_avg = sentence_avg
        self.window = ul.ResponseWindow(nt_window)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        mle, nll, target, sample_size = label_smoothed_mle(
            model, net_output, sample, self.eps, self.padding_idx, self.sentence_avg
        )
        loss = self.pos_weight * mle
        neg = mle.new_zeros(())
        n_neg = 0
        if model.training and self.neg_weight != 0.0:
            neg, n_neg = self._negative(model, sample)
            if n_neg > 0:
                loss = loss + self.neg_weight * neg
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll.data,
            "mle_loss": mle.data,
            "nt_loss": neg.data,
            "nt_negatives": n_neg,
            **batch_counts(sample, sample_size),
        }
        return loss, sample_size, logging_output

    def _negative(self, model, sample):
        """Greedy responses; those frequent in the window (this batch included) get their log
        likelihood added (to be minimised). Returns (summed log likelihood, number of responses)."""
        d = self.task.target_dictionary
        net_input = sample["net_input"]
        gen = greedy_in_eval_mode(model, net_input, self.max_len, d)
        responses = [[t for t in row if t != d.pad()] for row in gen.tolist()]
        self.window.add(responses)
        frequent = torch.tensor(self.window.frequent(responses, self.ratio), device=gen.device)
        if gen.numel() == 0 or not bool(frequent.any()):
            return gen.new_zeros((), dtype=torch.float), 0
        rows = frequent.nonzero().squeeze(1)
        gen = gen[rows]
        prev = torch.cat([gen.new_full((gen.size(0), 1), d.eos()), gen[:, :-1]], dim=1)
        logits, _ = model(net_input["src_tokens"][rows], net_input["src_lengths"][rows], prev)
        log_likelihood = ul.sequence_log_likelihood(logits, gen, gen.ne(d.pad()))
        return log_likelihood.sum(), int(rows.numel())

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        total = reduce_mle_metrics(logging_outputs)
        n_neg = total("nt_negatives")
        if n_neg > 0:
            metrics.log_scalar("nt_loss", total("nt_loss") / n_neg, n_neg, round=4)
        metrics.log_scalar("nt_negatives", n_neg, round=0)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
