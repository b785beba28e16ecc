"""Source entropy (Csáky et al., 2019; negative distillation paper, Eq. 4) and the split of the
training pairs into the negative training set D_N (highest entropy) and the rest.

For a response r of the training set D::

    H_src(r, D) = - sum_{(q_i, r) in D} p(q_i | r) log p(q_i | r),
    p(q_i | r)  = count(q_i, r) / count(r)          (relative pair frequencies)

i.e. the entropy of the distribution of the queries that r answers. A response that answers n
different queries once each has H = log n (2 bits for n = 4 with ``--log-base 2``); a response
seen once has H = 0. Every pair gets the score of its response (one float per line of
``train.scores``, aligned with the input pairs).

Choices the paper leaves open (all options, defaults in brackets):

- ``--log-base`` [2]: the authors' ``entropy_score_train.txt`` is in bits (its most common
  non-zero values are 1 = log2 2, 0.918 = H(1/3, 2/3), 1.585 = log2 3, 1.5 = H(1/2, 1/4, 1/4)).
- ``--normalize`` [ws]: how utterances are made comparable before counting, applied to responses
  and (unless ``--raw-queries``) queries alike: any of ``lower`` (case), ``punct`` (drop
  punctuation), ``ws`` (collapse whitespace), or ``none``. Normalisation only groups strings for
  counting; the written pairs are the input lines unchanged.
- duplicate pairs: the counts are taken over the input as it is, so a pair present k times
  counts k times (run on de-duplicated pairs, as prepare-dailydialog --dedup writes them, and
  every distinct query counts once).
- ``--ratio`` [0.5]: D_N = the first ``floor(ratio * n)`` pairs of the order "score descending,
  then input line ascending" (the paper's top 50%, following Akama et al., 2020). Ties at the cut
  are therefore broken deterministically by position in the input: of the pairs scoring exactly
  the cut value, the earliest lines go to D_N. ``stats.json`` records how many tied pairs fell on
  each side. ``--tie-break shorter`` instead puts the tied pairs with the shortest responses
  (in whitespace tokens) into D_N first, then by line. Both subsets keep the input order of
  their pairs.

  Why it matters: on exact strings most DailyDialog responses occur once (87% of the rebuilt
  train pairs score 0), so the 50% cut falls inside the zeros and most of D_N is chosen by the
  tie-break, not by entropy. ``--ratio`` (e.g. the share of non-zero pairs, stats.json
  ``nonzero_share``) or ``--tie-break shorter`` (short responses are the generic ones) are the
  documented ways to keep D_N generic; the paper's default (top 50%) stays the default.

Outputs under ``--output``:

- ``train.scores``: one score per input pair;
- ``negative/train.{src,tgt}`` (D_N, top) and ``bottom/train.{src,tgt}`` (the rest, the paper's
  D_b of Table 6), each with ``train.ids`` (0-based input line numbers) and copies of the input's
  ``valid``/``test`` files, so ``fairseq-preprocess`` runs on each folder as on the full data;
- ``stats.json``: distribution summary, share of zeros, cut value, tie counts, the most
  many-to-one responses.

Usage::

    source-entropy --input work/dailydialog/tok --output work/dailydialog/entropy
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import string
import unicodedata
from collections import Counter, defaultdict
from typing import Callable, Iterable, Sequence

from tqdm import tqdm

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from informative_dialogue.cli import setup_logging, console_script
from data_prep.common import write_stats

logger = logging.getLogger(__name__)

NORMALIZERS = ("none", "lower", "punct", "ws")
_PUNCT = set(string.punctuation) | {"’", "‘", "“", "”", "…", "–", "—"}


def make_normalizer(spec: str | Sequence[str]) -> Callable[[str], str]:
    """Return a function str -> str applying the comma-separated normalisations of ``spec``
    (``lower``, ``punct``, ``ws``; ``none`` = identity), in the fixed order lower, punct, ws."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in NORMALIZERS]
    if unknown:
        raise ValueError(f"unknown normalisation(s) {unknown}; expected some of {NORMALIZERS}")
    chosen = set(names) - {"none"}

    def normalize(text: str) -> str:
        if "lower" in chosen:
            text = text.lower()
        if "punct" in chosen:
            text = "".join(
                " " if (ch in _PUNCT or unicodedata.category(ch).startswith("P")) else ch for ch in text
            )
        if "ws" in chosen or "punct" in chosen:
            text = " ".join(text.split())
        return text

    return normalize


