"""Training the token-level knowledge retriever of knowledge internalization (KI, paper 4.2):
the in-batch hinge loss, the training loop and the validation accuracy.

Training (4.2): a batch of B sentences. Token side: **word level**, exactly as at mining time:
each sentence is normalised and pre-tokenised by the BERT tokenizer (lower-casing, splitting on
whitespace and punctuation), and a word's state is its first WordPiece's state
(``word_states``). Training words are all encoded words of all sentences, minus (with
``--skip-stopwords``, default on) spaCy stop words and words without a letter or digit -- the
miner masks them anyway. Knowledge side: ``f(g(K))`` of the B sentences. Scores ``(T, B)`` =
``f(h_t)^T f(g(K_b))``. Loss, per token t with own sentence p (Eq. 3 form)::

    l_t = mean over negatives j of max(0, margin - r(t, K_p) + r(t, K_j))

negatives: all other B-1 sentences of the batch (``--negatives 0``, default) or ``n`` of them
drawn uniformly without replacement per token (``--negatives n``; the paper uses one). The batch
loss is the mean of ``l_t`` over training tokens. AdamW, ``--lr`` for both BERTs,
``--projection-lr`` for ``f``, linear warm-up (``--warmup-ratio``) then linear decay, gradient
clipping ``--clip-norm``.

Validation accuracy: share of held-out training tokens whose own sentence has the highest score,
among the knowledge of their validation batch (``--batch-size`` sentences; ``acc_batch``) and
among the whole validation set (``acc_all``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from data_prep.ki.retriever import TokenKnowledgeRetriever
from data_prep.ki.retriever_data import TrainingSentence

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# loss


def hinge_loss(
    scores: torch.Tensor,
    positive: torch.Tensor,
    margin: float = 1.0,
    negatives: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean over tokens of the Eq. 3 hinge, averaged over each token's negatives.

    scores: (T, B) relevance of each token to each knowledge item of the batch;
    positive: (T,) long, the column of each token's own knowledge. ``negatives`` 0 (or >= B-1):
    every other column; n: n other columns drawn uniformly without replacement per token
    (``generator``). Returns a scalar; 0 when T == 0. Raises ``ValueError`` if B < 2.
    """
    n_tokens, n_items = scores.shape
    if n_items < 2:
        raise ValueError("the hinge loss needs at least 2 knowledge items in the batch (in-batch negatives)")
    if n_tokens == 0:
        return scores.sum() * 0.0
    rows = torch.arange(n_tokens, device=scores.device)
    pos = scores[rows, positive]  # (T,)
    terms = torch.clamp(margin - pos.unsqueeze(1) + scores, min=0.0)  # (T, B)
    is_neg = torch.ones_like(scores, dtype=torch.bool)
    is_neg[rows, positive] = False
    if 0 < negatives < n_items - 1:
        noise = torch.rand(scores.shape, generator=generator, device="cpu").to(scores.device)
        noise[~is_neg] = 2.0  # never picked
        picked = noise.topk(negatives, dim=1, largest=False).indices  # (T, n)
        return terms.gather(1, picked).mean()
    return (terms * is_neg).sum(1).div(n_items - 1).mean()


