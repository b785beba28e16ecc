"""Criterion ``knowledge_internalization``: MLE plus the knowledge internalization loss
(paper: shared/papers/knowledge_internalization.txt, §3.2–3.3, Eq. 2–4)::

    L = L_mle + λ L_KI,    L_KI = Σ_i max{0, m - s(x_i, K_i) + s(x_i, K_i^-)},
    s(x, K) = f1(h_x)^T f2(g(K))

- L_mle: label-smoothed token NLL (``--label-smoothing``, 0.1 as the project's recipes and the
  authors' run script; 0 = plain NLL), exactly fairseq's ``label_smoothed_cross_entropy``.
- h_x: the model's own encoder output for source token x, captured with a forward hook during
  the normal forward pass (``fairseq_plugins.models.encoder_capture``); works for fairseq's
  ``transformer`` and ``lstm`` encoders. States and labels are paired by order within each row,
  so the loss does not depend on the padding side (LSTMEncoder re-pads to the right internally).
- g(K): row K of the knowledge table ``--ki-knowledge-table PATH.npy`` ``(N+1, d_k)``, row 0
  zeros (id 0 = no knowledge). f1 = Linear(``--ki-encoder-dim``, ``--ki-projection-dim``),
  f2 = Linear(d_k, ``--ki-projection-dim``), each followed by L2 normalisation (Eq. 2 "map ...
  and normalize"; ``--ki-no-normalize`` keeps the raw projections).
- Margin ``--ki-margin`` 0.5: with normalisation s is a cosine in [-1, 1], so the positive must
  beat the negative by a quarter of the range; 0.5 is also the default of the authors' released
  criterion (their WoW script passes 0.1). λ ``--ki-lambda`` 1 (appendix B).
- K_i^-: ``--ki-negatives n`` (default 1, Eq. 3) knowledge labels drawn uniformly from the
  labelled tokens of *other* sentences of the batch with an id different from K_i; the hinge is
  averaged over the n. Tokens with no valid negative (one-sentence batch, or every other
  sentence carries only K_i) are left out and counted (``ki_no_negative``). Drawn with torch's
  global RNG, which fairseq's Trainer seeds with ``seed + num_updates`` before every update.

Input contract: ``sample["knowledge"]`` LongTensor ``(B, S)`` position-aligned with
``net_input.src_tokens`` (same padding side), 0 at tokens without knowledge, at EOS and at
padding. A non-zero label at padding or EOS, or an id outside the table, raises ValueError. A
sample without ``"knowledge"`` (e.g. a split without alignments) gets L_KI = 0 (``ki_absent``
counts its sentences), the NLL as usual. At start-up (``--task knowledge_dialog``, before the
first step after a split is loaded) the split's whole alignment file is checked against the
table: an id beyond it is an error naming the file and its first such line, not a crash in the
middle of an epoch.

Where f1, f2 live: in this criterion, not in the model. fairseq 0.12's Trainer (trainer.py)
optimises ``chain(model.parameters(), criterion.parameters())`` (``_build_optimizer``), saves
``criterion.state_dict()`` in the checkpoint's ``"criterion"`` entry whenever the criterion has
parameters (``state_dict``), and restores it with ``load_state_dict(strict=True)`` on resume
(``load_checkpoint``). So the model's state dict stays that of the plain architecture and
inference (``fairseq-generate``, ``checkpoint_utils.load_model_ensemble``) needs neither the
knowledge nor the projection heads.

The knowledge table: a frozen table is a *non-persistent* float32 buffer — moved to the model's
device with the criterion, cast with it by ``--fp16``, never written into checkpoints (resuming
reloads it from the path in the config). About 200 MB for 130k × 384 float32 (100 MB in fp16),
the same on the accelerator; only the rows of a batch's labelled tokens go through f2.
``--ki-trainable-table`` makes it an ``nn.Embedding`` initialised from the file (row 0 frozen as
padding), which is trained and saved with the criterion state: it then costs the table 4 times
in float32 (weights, dense gradient, two Adam moments) and as much again per checkpoint.

Normalisation: L_mle and L_KI are both sums (over target tokens and over labelled source tokens);
fairseq divides the returned loss by ``sample_size`` (target tokens, or sentences with
``--sentence-avg``), as the authors' criterion does.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II
from torch import Tensor, nn

from fairseq_plugins.criterions._mle import batch_counts, label_smoothed_mle, reduce_mle_metrics
from fairseq_plugins.models.encoder_capture import EncoderOutputCapture
from informative_dialogue.ki import loss as ki
from informative_dialogue.ki.alignments import KnowledgeAlignments

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass
class KnowledgeInternalizationConfig(FairseqDataclass):
    ki_knowledge_table: str = field(
        default="",
        metadata={"help": "knowledge table .npy (N+1, d_k) float16/32: row i = g(K_i), the knowledge "
                  "encoder's average-pooled embedding of item i; row 0 zeros (id 0 = no knowledge)"},
    )
    label_smoothing: float = field(
        default=0.1, metadata={"help": "label smoothing of L_mle (0 = plain NLL)"}
    )
    ki_lambda: float = field(default=1.0, metadata={"help": "weight λ of L_KI in Eq. 4 (appendix B: 1)"})
    ki_margin: float = field(
        default=0.5, metadata={"help": "margin m of the hinge in Eq. 3 (cosine scale with normalisation)"}
    )
    ki_projection_dim: int = field(
        default=256, metadata={"help": "size d of the shared space of f1 and f2 (Eq. 2)"}
    )
    ki_encoder_dim: int = field(
        default=512,
        metadata={"help": "size of the encoder states h_i (f1's input): transformer --encoder-embed-dim; "
                  "lstm --encoder-hidden-size, x2 with --encoder-bidirectional (512 for both paper models); "
                  "checked on the first batch"},
    )
    ki_no_normalize: bool = field(
        default=False, metadata={"help": "do not L2-normalise f1(h) and f2(g(K)) (raw inner product)"}
    )
    ki_negatives: int = field(
        default=1, metadata={"help": "negatives per token (Eq. 3: 1); the hinge is averaged over them"}
    )
    ki_trainable_table: bool = field(
        default=False,
        metadata={"help": "train the knowledge table (an nn.Embedding initialised from the file, saved in "
                  "the checkpoint's criterion state) instead of keeping it frozen"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


def load_knowledge_table(path: str) -> Tensor:
    """Read and check a knowledge table: ``(N+1, d_k)`` float array with an all-zero row 0 and
    finite values. Returns it as a float32 tensor. Raises FileNotFoundError or ValueError naming
    the file and the problem."""
    if not path:
        raise ValueError("knowledge_internalization needs --ki-knowledge-table (a .npy array (N+1, d_k))")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ki-knowledge-table {path}: no such file")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"--ki-knowledge-table {path}: not a numeric .npy array ({e})") from e
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"--ki-knowledge-table {path}: expected a 2-d array (N+1, d_k), got shape {arr.shape}")
    if arr.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"--ki-knowledge-table {path}: expected float16/32/64 values, got {arr.dtype}")
    table = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))  # a copy: not the read-only mmap
    if bool(table[0].ne(0).any()):
        raise ValueError(f"--ki-knowledge-table {path}: row 0 must be zeros (id 0 = no knowledge); "
                         "are the ids shifted by one?")
    finite = torch.isfinite(table).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(f"--ki-knowledge-table {path}: row {row} holds NaN or infinite values")
    return table


def log_ki_metrics(total: Callable[[str], float]) -> None:
    """Log the KI metrics from ``total`` (key -> sum over the logging outputs, as
    ``reduce_mle_metrics`` returns it): ki_loss per KI token (hinge units); ki_coverage =
    labelled / non-pad non-EOS source tokens; ki_no_negative and ki_absent counts per update."""
    ki_tokens = total("ki_tokens")
    metrics.log_scalar("ki_loss", total("ki_loss") / ki_tokens if ki_tokens > 0 else 0.0, ki_tokens, round=4)
    src = total("src_tokens")
    if src > 0:
        metrics.log_scalar("ki_coverage", total("ki_labelled") / src, src, round=4)
    metrics.log_scalar("ki_no_negative", total("ki_no_negative"), round=1)
    metrics.log_scalar("ki_absent", total("ki_absent"), round=1)


@register_criterion("knowledge_internalization", dataclass=KnowledgeInternalizationConfig)
class KnowledgeInternalizationCriterion(FairseqCriterion):
    def __init__(self, task, ki_knowledge_table, label_smoothing=0.1, ki_lambda=1.0, ki_margin=0.5,
                 ki_projection_dim=256, ki_encoder_dim=512, ki_no_normalize=False, ki_negatives=1,
                 ki_trainable_table=False, sentence_avg=False):
        super().__init__(task)
        if ki_negatives < 1:
            raise ValueError(f"--ki-negatives must be >= 1, got {ki_negatives}")
        if ki_projection_dim < 1 or ki_encoder_dim < 1:
            raise ValueError(f"--ki-projection-dim and --ki-encoder-dim must be >= 1, got "
                             f"{ki_projection_dim} and {ki_encoder_dim}")
        if ki_lambda < 0:
            raise ValueError(f"--ki-lambda must be >= 0, got {ki_lambda}")
        self.sentence_avg = sentence_avg
        self.eps = label_smoothing
        self.lam = float(ki_lambda)
        self.margin = float(ki_margin)
        self.normalize = not ki_no_normalize
        self.num_negatives = int(ki_negatives)
        self.table_path = ki_knowledge_table
        self.eos_idx = task.source_dictionary.eos() if task.source_dictionary is not None else None

        table = load_knowledge_table(ki_knowledge_table)
        self.table_rows, knowledge_dim = table.shape
        self.knowledge: Optional[nn.Embedding] = None
        if ki_trainable_table:
            self.knowledge = nn.Embedding.from_pretrained(table, freeze=False, padding_idx=0)
        else:
            self.register_buffer("knowledge_table", table, persistent=False)
        self.f1 = nn.Linear(ki_encoder_dim, ki_projection_dim)
        self.f2 = nn.Linear(knowledge_dim, ki_projection_dim)
        logger.info("knowledge table %s: %d items x %d dims (%s); f1 %d->%d, f2 %d->%d, normalise %s, "
                    "margin %g, lambda %g, %d negative(s)", ki_knowledge_table, self.table_rows - 1, knowledge_dim,
                    "trainable" if ki_trainable_table else "frozen", ki_encoder_dim, ki_projection_dim,
                    knowledge_dim, ki_projection_dim, self.normalize, self.margin, self.lam, self.num_negatives)

    # --- inputs -----------------------------------------------------------------------------
    def knowledge_vectors(self, ids: Tensor) -> Tensor:
        """g(K) of knowledge ids ``(M,)`` -> ``(M, d_k)`` in f2's dtype."""
        rows = self.knowledge(ids) if self.knowledge is not None else self.knowledge_table[ids]
        return rows.to(self.f2.weight.dtype)

    def check_knowledge(self, knowledge: Tensor, src_tokens: Tensor, real: Tensor) -> None:
        """A batch's labels against the input contract (``ki.check_labels``)."""
        ki.check_labels(knowledge, src_tokens, real, self.table_rows, self.table_path, self.padding_idx)

    def check_dataset(self, split: str, dataset) -> None:
        """Start-up check (``knowledge_dialog`` calls it for every split it loads, before the next
        step): every knowledge id of the split's alignments indexes the table."""
        alignments = getattr(dataset, "alignments", None)
        if isinstance(alignments, KnowledgeAlignments):
            ki.check_alignment_ids(alignments, self.table_rows, self.table_path)

    # --- loss -------------------------------------------------------------------------------
    def ki_loss(self, states: Tensor, valid: Tensor, knowledge: Tensor, labelled_positions: Tensor
                ) -> Tuple[Tensor, int, int]:
        """L_KI (Eq. 3) of a batch: ``(sum over tokens, tokens used, tokens labelled)`` (``ki.ki_loss``)."""
        if states.size(-1) != self.f1.in_features:
            raise ValueError(f"encoder states have size {states.size(-1)} but --ki-encoder-dim is "
                             f"{self.f1.in_features}: set --ki-encoder-dim {states.size(-1)}")
        return ki.ki_loss(states, valid, knowledge, labelled_positions, self.f1, self.f2, self.knowledge_vectors,
                          self.margin, self.normalize, self.num_negatives)

    def encoder_of(self, model) -> nn.Module:
        """The encoder whose output states L_KI reads (``model.encoder``); TypeError without one."""
        encoder = getattr(model, "encoder", None)
        if encoder is None:
            raise TypeError("knowledge_internalization needs an encoder-decoder model (model.encoder)")
        return encoder

    def ki_term(self, sample: dict, capture: EncoderOutputCapture) -> Tuple[Tensor, dict]:
        """L_KI of a batch from the encoder states of its forward pass (``capture``, entered around
        ``model(**sample["net_input"])``): ``(ki_sum, logs)``, ki_sum the unweighted hinge sum
        (scalar; with λ = 0 computed without gradient), logs the KI entries of the logging output
        (``ki_loss``, ``ki_tokens``, ``ki_labelled``, ``ki_no_negative``, ``ki_absent``,
        ``src_tokens``). Shared by this criterion and ``ki_negative_distillation``."""
        src_tokens = sample["net_input"]["src_tokens"]
        non_pad = src_tokens.ne(self.padding_idx)
        real = non_pad & src_tokens.ne(self.eos_idx) if self.eos_idx is not None else non_pad
        knowledge = sample.get("knowledge")
        absent = knowledge is None
        if absent:
            knowledge = torch.zeros_like(src_tokens)
        else:
            self.check_knowledge(knowledge, src_tokens, real)
        states, valid = capture.states()
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.lam != 0.0):
            ki_sum, ki_tokens, ki_labelled = self.ki_loss(states, valid, knowledge.long(), non_pad)
        logs = {
            "ki_loss": ki_sum.data,
            "ki_tokens": ki_tokens,
            "ki_labelled": ki_labelled,
            "ki_no_negative": ki_labelled - ki_tokens,
            "ki_absent": src_tokens.size(0) if absent else 0,
            "src_tokens": int(real.sum()),
        }
        return ki_sum, logs

    def forward(self, model, sample, reduce=True):
        with EncoderOutputCapture(self.encoder_of(model)) as capture:
            net_output = model(**sample["net_input"])
        mle, nll, _, sample_size = label_smoothed_mle(
            model, net_output, sample, self.eps, self.padding_idx, self.sentence_avg
        )
        ki_sum, ki_logs = self.ki_term(sample, capture)
        # λ = 0: exactly the MLE (no added term, not even a zero)
        loss = mle + self.lam * ki_sum if self.lam != 0.0 else mle

        logging_output = {
            "loss": loss.data,
            "nll_loss": nll.data,
            **ki_logs,
            **batch_counts(sample, sample_size),
        }
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Sum the logs: loss per sample_size and nll_loss per target token (base 2, as fairseq),
        ppl, and the KI metrics of :func:`log_ki_metrics`."""
        log_ki_metrics(reduce_mle_metrics(logging_outputs, per_sample_losses=()))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
