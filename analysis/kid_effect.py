"""What a KID configuration did to a model's outputs, against plain decoding with the same seed.

Input: a sweep description (``sweep.json``, written by ``examples/rocstories/kid_sweep.py``) that
names, for every run, its hypothesis file (one output per line, line i = example i), its
baseline run (``null`` for a plain run) and the decoder's own measurements (``stats.kid``:
mean KL(pi* || pi) ... as :class:`~examples.rocstories.endings_decoding.KIDActivity` records
them); plus the references and the knowledge text of every example.

Per run: knowledge F1 (unigram F1 of the output with the example's knowledge text), F1 and
ROUGE-L with the reference (``paired-bootstrap``'s definitions: :func:`per_example_scores`),
Dist-2 over the run, mean length in words, the share of outputs that differ from the
baseline's (exact string comparison, both stripped), and for runs with a baseline the paired
bootstrap of the per-example differences (run - baseline) of kF1, F1 and ROUGE-L: mean and 95%
interval, in points (x 100). ``--tokenize`` picks the tokenisation of Dist-2 and lengths.

Usage::

    python3 -m analysis.kid_effect --sweep DIR/sweep.json --ref tgt --knowledge knowledge \\
        --markdown DIR/effect.md --json DIR/effect.json

or, for ``fairseq-generate`` outputs (examples matched by id; every example of ``--ref`` must be
there), the runs named on the command line, the first (or ``--baseline``) the baseline of the
others, the decoder's measurements read from the ``KID step:`` debug lines of the output or of
its log next to it, ``PATH.log`` (``LOGLEVEL=DEBUG fairseq-generate ... > PATH 2> PATH.log``;
:func:`kid_step_stats`)::

    python3 -m analysis.kid_effect --gen-out plain=sample.out --gen-out kid=kid.out \\
        --ref test.tgt --knowledge test.knowledge --knowledge-drop-token __knowledge__ --wordpiece-detok
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from analysis.paired_bootstrap import paired_bootstrap, per_example_scores
from dialogue_metrics.ngrams import distinct_n
from dialogue_metrics.readers import (
    InputError, check_same_count, drop_tokens, parse_gen_out, read_lines, read_text_lines,
)
from dialogue_metrics.text import tokenize_all, wordpiece_detok
from informative_dialogue.cli import console_script, setup_logging

logger = logging.getLogger(__name__)

__all__ = ["run_effect", "effect_table", "changed_share", "kid_step_stats", "gen_out_runs", "main"]

PAIRED = ("kf1", "f1", "rougeL")


def changed_share(hypotheses: Sequence[str], baseline: Sequence[str]) -> float:
    """Share of examples whose output differs from the baseline's (stripped strings)."""
    check_same_count(hypotheses, "hypotheses", baseline, "baseline hypotheses")
    if not hypotheses:
        raise InputError("no hypotheses")
    return sum(h.strip() != b.strip() for h, b in zip(hypotheses, baseline)) / len(hypotheses)


_KID_STEP = re.compile(r"KID step: (\d+)/(\d+) rows updated, mean KL ([-+0-9.eE]+|nan)")
_KID_KV_STEP = re.compile(r"KID kv step: (\d+)/(\d+) rows updated(?:, mean KL ([-+0-9.eE]+|nan))?")


def kid_step_stats(lines: Sequence[str]) -> Dict[str, Any]:
    """The decoder's measurements from the ``KID step:`` / ``KID kv step:`` debug lines of a
    fairseq-generate output: ``{"kid": {"rows", "updated", "updated_share"[, "kl_mean_updated"]}}``
    (KL: the mean over updated rows, each line's mean weighted by its rows; the lines print it to
    4 decimals), or ``{}`` when the output has no such line."""
    rows = updated = 0
    kl_sum, kl_lines = 0.0, 0
    for line in lines:
        m = _KID_STEP.search(line) or _KID_KV_STEP.search(line)
        if not m:
            continue
        up, n = int(m.group(1)), int(m.group(2))
        if m.group(3) is not None:
            kl_sum += up * float(m.group(3)) if up else 0.0
            kl_lines += 1
        rows += n
        updated += up
    if not rows:
        return {}
    kid: Dict[str, Any] = {"rows": rows, "updated": updated, "updated_share": updated / rows}
    if kl_lines and updated:
        kid["kl_mean_updated"] = kl_sum / updated
    return {"kid": kid}