def response_entropies(
    queries: Sequence[str], responses: Sequence[str], log_base: float = 2.0
) -> dict[str, float]:
    """Source entropy of every distinct response (Eq. 4): ``{response: H_src(response)}``.

    ``queries[i]`` and ``responses[i]`` form pair i; strings are compared as given (normalise
    them first). ``p(q|r) = count(q, r) / count(r)`` over the pairs, duplicates included.
    """
    if len(queries) != len(responses):
        raise ValueError(f"{len(queries)} queries but {len(responses)} responses")
    if log_base <= 0 or log_base == 1:
        raise ValueError(f"log_base must be positive and != 1, got {log_base}")
    by_response: dict[str, Counter] = defaultdict(Counter)
    for q, r in zip(queries, responses):
        by_response[r][q] += 1
    log_b = math.log(log_base)
    entropies = {}
    for r, query_counts in by_response.items():
        total = sum(query_counts.values())
        h = 0.0
        for c in query_counts.values():
            p = c / total
            h -= p * math.log(p)
        entropies[r] = h / log_b + 0.0  # + 0.0 turns -0.0 into 0.0
    return entropies


def pair_scores(
    queries: Sequence[str],
    responses: Sequence[str],
    log_base: float = 2.0,
    normalize: str | Sequence[str] = "ws",
    normalize_queries: bool = True,
) -> list[float]:
    """Per-pair source entropy: the entropy of each pair's (normalised) response."""
    norm = make_normalizer(normalize)
    norm_r = [norm(r) for r in responses]
    norm_q = [norm(q) for q in queries] if normalize_queries else list(queries)
    entropies = response_entropies(norm_q, norm_r, log_base)
    return [entropies[r] for r in norm_r]


