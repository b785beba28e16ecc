"""One report for several trained systems on the same test set: how each one trained, what each
decoder scored, how many distinct responses it gave, and paired-bootstrap differences against a
baseline -- the converged comparison tables of ``examples/*/RESULTS.md``.

    python3 -m analysis.method_comparison --baseline baseline \\
        --system baseline=work/dailydialog/checkpoints/transformer_compact_seed1 \\
        --system KI=work/dailydialog/checkpoints/ki_compact_seed1 \\
        --ref work/dailydialog/tok/test.tgt [--knowledge FILE] [--decoders greedy beam5] [--markdown out.md]

Each ``--system NAME=DIR`` is a checkpoint folder as the recipes leave it: ``DIR/train.log``
(fairseq, ``--log-format simple``; read by :mod:`analysis.training_curve`),
``DIR/gen/SUBSET.DECODER.out`` (fairseq-generate) and ``DIR/gen/SUBSET.DECODER.metrics.json``
(dialog-metrics, written by ``evaluate.sh``). A decoder ``SUBDIR/NAME`` reads ``DIR/SUBDIR``
instead of ``DIR/gen`` (``gen_kid/sample``: ``generate_kid.sh``'s outputs), and a NAME with
``*`` stands for every output of the baseline's folder it matches (``gen_kid/kid.*``). The report has one training table (epochs, best
epoch, updates and validation NLL at the best epoch, how the run ended, seconds in training
steps) and one table per decoder: the dialog-metrics columns ``--columns``, the number of
distinct responses, and for every system but the baseline the paired-bootstrap difference with
the baseline (``paired-bootstrap``: F1 and ROUGE-L against ``--ref``, and knowledge F1 when
``--knowledge`` is given), in points with its 95 % interval. A missing file is an error naming
it; ``--allow-missing`` leaves that system's cells empty instead (a run still training).
"""
from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from analysis.paired_bootstrap import main as paired_bootstrap_main
from analysis.training_curve import TrainingCurve, read_training_log
from dialogue_metrics.readers import parse_gen_out
from dialogue_metrics.report import format_value
from dialogue_metrics.registry import BY_KEY
from informative_dialogue.cli import setup_logging

logger = logging.getLogger(__name__)

__all__ = ["System", "parse_system", "expand_decoders", "distinct_responses", "training_table", "decoder_table",
           "main"]

DEFAULT_COLUMNS = ("ppl", "bleu4", "rougeL", "f1", "dist1", "dist2", "dist3", "lf", "kl2", "safe", "avg_len")
MISSING = "–"


@dataclass(frozen=True)
class System:
    """A named checkpoint folder."""

    name: str
    path: Path

    def gen(self, subset: str, decoder: str, suffix: str) -> Path:
        """``DIR/SUBDIR/SUBSET.NAME.SUFFIX`` of decoder ``[SUBDIR/]NAME`` (SUBDIR default ``gen``)."""
        sub, _, name = decoder.rpartition("/")
        return self.path / (sub or "gen") / f"{subset}.{name}.{suffix}"


def expand_decoders(specs: Sequence[str], base: System, subset: str) -> List[str]:
    """The decoders of ``specs`` with each pattern (``*``, ``?``, ``[``) replaced by the outputs of
    ``base``'s folder that match it, in name order; FileNotFoundError when one matches none."""
    out: List[str] = []
    for spec in specs:
        sub, _, name = spec.rpartition("/")
        if not any(c in name for c in "*?["):
            out.append(spec)
            continue
        folder = base.path / (sub or "gen")
        found = sorted(m.name[len(subset) + 1:-len(".out")] for m in folder.glob(f"{subset}.{name}.out"))
        if not found:
            raise FileNotFoundError(f"no {subset}.{name}.out in {folder} (decoder {spec!r})")
        out += [f"{sub}/{f}" if sub else f for f in found]
    return out


