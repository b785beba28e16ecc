#!/usr/bin/env python
"""Training-step cost of the plugin's criteria as ratios to fairseq's plain
``label_smoothed_cross_entropy`` step, measured in one process on the same model and batches.

Set-up: the ``knowledge_dialog`` task on a binarised data dir, a Transformer built from the
command-line architecture flags (default: the recipes' "small" configuration, 3+3 layers,
256/1024, 4 heads, shared embeddings), ``--num-batches`` training batches of ``--max-tokens``
tokens drawn once with a fixed seed. Every criterion gets its own copy of the model (identical
initial weights) and its own Adam optimizer, so each one trains as it would in fairseq-train.

One training step is fairseq's ``Trainer.train_step`` for one batch without distributed/AMP code:
``zero_grad``, ``task.train_step`` (forward, criterion, backward), grads times ``1 / sample_size``,
``clip_grad_norm``, ``optimizer.step()``, ``set_num_updates``; no lr scheduler or metric logging.

Timing: ``--warmup`` untimed steps per criterion, then ``--repeats`` passes over the batches; in a
pass the criteria take turns on each batch, in an order rotated by one per batch (load drift hits
all alike). Reported per criterion: median and IQR of ms/step over all (pass, batch) steps, the
ratio of medians to the baseline, and the median/IQR of the *paired* ratio (the criterion's step
over the baseline's on the same batch in the same pass; the more robust number on a busy machine).

Peak memory, in a separate, untimed step per criterion on the largest batch: *transient* = tensor
bytes allocated during the step above the level at its start (CUDA allocator statistics; on CPU
the running sum of ``torch.profiler``'s allocation/free events: ``step_measures.py``); *static* =
bytes of the tensors the criterion keeps alive between steps (model parameters, optimizer state,
the criterion's parameters/buffers and held tensors: ND's teacher, KI's table), once per storage.

Criteria (``--criteria``, comma-separated keys):

* ``lsce``: ``label_smoothed_cross_entropy`` (smoothing 0.1), the baseline; always run.
* ``nd``: ``negative_distillation`` with its defaults (pred + hid + att, soft targets,
  progressive alpha). ``--teacher-path``: a checkpoint of the same architecture; default a
  random teacher of the same architecture saved to a temporary checkpoint (same cost).
* ``nd_pred``, ``nd_hid``, ``nd_att``: the same with one term only (``--nd-terms``), for the
  breakdown of ND's extra cost (each includes the teacher's forward pass).
* ``ul``: ``unlikelihood`` (token-level vocabulary unlikelihood, greedy generations of up to
  ``--ul-max-len`` tokens) with ``--ul-window 1``, so its penalty term is active from the first
  step (steady-state cost; with the default window of 32 the first 32 steps skip it).
* ``ki``: ``knowledge_internalization``; needs ``sample["knowledge"]`` ``(B, S)`` knowledge ids
  aligned with ``src_tokens`` and a knowledge table ``(N + 1, 384)``. Synthesised here: a random
  float32 table of ``--ki-table-rows`` rows (or ``--ki-knowledge-table PATH``) and, per batch,
  ids drawn uniformly from 1..N for ``--ki-label-fraction`` of the non-pad, non-EOS source tokens
  (0 = no knowledge elsewhere); ``--ki-encoder-dim`` is set to the model's encoder dimension,
  the rest at the criterion's defaults (one negative, projection 256, frozen table).
* ``ki_nd``: ``ki_negative_distillation`` (KI + ND in one run): ``ki``'s table, ids and flags
  with ``nd``'s teacher and defaults. An unregistered criterion is skipped (noted in the JSON).

Writes ``--output`` (JSON); see benchmarks/README.md for the command and results.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from step_measures import (  # benchmarks/ is on the script's path
    held_bytes, quartiles, save_random_checkpoint, timed, transient_peak_bytes)

logger = logging.getLogger("training_step_cost")

SMALL_ARCH = (
    "--arch transformer --share-all-embeddings --activation-fn relu --encoder-layers 3 --decoder-layers 3 "
    "--encoder-embed-dim 256 --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024 "
    "--encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.1"
)
CRITERION_NAMES = {
    "lsce": "label_smoothed_cross_entropy",
    "nd": "negative_distillation",
    # one ND term at a time (--nd-terms), for the breakdown of ND's cost: each pays the
    # teacher's forward pass too
    "nd_pred": "negative_distillation",
    "nd_hid": "negative_distillation",
    "nd_att": "negative_distillation",
    "ul": "unlikelihood",
    "ki": "knowledge_internalization",
    "ki_nd": "ki_negative_distillation",
}
BASELINE = "lsce"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-bin", default="work/dailydialog/data-bin", help="binarised data dir (fairseq-preprocess)")
    p.add_argument("--source-lang", default="src")
    p.add_argument("--target-lang", default="tgt")
    p.add_argument("--subset", default="train")
    p.add_argument("--arch-args", default=SMALL_ARCH,
                   help="fairseq architecture flags, one string (default: the recipes' 'small' Transformer)")
    p.add_argument("--criteria", default="lsce,nd,ul,ki,ki_nd",
                   help=f"comma-separated keys of {sorted(CRITERION_NAMES)}; lsce (the baseline) is always run")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--num-batches", type=int, default=6, help="timed batches (drawn once, fixed seed)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per criterion")
    p.add_argument("--repeats", type=int, default=2, help="passes over the batch list")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--clip-norm", type=float, default=0.1)
    p.add_argument("--teacher-path", default="", help="ND teacher checkpoint (default: a random one, same arch)")
    p.add_argument("--ul-max-len", type=int, default=50)
    p.add_argument("--ki-knowledge-table", default="", help="KI table .npy (default: synthesised, random)")
    p.add_argument("--ki-table-rows", type=int, default=130_000, help="rows N of the synthesised table (+1 for id 0)")
    p.add_argument("--ki-table-dim", type=int, default=384)
    p.add_argument("--ki-label-fraction", type=float, default=0.5)
    p.add_argument("--ki-extra-args", default="", help="further flags for the KI criterion, one string")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    p.add_argument("--cpu", action="store_true", help="run on CPU even where CUDA is available")
    p.add_argument("--output", default="benchmarks/results/training_step_cost.json")
    p.add_argument("--verbose", action="store_true")
    return p


# -- set-up ---------------------------------------------------------------------------------
@dataclass
class Contender:
    """One criterion with its own model copy and optimizer."""

    key: str
    criterion: Any
    model: torch.nn.Module
    optimizer: Any
    num_updates: int = 0
    times_ms: List[List[float]] = field(default_factory=list)  # [pass][batch]


def fairseq_cfg(args: argparse.Namespace, criterion_args: Sequence[str], use_cuda: bool) -> Any:
    """The omegaconf config fairseq-train would build from this command line."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [
        args.data_bin, "--task", "knowledge_dialog", "--source-lang", args.source_lang,
        "--target-lang", args.target_lang, "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
        "--lr", str(args.lr), "--clip-norm", str(args.clip_norm), "--max-tokens", str(args.max_tokens),
        "--seed", str(args.seed), *args.arch_args.split(), *criterion_args,
    ]
    if not use_cuda:
        argv.append("--cpu")
    parser = options.get_training_parser()
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=argv))