def gen_out_runs(specs: Sequence[str], n_examples: int, detok: bool) -> Dict[str, Dict[str, Any]]:
    """``NAME=PATH`` fairseq-generate outputs -> {name: {"hyp": hypotheses in id order, "stats"}}.

    ``stats``: :func:`kid_step_stats` of the debug lines in PATH and, if it exists, ``PATH.log``.

    Raises:
        InputError: a spec without ``=``, a repeated name, or an output whose ids are not exactly
            ``0 .. n_examples - 1``.
    """
    runs: Dict[str, Dict[str, Any]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--gen-out {spec!r}: expected NAME=PATH")
        if name in runs:
            raise InputError(f"--gen-out: run name {name!r} given twice")
        lines = read_lines(path)  # read once: the hypotheses and the decoder's debug lines
        gen = parse_gen_out(lines, path)  # InputError without H-/D- lines
        ids = gen.ids
        hyps = [wordpiece_detok(h) for h in gen.hypotheses] if detok else gen.hypotheses
        if ids != list(range(n_examples)):
            missing = sorted(set(range(n_examples)) - set(ids))
            raise InputError(f"{path}: {len(ids)} examples, expected ids 0..{n_examples - 1} (one per reference)"
                             + (f"; first missing id {missing[0]}" if missing else ""))
        if os.path.isfile(path + ".log"):  # fairseq-generate's log, when its logging went to stderr
            lines = lines + read_lines(path + ".log")
        runs[name] = {"hyp": hyps, "stats": kid_step_stats(lines)}
    return runs


def run_effect(
    hypotheses: Sequence[str],
    references: Sequence[str],
    knowledge: Sequence[str],
    baseline: Optional[Sequence[str]] = None,
    resamples: int = 2000,
    seed: int = 0,
    tokenize: str = "13a",
) -> Dict[str, Any]:
    """The metrics of one run (0-100 scale) and, with ``baseline``, its paired differences.

    Returns a dict with ``n``, ``kf1``, ``f1``, ``rougeL``, ``dist2``, ``words`` and, with a
    baseline, ``changed`` (%) and ``delta`` = {metric: {diff, ci_low, ci_high, p_not_better}}.
    """
    check_same_count(hypotheses, "hypotheses", references, "references")
    check_same_count(hypotheses, "hypotheses", knowledge, "knowledge lines")
    scores = {m: per_example_scores(m, hypotheses, knowledge if m == "kf1" else references) for m in PAIRED}
    tokens = tokenize_all(hypotheses, tokenize)
    n = len(hypotheses)
    out: Dict[str, Any] = {"n": n}
    for m in PAIRED:
        out[m] = 100.0 * sum(scores[m]) / n
    out["dist2"] = 100.0 * distinct_n(tokens, 2)
    out["words"] = sum(len(t) for t in tokens) / n
    if baseline is not None:
        out["changed"] = 100.0 * changed_share(hypotheses, baseline)
        base_scores = {m: per_example_scores(m, baseline, knowledge if m == "kf1" else references) for m in PAIRED}
        out["delta"] = {}
        for m in PAIRED:
            r = paired_bootstrap(base_scores[m], scores[m], resamples=resamples, seed=seed, metric=m)
            out["delta"][m] = {"diff": 100 * r.diff, "ci_low": 100 * r.ci_low, "ci_high": 100 * r.ci_high,
                               "p_not_better": r.p_b_not_better}
    return out


def _fmt_delta(d: Mapping[str, float]) -> str:
    return f"{d['diff']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"


def effect_table(results: Mapping[str, Mapping[str, Any]], stats: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of :func:`run_effect` results (rows in the given order); ``stats``: the
    decoder's measurements per run (``kid.kl_mean_updated``, ``kid.argmax_changed_share``)."""
    head = ("| run | kF1 | ΔkF1 [95% CI] | F1 | ΔF1 [95% CI] | ROUGE-L | ΔROUGE-L [95% CI] | Dist-2 | words "
            "| changed % | mean KL | argmax changed % |")
    lines = [head, "|:---|" + "---:|" * (head.count("|") - 2)]
    for name, r in results.items():
        kid = (stats.get(name) or {}).get("kid") or {}
        delta = r.get("delta") or {}
        cells = [
            name, f"{r['kf1']:.2f}", _fmt_delta(delta["kf1"]) if delta else "",
            f"{r['f1']:.2f}", _fmt_delta(delta["f1"]) if delta else "",
            f"{r['rougeL']:.2f}", _fmt_delta(delta["rougeL"]) if delta else "",
            f"{r['dist2']:.2f}", f"{r['words']:.1f}",
            f"{r['changed']:.1f}" if "changed" in r else "",
            f"{kid['kl_mean_updated']:.4f}" if "kl_mean_updated" in kid else "",
            f"{100 * kid['argmax_changed_share']:.2f}" if "argmax_changed_share" in kid else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kid-effect", description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", help="sweep.json: {runs: {name: {hyp, baseline, stats}}}; "
                   "hyp paths relative to its folder")
    p.add_argument("--gen-out", action="append", default=[], metavar="NAME=PATH",
                   help="instead of --sweep: a fairseq-generate output and its run name; repeatable; the "
                   "first (or --baseline) is the baseline of the others")
    p.add_argument("--baseline", help="with --gen-out: the baseline run's name (default: the first)")
    p.add_argument("--wordpiece-detok", action="store_true",
                   help="join ## word pieces of hypotheses, references and knowledge first")
    p.add_argument("--knowledge-drop-token", action="append", default=[], metavar="TOKEN",
                   help="a token removed from the knowledge lines (e.g. a sentence separator); repeatable")
    p.add_argument("--ref", required=True, help="references, one per line")
    p.add_argument("--knowledge", required=True, help="knowledge text of every example, one per line")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenize", default="13a", help="tokenisation of Dist-2 and lengths (dialog-metrics schemes)")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if bool(args.sweep) == bool(args.gen_out):
        raise InputError("give either --sweep or --gen-out NAME=PATH (repeated)")
    refs = read_text_lines(args.ref, args.wordpiece_detok)
    know = drop_tokens(read_text_lines(args.knowledge, args.wordpiece_detok), args.knowledge_drop_token)
    hyps: Dict[str, List[str]] = {}
    runs: Mapping[str, Mapping[str, Any]]
    if args.gen_out:
        outputs = gen_out_runs(args.gen_out, len(refs), args.wordpiece_detok)
        baseline = args.baseline or next(iter(outputs))
        if baseline not in outputs:
            raise InputError(f"--baseline {baseline!r} is not one of the --gen-out runs {list(outputs)}")
        hyps = {name: out["hyp"] for name, out in outputs.items()}
        runs = {name: {"baseline": None if name == baseline else baseline, "stats": out["stats"]}
                for name, out in outputs.items()}
    else:
        with open(args.sweep, encoding="utf-8") as f:
            sweep = json.load(f)
        runs = sweep.get("runs") or {}
        if not runs:
            raise ValueError(f"{args.sweep}: no runs (expected {{'runs': {{name: {{'hyp': ..., 'baseline': ...}}}}}})")
        folder = os.path.dirname(os.path.abspath(args.sweep))
        for name, run in runs.items():
            path = os.path.join(folder, run["hyp"])
            with open(path, encoding="utf-8") as f:
                hyps[name] = f.read().splitlines()
            if len(hyps[name]) != len(refs):
                raise ValueError(f"{path}: {len(hyps[name])} lines, expected {len(refs)} (one per reference)")
    results: Dict[str, Dict[str, Any]] = {}
    for name, run in runs.items():
        base = run.get("baseline")
        if base is not None and base not in runs:
            raise ValueError(f"{args.sweep}: run {name!r} names baseline {base!r}, which is not a run")
        results[name] = run_effect(hyps[name], refs, know, hyps[base] if base else None,
                                   args.resamples, args.seed, args.tokenize)
    table = effect_table(results, {n: r.get("stats") or {} for n, r in runs.items()})
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    logger.info("\n%s", table)
    return 0


cli = console_script(main)

if __name__ == "__main__":
    cli()
