"""How a fairseq training run went, from its log: the validation curve, the best epoch, whether
early stopping ended it, and its wall times -- the "epochs it took" of a RESULTS table.

    python3 -m analysis.training_curve work/dailydialog/checkpoints/transformer_compact_seed1/train.log \\
        [--metric nll_loss] [--markdown curve.md] [--json curve.json]
    python3 -m analysis.training_curve LOG --metric nll_loss --stopping-point 3 60   # -> "CAP LAST"

Reads fairseq's ``simple`` log format (``--log-format simple``, the recipes' choice): the
per-epoch ``valid on '<subset>' subset`` lines, the per-epoch ``train`` summaries
(``train_wall``: seconds in training steps during that epoch; ``wall``: seconds since the
process started), fairseq's ``early stop since valid
performance hasn't improved for last N runs`` and ``done training in S seconds``. A log that
holds several runs (a resumed run appends to the same ``train.log``) is read as one run: an
epoch logged twice keeps its last line. The best epoch minimises ``--metric`` (fairseq's
``--best-checkpoint-metric``; the recipes use ``nll_loss`` for every criterion).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from informative_dialogue.cli import setup_logging

logger = logging.getLogger(__name__)

__all__ = ["NoValidationError", "EpochRecord", "TrainingCurve", "StoppingPoint", "read_training_log",
           "stopping_point", "markdown_table"]

_EPOCH = re.compile(r"\|\s*epoch (\d+)\s*\|")
_FIELD = re.compile(r"\|\s*([A-Za-z_0-9]+) ([-+0-9.eE]+|inf|nan)(?=\s*(\||$))")
_EARLY = re.compile(r"early stop since valid performance hasn't improved for last (\d+) runs")
_DONE = re.compile(r"done training in ([0-9.]+) seconds")


class NoValidationError(ValueError):
    """A training log without any validation line of the subset asked for."""


@dataclass
class EpochRecord:
    """One epoch: its validation numbers (``valid``: loss, nll_loss, ppl, num_updates, ...)
    and its training summary's ``train_wall`` (this epoch's seconds in training steps) and
    ``wall`` (seconds since the process started) (None if absent)."""

    epoch: int
    valid: Dict[str, float] = field(default_factory=dict)
    train_wall: Optional[float] = None
    wall: Optional[float] = None


@dataclass
class TrainingCurve:
    """A run: its epochs in order, the best epoch by ``metric``, and how it ended."""

    path: str
    metric: str
    epochs: List[EpochRecord]
    best_epoch: int
    best_value: float
    early_stop_patience: Optional[int]  # N of fairseq's early-stop message; None: it did not stop early
    done_seconds: Optional[float]  # fairseq's "done training in S seconds"; None: unfinished run

    @property
    def train_seconds(self) -> float:
        """Seconds in training steps over all epochs (the sum of the epochs' ``train_wall``)."""
        return sum(e.train_wall or 0.0 for e in self.epochs)

    @property
    def updates_at_best(self) -> Optional[int]:
        rec = next(e for e in self.epochs if e.epoch == self.best_epoch)
        n = rec.valid.get("num_updates")
        return None if n is None else int(n)


def _fields(line: str) -> Dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in _FIELD.finditer(line) if m.group(1) != "epoch"}