def synthetic_knowledge(src_tokens: torch.Tensor, n_rows: int, fraction: float, pad: int, eos: int,
                        generator: torch.Generator) -> torch.Tensor:
    """Knowledge ids ``(B, S)`` aligned with ``src_tokens`` ``(B, S)``: for each non-pad, non-EOS
    token with probability ``fraction`` a uniform id in ``1..n_rows``, else 0 (no knowledge)."""
    real = src_tokens.ne(pad) & src_tokens.ne(eos)
    labelled = real & (torch.rand(src_tokens.shape, generator=generator) < fraction)
    ids = torch.randint(1, n_rows + 1, src_tokens.shape, generator=generator)
    return torch.where(labelled, ids, torch.zeros_like(ids))


def draw_batches(task: Any, model: torch.nn.Module, args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The first ``warmup + num_batches`` batches of a seeded shuffled epoch of ``--subset``."""
    from fairseq import utils

    task.load_dataset(args.subset)
    itr = task.get_batch_iterator(
        dataset=task.dataset(args.subset), max_tokens=args.max_tokens,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        seed=args.seed,
    ).next_epoch_itr(shuffle=True)
    need = args.warmup + args.num_batches
    batches = []
    for sample in itr:
        batches.append(sample)
        if len(batches) == need:
            break
    if len(batches) < need:
        raise SystemExit(f"{args.data_bin}: only {len(batches)} batches in {args.subset}, need {need}")
    return batches


# -- steps ----------------------------------------------------------------------------------
def train_step(task: Any, c: Contender, sample: Dict[str, Any], clip_norm: float) -> float:
    """One fairseq training step (see the module docstring); returns the loss per sample_size."""
    c.optimizer.zero_grad()
    loss, sample_size, _log = task.train_step(sample, c.model, c.criterion, c.optimizer, c.num_updates)
    sample_size = float(sample_size)
    if sample_size > 0:
        c.optimizer.multiply_grads(1.0 / sample_size)
    c.optimizer.clip_grad_norm(clip_norm)
    c.optimizer.step()
    c.num_updates += 1
    c.model.set_num_updates(c.num_updates)
    return float(loss.detach()) / max(sample_size, 1.0)


# -- main -----------------------------------------------------------------------------------
def random_teacher(args: argparse.Namespace, tmp: Path, template: Any) -> str:
    """``--teacher-path`` or a random teacher of the student's architecture, saved once in ``tmp``."""
    teacher = args.teacher_path or str(tmp / "random_teacher.pt")
    if not Path(teacher).exists():  # one teacher shared by the ND variants and ki_nd
        torch.manual_seed(args.seed + 1)
        from fairseq import tasks

        t_task = tasks.setup_task(template.task)
        save_random_checkpoint(t_task.build_model(template.model), template, Path(teacher), t_task)
        logger.info("ND: random teacher of the same architecture saved to %s", teacher)
    return teacher


def ki_flags(args: argparse.Namespace, tmp: Path, template: Any) -> List[str]:
    """KI's flags, with ``--ki-knowledge-table`` or a random table saved once in ``tmp``."""
    table = args.ki_knowledge_table or str(tmp / "ki_table.npy")
    if not Path(table).exists():  # one table shared by ki and ki_nd
        arr = np.random.default_rng(args.seed).standard_normal((args.ki_table_rows + 1, args.ki_table_dim), np.float32)
        arr[0] = 0.0
        np.save(table, arr)
        logger.info("KI: random knowledge table %s saved to %s", arr.shape, table)
    return ["--ki-knowledge-table", table, "--ki-encoder-dim", str(template.model.encoder_embed_dim),
            *args.ki_extra_args.split()]


def criterion_args(key: str, args: argparse.Namespace, tmp: Path, template: Any) -> List[str]:
    """fairseq flags of criterion ``key`` (creates the ND teacher / KI table files in ``tmp``)."""
    if key == "lsce":
        return ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
    if key == "nd" or key.startswith("nd_"):
        terms = ["--nd-terms", key[len("nd_"):]] if key.startswith("nd_") else []
        return ["--criterion", "negative_distillation", "--teacher-path", random_teacher(args, tmp, template), *terms]
    if key == "ul":
        return ["--criterion", "unlikelihood", "--ul-window", "1", "--ul-max-len", str(args.ul_max_len)]
    if key in ("ki", "ki_nd"):
        nd = ["--teacher-path", random_teacher(args, tmp, template)] if key == "ki_nd" else []
        return ["--criterion", CRITERION_NAMES[key], *ki_flags(args, tmp, template), *nd]
    raise ValueError(f"unknown criterion key {key!r}; expected some of {sorted(CRITERION_NAMES)}")


def build_criterion(task: Any, cfg: Any, key: str) -> Any:
    """``task.build_criterion``; ``ki_nd`` on the task flagged ``--knowledge-alignments`` (its start-up
    check refuses a task without; the ids are synthesised here)."""
    if key != "ki_nd":
        return task.build_criterion(cfg.criterion)
    saved, task.cfg.knowledge_alignments = task.cfg.knowledge_alignments, True
    try:
        return task.build_criterion(cfg.criterion)
    finally:
        task.cfg.knowledge_alignments = saved


def parse_criteria(spec: str) -> List[str]:
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CRITERION_NAMES]
    if unknown:
        raise SystemExit(f"--criteria: unknown {unknown}; expected some of {sorted(CRITERION_NAMES)}")
    return [BASELINE] + [k for k in dict.fromkeys(keys) if k != BASELINE]