def batch_scores(
    model: TokenKnowledgeRetriever, batch: Sequence[TrainingSentence], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (T, B) of the batch's training tokens against its knowledge, and each token's own
    column (T,). Training tokens: words encoded in full and marked trainable."""
    states, encoded = model.word_states([list(s.words) for s in batch], max_length=max_length)  # (B, W, H), (B, W)
    trainable = torch.zeros_like(encoded)
    for i, s in enumerate(batch):
        trainable[i, : len(s.trainable)] = torch.tensor(s.trainable, dtype=torch.bool)
    keep = encoded & trainable
    tokens = model.project(states[keep])  # (T, P)
    owner = torch.arange(len(batch), device=keep.device).unsqueeze(1).expand_as(keep)[keep]  # (T,)
    knowledge = model.project(model.knowledge_states([s.text for s in batch], max_length=max_length))  # (B, P)
    return tokens @ knowledge.T, owner


# --------------------------------------------------------------------------------------------
# validation


@torch.no_grad()
def validation_accuracy(
    model: TokenKnowledgeRetriever, sentences: Sequence[TrainingSentence], batch_size: int, max_length: int
) -> dict[str, float]:
    """``acc_batch``: share of training tokens whose own sentence scores highest among their
    batch's knowledge (consecutive chunks of ``batch_size``); ``acc_all``: among all the
    validation knowledge; ``tokens``: how many tokens were scored."""
    if not sentences:
        return {"acc_batch": float("nan"), "acc_all": float("nan"), "tokens": 0}
    _, know = model.encode_knowledge([s.text for s in sentences], batch_size=batch_size, max_length=max_length, progress=False)
    vectors, encoded = model.encode_words([list(s.words) for s in sentences], max_length=max_length, batch_size=batch_size)
    trainable = np.concatenate([np.asarray(s.trainable, dtype=bool) for s in sentences])
    owner = np.concatenate([np.full(len(s.words), i, dtype=np.int64) for i, s in enumerate(sentences)])
    keep = encoded & trainable
    vectors, owner = vectors[keep], owner[keep]
    if len(owner) == 0:
        return {"acc_batch": float("nan"), "acc_all": float("nan"), "tokens": 0}
    scores = vectors @ know.T  # (T, N)
    acc_all = float((scores.argmax(1) == owner).mean())
    chunk = owner // batch_size
    col_chunk = np.arange(len(sentences)) // batch_size
    masked = np.where(chunk[:, None] == col_chunk[None, :], scores, -np.inf)
    acc_batch = float((masked.argmax(1) == owner).mean())
    return {"acc_batch": acc_batch, "acc_all": acc_all, "tokens": int(len(owner))}


# --------------------------------------------------------------------------------------------
# training


@dataclass
class TrainConfig:
    """Optimisation settings (see the module docstring)."""

    batch_size: int = 32
    epochs: int | None = None
    max_steps: int | None = None
    lr: float = 2e-5
    projection_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    clip_norm: float = 1.0
    margin: float = 1.0
    negatives: int = 0
    max_length: int = 64
    seed: int = 1
    log_interval: int = 10
    max_seconds: float | None = None


@dataclass
class TrainResult:
    """Loss of every step, wall time and step count."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def train_retriever(
    model: TokenKnowledgeRetriever, sentences: Sequence[TrainingSentence], config: TrainConfig, progress: bool = True
) -> TrainResult:
    """Train ``model`` in place on ``sentences``; deterministic for ``config.seed`` (the batch
    order, dropout and negative sampling all follow it)."""
    if len(sentences) < 2:
        raise ValueError(f"need at least 2 training sentences for in-batch negatives, got {len(sentences)}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    neg_gen = torch.Generator().manual_seed(config.seed)
    per_epoch = math.ceil(len(sentences) / config.batch_size)
    if config.epochs is None and config.max_steps is None:
        total = per_epoch  # one epoch
    elif config.epochs is None:
        total = config.max_steps
    elif config.max_steps is None:
        total = per_epoch * config.epochs
    else:
        total = min(per_epoch * config.epochs, config.max_steps)
    if total < 1:
        raise ValueError("nothing to train: epochs and max_steps give 0 steps")
    encoders = [p for n, p in model.named_parameters() if not n.startswith("projection.")]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoders, "lr": config.lr},
            {"params": list(model.projection.parameters()), "lr": config.projection_lr},
        ],
        weight_decay=config.weight_decay,
    )
    warmup = int(config.warmup_ratio * total)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    result = TrainResult()
    start = time.perf_counter()
    step = 0
    with tqdm(total=total, desc="train retriever", unit="step", disable=not progress) as bar:
        while step < total:
            order = rng.permutation(len(sentences))
            for lo in range(0, len(order), config.batch_size):
                if step >= total:
                    break
                if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
                    logger.warning("time budget of %.0f s reached: stopping after %d of %d steps", config.max_seconds, step, total)
                    total = step
                    break
                batch = [sentences[i] for i in order[lo : lo + config.batch_size]]
                if len(batch) < 2:  # a last batch of one has no negatives
                    continue
                scores, owner = batch_scores(model, batch, config.max_length)
                loss = hinge_loss(scores, owner, config.margin, config.negatives, neg_gen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                result.losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
                if step % config.log_interval == 0 or step == total:
                    recent = result.losses[-config.log_interval :]
                    logger.info("step %d/%d loss %.4f (mean of last %d)", step, total, float(np.mean(recent)), len(recent))
    result.steps = step
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