def read_training_log(path: str | Path, metric: str = "nll_loss", subset: str = "valid") -> TrainingCurve:
    """Parse a fairseq ``simple``-format training log (module doc).

    Raises:
        FileNotFoundError: no such file.
        NoValidationError: no validation line of ``subset`` (a ValueError).
        ValueError: a validation line without ``metric``, naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    epochs: Dict[int, EpochRecord] = {}
    early: Optional[int] = None
    done: Optional[float] = None
    valid_tag = f"valid on '{subset}' subset"
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if (m := _EARLY.search(line)) is not None:
                early = int(m.group(1))
                continue
            if (m := _DONE.search(line)) is not None:
                done = float(m.group(1))
                continue
            epoch = _EPOCH.search(line)
            if epoch is None:
                continue
            n = int(epoch.group(1))
            if valid_tag in line:
                values = _fields(line)
                if metric not in values:
                    raise ValueError(f"{path}:{lineno}: validation line without '{metric}' "
                                     f"(has {', '.join(sorted(values)) or 'no fields'})")
                epochs.setdefault(n, EpochRecord(n)).valid = values
            elif "| train |" in line:
                values = _fields(line)
                rec = epochs.setdefault(n, EpochRecord(n))
                rec.train_wall, rec.wall = values.get("train_wall"), values.get("wall")
    validated = [epochs[n] for n in sorted(epochs) if epochs[n].valid]
    if not validated:
        raise NoValidationError(f"{path}: no \"{valid_tag}\" line (expected fairseq's --log-format simple log "
                         f"of a run that validated at least once)")
    best = min(validated, key=lambda e: (e.valid[metric] if not math.isnan(e.valid[metric]) else math.inf, e.epoch))
    return TrainingCurve(str(path), metric, [epochs[n] for n in sorted(epochs)], best.epoch, best.valid[metric],
                         early, done)


@dataclass(frozen=True)
class StoppingPoint:
    """Where a run with early stopping stands: ``cap``, the epoch after which an uninterrupted
    run would have stopped given the epochs logged so far, and ``last_epoch``, the last epoch
    validated (0: none)."""

    cap: int
    last_epoch: int

    @property
    def finished(self) -> bool:
        return self.last_epoch >= self.cap


def stopping_point(path: str | Path, patience: int, max_epoch: int, metric: str = "nll_loss",
                   subset: str = "valid") -> StoppingPoint:
    """The epoch at which one uninterrupted fairseq run with ``--patience`` and ``--max-epoch``
    would stop, from the run's log so far: ``min(max_epoch, best epoch + patience)``, and
    ``max_epoch`` while no epoch has been validated (no log yet, or a run stopped in its first
    epoch) or when ``patience <= 0`` (fairseq's "no early stopping").

    Why: fairseq keeps its patience count (``should_stop_early.best`` and ``.num_runs``) in
    process memory, not in the checkpoint, so a resumed run starts counting afresh from its
    first validation, and an interrupted run trains longer than an uninterrupted one would.
    Training a resumed run with ``--max-epoch`` set to this cap, and again while the cap moves
    (a new best epoch raises it), ends it where one uninterrupted run ends. fairseq's own count
    after a resume never exceeds the true one (its remembered best is never better than the
    run's best), so fairseq never stops such a run before the cap.

    Raises:
        ValueError: ``max_epoch < 1``, or the log's errors of :func:`read_training_log` other
            than "no validation line".
    """
    if max_epoch < 1:
        raise ValueError(f"max_epoch must be at least 1, got {max_epoch}")
    path = Path(path)
    if not path.is_file():
        return StoppingPoint(max_epoch, 0)
    try:
        curve = read_training_log(path, metric, subset)
    except NoValidationError:
        return StoppingPoint(max_epoch, 0)
    last = max(e.epoch for e in curve.epochs if e.valid)
    cap = max_epoch if patience <= 0 else min(max_epoch, curve.best_epoch + patience)
    return StoppingPoint(cap, last)


def markdown_table(curve: TrainingCurve) -> str:
    """A markdown summary line and a per-epoch table (epoch, updates, valid loss / nll / ppl,
    the epoch's train_wall and the process's wall seconds; the best epoch in bold)."""
    end = (f"early stopping (patience {curve.early_stop_patience})" if curve.early_stop_patience is not None
           else "finished" if curve.done_seconds is not None else "unfinished (still running or stopped)")
    lines = [
        f"`{curve.path}`: {len(curve.epochs)} epochs, best epoch {curve.best_epoch} "
        f"({curve.metric} {curve.best_value:.3f}, {curve.updates_at_best} updates), {end}"
        + (f", done in {curve.done_seconds:.0f} s" if curve.done_seconds is not None else "")
        + f", {curve.train_seconds:.0f} s in training steps",
        "",
        "| epoch | updates | valid loss | valid nll_loss | valid ppl | epoch train_wall (s) | wall (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(v: Optional[float], fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    for e in curve.epochs:
        row = [str(e.epoch), cell(e.valid.get("num_updates"), ".0f"), cell(e.valid.get("loss"), ".3f"),
               cell(e.valid.get("nll_loss"), ".3f"), cell(e.valid.get("ppl"), ".2f"),
               cell(e.train_wall, ".0f"), cell(e.wall, ".0f")]
        if e.epoch == curve.best_epoch:
            row = [f"**{c}**" if c else c for c in row]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> TrainingCurve | StoppingPoint:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="fairseq train.log (--log-format simple)")
    p.add_argument("--metric", default="nll_loss", help="the best-checkpoint metric (lower is better)")
    p.add_argument("--subset", default="valid")
    p.add_argument("--markdown", help="write the table here (it is logged in any case)")
    p.add_argument("--json", help="write the parsed curve here")
    p.add_argument("--stopping-point", nargs=2, type=int, metavar=("PATIENCE", "MAX_EPOCH"),
                   help="print only 'CAP LAST' (stopping_point: the epoch an uninterrupted run with this "
                        "--patience and --max-epoch stops at, and the last validated epoch; a missing log is "
                        "a run not started yet) and exit")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if args.stopping_point is not None:
        try:
            point = stopping_point(args.log, *args.stopping_point, metric=args.metric, subset=args.subset)
        except (OSError, ValueError) as e:
            p.error(str(e))
        sys.stdout.write(f"{point.cap} {point.last_epoch}\n")  # the CLI's answer, for shell recipes
        return point
    try:
        curve = read_training_log(args.log, args.metric, args.subset)
    except (OSError, ValueError) as e:
        p.error(str(e))
    table = markdown_table(curve)
    if args.markdown:
        Path(args.markdown).write_text(table, encoding="utf-8")
        logger.info("wrote %s", args.markdown)
    logger.info("\n%s", table)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(curve) | {"updates_at_best": curve.updates_at_best,
                                                               "train_seconds": curve.train_seconds}, indent=2),
                                   encoding="utf-8")
    return curve


if __name__ == "__main__":
    main()