def rotated(items: Sequence[Any], k: int) -> List[Any]:
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    import fairseq_plugins  # noqa: F401  (registers task and criteria)
    from fairseq import optim, tasks, utils
    from fairseq.criterions import CRITERION_REGISTRY

    use_cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if use_cuda else "cpu")
    keys = parse_criteria(args.criteria)
    skipped: Dict[str, str] = {}
    for key in [k for k in keys if CRITERION_NAMES[k] not in CRITERION_REGISTRY]:
        skipped[key] = f"criterion {CRITERION_NAMES[key]} is not registered (module not there yet)"
        logger.warning("skipping %s: %s", key, skipped[key])
        keys.remove(key)

    t_start = time.perf_counter()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="step_cost_")
    tmp = Path(tmp_ctx.name)
    template = fairseq_cfg(args, criterion_args("lsce", args, tmp, None), use_cuda)
    utils.set_torch_seed(args.seed)
    task = tasks.setup_task(template.task)
    torch.manual_seed(args.seed)
    init_model = task.build_model(template.model)
    init_state = {k: v.clone() for k, v in init_model.state_dict().items()}
    n_params = sum(p.numel() for p in init_model.parameters())
    batches = draw_batches(task, init_model, args)
    del init_model
    pad, eos = task.source_dictionary.pad(), task.source_dictionary.eos()
    gen = torch.Generator().manual_seed(args.seed)
    for s in batches:
        s["knowledge"] = synthetic_knowledge(s["net_input"]["src_tokens"], args.ki_table_rows,
                                             args.ki_label_fraction, pad, eos, gen)
    batches = [utils.move_to_cuda(s) for s in batches] if use_cuda else batches
    warm, timed_batches = batches[:args.warmup], batches[args.warmup:]
    logger.info("%d params; %d warm-up + %d timed batches, %s sentences, %s target tokens each",
                n_params, len(warm), len(timed_batches), [s["nsentences"] for s in timed_batches],
                [s["ntokens"] for s in timed_batches])

    contenders: List[Contender] = []
    for key in keys:
        try:
            cfg = fairseq_cfg(args, criterion_args(key, args, tmp, template), use_cuda)
            model = task.build_model(cfg.model)
            model.load_state_dict(init_state)
            model.to(device)
            criterion = build_criterion(task, cfg, key).to(device)
            params = [p for p in list(model.parameters()) + list(criterion.parameters()) if p.requires_grad]
            optimizer = optim.build_optimizer(cfg.optimizer, params)
        except Exception as exc:  # noqa: BLE001 - a broken contender must not sink the baseline
            if key == BASELINE:
                raise
            skipped[key] = f"set-up failed: {type(exc).__name__}: {exc}"
            logger.exception("skipping %s: set-up failed", key)
            continue
        contenders.append(Contender(key, criterion, model, optimizer))

    # warm-up (untimed), then timed passes with criteria interleaved per batch
    first_loss: Dict[str, float] = {}
    for sample in warm:
        for c in contenders:
            first_loss.setdefault(c.key, train_step(task, c, sample, args.clip_norm))
    logger.info("warm-up losses (per token): %s", {k: round(v, 3) for k, v in first_loss.items()})
    for r in range(args.repeats):
        for c in contenders:
            c.times_ms.append([0.0] * len(timed_batches))
        for b, sample in enumerate(timed_batches):
            for c in rotated(contenders, b + r):
                c.times_ms[r][b] = timed(lambda: train_step(task, c, sample, args.clip_norm), device)
        logger.info("pass %d/%d: median ms %s", r + 1, args.repeats,
                    {c.key: round(statistics.median(c.times_ms[r]), 1) for c in contenders})

    base = contenders[0]
    assert base.key == BASELINE
    base_flat = [t for row in base.times_ms for t in row]
    results: Dict[str, Any] = {}
    for c in contenders:
        flat = [t for row in c.times_ms for t in row]
        paired = [t / bt for t, bt in zip(flat, base_flat)]
        results[c.key] = {
            "criterion": CRITERION_NAMES[c.key],
            "ms_per_step": quartiles(flat),
            "ratio_of_medians": statistics.median(flat) / statistics.median(base_flat),
            "paired_ratio": quartiles(paired),
            "times_ms": c.times_ms,
            "warmup_loss_per_token": first_loss.get(c.key),
        }

    if not args.no_memory:
        big = max(timed_batches, key=lambda s: int(s["ntokens"]) + s["net_input"]["src_tokens"].numel())
        for c in contenders:
            c.optimizer.zero_grad()  # free the last step's grads outside the profiled region
            peak = transient_peak_bytes(lambda: train_step(task, c, big, args.clip_norm), device)
            static = held_bytes(c.model, c.optimizer.optimizer, c.criterion)
            results[c.key]["memory"] = {"transient_peak_mb": peak / 2**20, "static_mb": static / 2**20,
                                        "total_mb": (peak + static) / 2**20}
        for c in contenders:
            m, bm = results[c.key]["memory"], results[BASELINE]["memory"]
            m["transient_ratio"] = m["transient_peak_mb"] / bm["transient_peak_mb"]
            m["total_ratio"] = m["total_mb"] / bm["total_mb"]
        results["_memory_batch"] = {"nsentences": int(big["nsentences"]), "ntokens": int(big["ntokens"]),
                                    "src_shape": list(big["net_input"]["src_tokens"].shape)}

    for key, r in results.items():
        if key.startswith("_"):
            continue
        mem = r.get("memory", {})
        logger.info("%-5s %7.1f ms/step (IQR %.1f) ratio %.3f, paired %.3f (IQR %.3f); mem transient %.1f MB "
                    "(x%.2f), total %.1f MB (x%.2f)", key, r["ms_per_step"]["median"], r["ms_per_step"]["iqr"],
                    r["ratio_of_medians"], r["paired_ratio"]["median"], r["paired_ratio"]["iqr"],
                    mem.get("transient_peak_mb", float("nan")), mem.get("transient_ratio", float("nan")),
                    mem.get("total_mb", float("nan")), mem.get("total_ratio", float("nan")))

    out_args = {k: v for k, v in vars(args).items()}
    result = {
        "config": out_args,
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                "python": platform.python_version(), "machine": platform.machine(),
                "cpu_count": os.cpu_count(), "load_average_at_end": list(os.getloadavg())},
        "model_parameters": n_params,
        "batches": [{"nsentences": int(s["nsentences"]), "ntokens": int(s["ntokens"]),
                     "src_shape": list(s["net_input"]["src_tokens"].shape)} for s in timed_batches],
        "criteria": results,
        "skipped": skipped,
    }
    result["total_runtime_s"] = time.perf_counter() - t_start
    tmp_ctx.cleanup()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s (%.0f s)", out, result["total_runtime_s"])
    return result


if __name__ == "__main__":
    main()