def select_top(scores: Sequence[float], ratio: float = 0.5,
               tie_lengths: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """Split pair indices into (top, bottom): top = the first ``floor(ratio * n)`` indices by
    score descending, ties by index ascending -- or, with ``tie_lengths`` (e.g. response lengths
    in tokens), ties by length ascending, then index. Both lists are returned in ascending index
    order."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    k = math.floor(ratio * len(scores))
    if tie_lengths is None:
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    else:
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], tie_lengths[i], i))
    return sorted(order[:k]), sorted(order[k:])


def summarize(scores: Sequence[float], top: Sequence[int], bottom: Sequence[int]) -> dict:
    """Distribution summary of the scores and of the cut between ``top`` and ``bottom``."""
    n = len(scores)
    ordered = sorted(scores)

    def quantile(q: float) -> float:
        if not ordered:
            return float("nan")
        pos = q * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    cut = min(scores[i] for i in top) if top else None
    stats = {
        "pairs": n,
        "mean": sum(scores) / n if n else float("nan"),
        "min": ordered[0] if n else None,
        "max": ordered[-1] if n else None,
        "quantiles": {str(q): quantile(q) for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)},
        "zeros": sum(1 for s in scores if s == 0.0),
        "zeros_share": (sum(1 for s in scores if s == 0.0) / n) if n else float("nan"),
        "nonzero_share": (sum(1 for s in scores if s != 0.0) / n) if n else float("nan"),
        "top_pairs": len(top),
        "bottom_pairs": len(bottom),
        "cut_value": cut,
        "top_mean": sum(scores[i] for i in top) / len(top) if top else None,
        "bottom_mean": sum(scores[i] for i in bottom) / len(bottom) if bottom else None,
        "top_zeros": sum(1 for i in top if scores[i] == 0.0),
    }
    if cut is not None:
        stats["ties_at_cut_in_top"] = sum(1 for i in top if scores[i] == cut)
        stats["ties_at_cut_in_bottom"] = sum(1 for i in bottom if scores[i] == cut)
    return stats


def read_lines(path: str) -> list[str]:
    """Lines of a line-aligned UTF-8 text file without their line ends
    (:func:`informative_dialogue.text_io.read_lines`: only ``\\n`` ends a line; a lone ``\\r``
    or non-UTF-8 bytes are a CorpusError naming the file and line)."""
    try:
        return text_io.read_lines(path)
    except FileNotFoundError as exc:
        raise CorpusError(path, "file not found") from exc


def read_pairs(input_dir: str, split: str = "train") -> tuple[list[str], list[str]]:
    """``{split}.src`` and ``{split}.tgt`` of a prepared folder; they must align and hold no
    empty response."""
    src_path = os.path.join(input_dir, f"{split}.src")
    tgt_path = os.path.join(input_dir, f"{split}.tgt")
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise CorpusError(tgt_path, f"{len(tgt)} lines but {src_path} has {len(src)}")
    for i, r in enumerate(tgt, 1):
        if not r.strip():
            raise CorpusError(tgt_path, "empty response", i)
    return src, tgt


def _write(path: str, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(f"{line}\n")


def write_subset(out_dir: str, input_dir: str, src: list[str], tgt: list[str], ids: list[int],
                 extra_splits: Sequence[str] = ("valid", "test")) -> None:
    """Write ``train.{src,tgt,ids}`` of the selected pairs and copy the input's other splits."""
    os.makedirs(out_dir, exist_ok=True)
    _write(os.path.join(out_dir, "train.src"), (src[i] for i in ids))
    _write(os.path.join(out_dir, "train.tgt"), (tgt[i] for i in ids))
    _write(os.path.join(out_dir, "train.ids"), (str(i) for i in ids))
    for split in extra_splits:
        for side in ("src", "tgt"):
            path = os.path.join(input_dir, f"{split}.{side}")
            if os.path.exists(path):
                shutil.copyfile(path, os.path.join(out_dir, f"{split}.{side}"))
            else:
                logger.warning("%s not found: %s will lack its %s split", path, out_dir, split)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="source-entropy",
        description="Source entropy of each training pair's response (negative distillation Eq. 4) "
        "and the split into the negative set D_N (top) and the rest (bottom).",
    )
    p.add_argument("--input", required=True, help="prepared folder with train.src/train.tgt (+ valid, test)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--ratio", type=float, default=0.5, help="share of pairs in D_N (the top by entropy)")
    p.add_argument("--log-base", type=float, default=2.0, help="logarithm base (2 = bits, as the authors' file)")
    p.add_argument("--normalize", default="ws",
                   help=f"comma-separated normalisations before counting, of {NORMALIZERS}")
    p.add_argument("--raw-queries", action="store_true", help="do not normalise queries (only responses)")
    p.add_argument("--tie-break", choices=["index", "shorter"], default="index",
                   help="order of pairs tied at the cut: input order, or shorter responses first")
    p.add_argument("--split", default="train", help="which split to score and divide")
    p.add_argument("--top-responses", type=int, default=20, help="how many most many-to-one responses stats.json lists")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    src, tgt = read_pairs(args.input, args.split)
    logger.info("%s: %d pairs", args.input, len(src))
    norm = make_normalizer(args.normalize)
    norm_r = [norm(r) for r in tqdm(tgt, desc="normalise", unit="pair")]
    norm_q = list(src) if args.raw_queries else [norm(q) for q in src]
    entropies = response_entropies(norm_q, norm_r, args.log_base)
    scores = [entropies[r] for r in norm_r]
    lengths = [len(r.split()) for r in tgt] if args.tie_break == "shorter" else None
    top, bottom = select_top(scores, args.ratio, lengths)

    n_queries = Counter(norm_r)
    most = sorted(entropies.items(), key=lambda kv: (-kv[1], kv[0]))[: args.top_responses]
    stats = summarize(scores, top, bottom)
    stats.update({
        "input": os.path.abspath(args.input),
        "split": args.split,
        "ratio": args.ratio,
        "log_base": args.log_base,
        "normalize": args.normalize,
        "normalize_queries": not args.raw_queries,
        "tie_break": args.tie_break,
        "distinct_responses": len(entropies),
        "most_many_to_one": [{"response": r, "pairs": n_queries[r], "entropy": h} for r, h in most],
    })
    # scores, both subsets and stats.json are staged and moved into --output together
    with text_io.staged_directory(args.output) as stage:
        _write(os.path.join(stage, f"{args.split}.scores"), (repr(s) for s in scores))
        extra = [s for s in ("train", "valid", "test") if s != args.split]
        write_subset(os.path.join(stage, "negative"), args.input, src, tgt, top, extra)
        write_subset(os.path.join(stage, "bottom"), args.input, src, tgt, bottom, extra)
        write_stats(stage, stats)

    logger.info("D_N: %d pairs (cut %.4f), bottom: %d pairs, zeros %.1f%%",
                len(top), stats["cut_value"] if top else float("nan"), len(bottom), 100 * stats["zeros_share"])
    return stats


cli = console_script(main)  # the console script: exit status 0 on success

if __name__ == "__main__":
    main()