def parse_system(spec: str) -> System:
    """``NAME=DIR`` -> :class:`System` (ValueError for anything else)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--system expects NAME=DIR, got {spec!r}")
    return System(name, Path(path))


def distinct_responses(gen_out: Path) -> int:
    """Distinct hypotheses (exact string match) of a fairseq-generate output."""
    with gen_out.open(encoding="utf-8") as f:
        out = parse_gen_out(f.read().splitlines(), str(gen_out))
    return len(Counter(out.hypotheses))


def training_table(curves: Dict[str, Optional[TrainingCurve]]) -> str:
    """Markdown: one row per system (``None``: no log yet)."""
    lines = ["| System | epochs | best epoch | updates at best | valid NLL at best | ended by | s in training steps |",
             "|:---|---:|---:|---:|---:|:---|---:|"]
    for name, c in curves.items():
        if c is None:
            lines.append(f"| {name} | {MISSING} | {MISSING} | {MISSING} | {MISSING} | no log | {MISSING} |")
            continue
        ended = (f"early stop (patience {c.early_stop_patience})" if c.early_stop_patience is not None
                 else "max epoch" if c.done_seconds is not None else "unfinished")
        lines.append(f"| {name} | {len(c.epochs)} | {c.best_epoch} | {c.updates_at_best} | {c.best_value:.3f} | "
                     f"{ended} | {c.train_seconds:.0f} |")
    return "\n".join(lines) + "\n"


def _diff_cell(result: Optional[dict]) -> str:
    if result is None:
        return MISSING
    return f"{100 * result['diff']:+.2f} [{100 * result['ci_low']:+.2f}, {100 * result['ci_high']:+.2f}]"


def decoder_table(rows: Dict[str, Optional[dict]], distinct: Dict[str, Optional[int]],
                  diffs: Dict[str, Dict[str, dict]], columns: Sequence[str], diff_metrics: Sequence[str]) -> str:
    """Markdown: per system its dialog-metrics values (``rows``; ``None``: not scored), its
    distinct responses, and ``diffs[name][metric]`` (paired-bootstrap results; the baseline
    has none)."""
    diff_headers = [f"Δ{BY_KEY[m].header.replace(' (%)', '')} vs baseline [95% CI]" for m in diff_metrics]
    headers = ["System", *(BY_KEY[k].header for k in columns), "distinct responses", *diff_headers]
    lines = ["| " + " | ".join(headers) + " |", "|:---|" + "---:|" * (len(headers) - 1)]
    for name, metrics in rows.items():
        values = [format_value(k, metrics.get(k)) if metrics else MISSING for k in columns]
        count = distinct.get(name)
        cells = [name, *values, MISSING if count is None else str(count),
                 *(_diff_cell(diffs.get(name, {}).get(m)) for m in diff_metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bootstrap(base: Path, other: Path, ref: str, knowledge: Optional[str], metrics: Sequence[str],
               resamples: int) -> Dict[str, dict]:
    argv = ["--a", str(base), "--b", str(other), "--ref", ref, "--metrics", ",".join(metrics),
            "--wordpiece-detok", "--resamples", str(resamples)]
    if knowledge:
        argv += ["--knowledge", knowledge]
    return {r["metric"]: r for r in paired_bootstrap_main(argv)}


def main(argv: Optional[Sequence[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", action="append", required=True, help="NAME=DIR (repeatable; table order)")
    p.add_argument("--baseline", required=True, help="the NAME the others are compared with")
    p.add_argument("--ref", required=True, help="references, one per test example (tokenised, as evaluate.sh)")
    p.add_argument("--knowledge", help="grounding knowledge per test example (adds knowledge F1 differences)")
    p.add_argument("--subset", default="test")
    p.add_argument("--decoders", nargs="+", default=["greedy", "beam5"],
                   help="[SUBDIR/]NAME of each output (SUBDIR default gen; NAME may hold * patterns)")
    p.add_argument("--columns", default=",".join(DEFAULT_COLUMNS), help="dialog-metrics keys to show")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--allow-missing", action="store_true", help="empty cells for systems without outputs yet")
    p.add_argument("--markdown", help="write the report here (it is logged in any case)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    try:
        systems = [parse_system(s) for s in args.system]
        names = [s.name for s in systems]
        if len(set(names)) != len(names):
            raise ValueError(f"--system names repeat: {names}")
        if args.baseline not in names:
            raise ValueError(f"--baseline {args.baseline!r} is not one of the systems {names}")
        columns = [c for c in args.columns.split(",") if c]
        unknown = [c for c in columns if c not in BY_KEY]
        if unknown:
            raise ValueError(f"unknown --columns {unknown}; expected keys of {sorted(BY_KEY)}")
    except ValueError as e:
        p.error(str(e))
    diff_metrics = ["f1", "rougeL"] + (["kf1"] if args.knowledge else [])
    base = next(s for s in systems if s.name == args.baseline)

    def need(path: Path) -> bool:
        if path.is_file():
            return True
        if args.allow_missing:
            logger.warning("not found (cells left empty): %s", path)
            return False
        raise FileNotFoundError(f"{path} not found (--allow-missing leaves the cells empty)")

    curves = {s.name: read_training_log(s.path / "train.log") if need(s.path / "train.log") else None
              for s in systems}
    parts = [f"Training (`{args.subset}` outputs; best epoch by validation NLL)", "", training_table(curves)]
    for decoder in expand_decoders(args.decoders, base, args.subset):
        rows: Dict[str, Optional[dict]] = {}
        distinct: Dict[str, Optional[int]] = {}
        diffs: Dict[str, Dict[str, dict]] = {}
        base_out = base.gen(args.subset, decoder, "out")
        for s in systems:
            metrics_file, out = s.gen(args.subset, decoder, "metrics.json"), s.gen(args.subset, decoder, "out")
            rows[s.name] = json.loads(metrics_file.read_text(encoding="utf-8")) if need(metrics_file) else None
            distinct[s.name] = distinct_responses(out) if need(out) else None
            if s.name != base.name and distinct[s.name] is not None and need(base_out):
                diffs[s.name] = _bootstrap(base_out, out, args.ref, args.knowledge, diff_metrics, args.resamples)
        parts += ["", f"Decoder `{decoder}`", "", decoder_table(rows, distinct, diffs, columns, diff_metrics)]
    report = "\n".join(parts)
    if args.markdown:
        Path(args.markdown).write_text(report, encoding="utf-8")
    logger.info("\n%s", report)
    return report


if __name__ == "__main__":
    main()
