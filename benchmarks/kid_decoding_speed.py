#!/usr/bin/env python
"""Decoding speed of knowledge-infused decoding (KID) vs plain sampling, in one process.

For every batch size, the same test examples are decoded (beam 1, sampling, same seed) by

* ``plain``: fairseq's ``SequenceGenerator`` with ``search.Sampling``;
* ``kid``:   :class:`KIDSequenceGenerator` with the same search and ``kid_steps`` Adam steps
  (or the closed-form update of ``--kid-solver sigma``, or the key/value update of
  ``--kid-solver kv``: its breakdown adds the K forward+backward steps, the mixture and the
  perturbed cache's reordering);

after one warm-up pass, ``--repeats`` timed passes; the median wall time and the generated
token count (EOS included, as fairseq counts hypothesis lengths) give tokens/s. An extra
instrumented KID pass (timers monkeypatched onto the KID functions, here only) splits KID's
time into model forward, memory observe, trie query/demonstrations, policy update and the
rest (search, reordering). Finally KID's per-step time at the largest batch size is measured
with per-example tries grown to ~10/~100/~1000 keys by merging the tries of more examples
(i.e. more retrieved passages).

See benchmarks/README.md for how to produce the checkpoint, data-bin and trie file.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from informative_dialogue.kid.options import add_kid_arguments

logger = logging.getLogger("kid_decoding_speed")
KID_FLAGS = ("hops", "memory", "steps", "lr", "sigma", "beta", "mode", "entity", "subwords", "solver", "kv_step",
             "kv_kl", "kv_gamma", "kv_mix")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module doc as written, and every option's default."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="fairseq checkpoint (knowledge_dialog task)")
    p.add_argument("--data-bin", required=True, help="fairseq data-bin directory of the checkpoint")
    p.add_argument("--trie", required=True, help="KID trie JSONL, line i = example i of --subset")
    p.add_argument("--subset", default="test")
    p.add_argument("--num-examples", type=int, default=32,
                   help="first N examples of the subset, cut into batches of each batch size")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=5, help="timed passes (median reported)")
    p.add_argument("--max-len-a", type=float, default=0.0)
    p.add_argument("--max-len-b", type=int, default=40)
    p.add_argument("--sampling-topk", type=int, default=-1)
    p.add_argument("--seed", type=int, default=1)
    add_kid_arguments(p, names=KID_FLAGS)  # --kid-steps, --kid-hops, ...: KIDOptions' defaults
    p.add_argument("--trie-sizes", type=int, nargs="*", default=[10, 100, 1000],
                   help="target keys per example trie for the scaling run (empty: skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default="benchmarks/results/kid_decoding_speed.json")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


# -- timers ---------------------------------------------------------------------------------
class Timers:
    """Accumulated wall seconds and call counts per label."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = defaultdict(float)
        self.calls: Dict[str, int] = defaultdict(int)

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1
        return timed


@contextmanager
def patched(targets: List[Tuple[Any, str, str]], timers: Timers) -> Iterator[None]:
    """Temporarily replace ``owner.attr`` by a timed wrapper (benchmark only, restored after)."""
    saved = []
    try:
        for owner, attr, label in targets:
            orig = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            saved.append((owner, attr, orig))
            setattr(owner, attr, timers.wrap(label, getattr(owner, attr)))
        yield
    finally:
        for owner, attr, orig in reversed(saved):
            setattr(owner, attr, orig)


# -- decoding -------------------------------------------------------------------------------
def count_tokens(out: List[List[Dict[str, torch.Tensor]]]) -> int:
    return sum(int(h[0]["tokens"].numel()) for h in out)


def clear_kid_caches(gen: Any) -> None:
    core = getattr(gen, "kid_core", None)
    if core is not None:
        core._demo_cache.clear()
        core._tensor_cache.clear()


def run_pass(gen: Any, models: List[Any], batches: List[Dict[str, Any]], seed: int) -> Tuple[float, int]:
    """One pass over all batches; returns (seconds, generated tokens). Cold KID caches."""
    clear_kid_caches(gen)
    torch.manual_seed(seed)
    tokens = 0
    t0 = time.perf_counter()
    for sample in batches:
        tokens += count_tokens(gen.generate(models, sample))
    return time.perf_counter() - t0, tokens


def timed_passes(gen: Any, models: List[Any], batches: List[Dict[str, Any]], seed: int, repeats: int) -> Dict[str, Any]:
    run_pass(gen, models, batches, seed)  # warm-up
    times, toks = [], []
    for _ in range(repeats):
        s, n = run_pass(gen, models, batches, seed)
        times.append(s)
        toks.append(n)
    med = statistics.median(times)
    n_tok = toks[times.index(med)] if med in times else toks[0]
    return {"seconds": times, "median_s": med, "min_s": min(times), "tokens": n_tok, "tokens_per_s": n_tok / med,
            "tokens_per_s_best": n_tok / min(times)}


def instrumented_pass(gen: Any, models: List[Any], batches: List[Dict[str, Any]], seed: int) -> Dict[str, Any]:
    """KID pass with timers on its parts; percentages of the pass' wall time."""
    from fairseq.sequence_generator import EnsembleModel
    from informative_dialogue.kid import memory as memory_module
    from informative_dialogue.kid.memory import EntityMemory, KIDCore
    from fairseq_plugins.generation import kv_state

    timers = Timers()
    targets = [
        (EnsembleModel, "forward_decoder", "model forward (decoder)"),
        (EnsembleModel, "forward_encoder", "model forward (encoder)"),
        (KIDCore, "observe", "memory observe (entity test)"),
        (KIDCore, "demo_mask", "trie query / demonstrations"),
        (KIDCore, "demo_index", "trie query / demonstrations"),
        (memory_module, "kid_policy_update", "policy update"),
        (memory_module, "sigma_solve", "policy update"),
        (EntityMemory, "reorder", "memory reorder"),
        # --kid-solver kv: K forward+backward passes of one decoder step and the final perturbed
        # step (kv_perturbation), the mixture, the perturbed cache's reordering
        (kv_state, "kv_perturbation", "kv update (K fwd+bwd + perturbed step)"),
        (kv_state, "geometric_mix", "kv mixture"),
        (kv_state.KVDecoderState, "reorder", "kv cache reorder"),
        (KIDCore, "new_memory", "memory init"),
    ]
    with patched(targets, timers):
        total, tokens = run_pass(gen, models, batches, seed)
    parts = dict(timers.seconds)
    # "model forward (decoder)" wraps EnsembleModel.forward_decoder only (the KID subclass
    # calls it via super()), so it excludes the KID work done in the subclass
    rest = total - sum(parts.values())
    parts["search / other"] = rest
    parts = {k: v for k, v in parts.items() if v or k == "search / other"}
    steps = timers.calls.get("model forward (decoder)", 0)
    return {
        "total_s": total,
        "tokens": tokens,
        "decoding_steps": steps,
        "seconds": parts,
        "percent": {k: 100.0 * v / total for k, v in parts.items()},
        "calls": dict(timers.calls),
    }


# -- setup ----------------------------------------------------------------------------------
def load(args: argparse.Namespace) -> Tuple[List[Any], Any]:
    import fairseq_plugins  # noqa: F401  (registers the knowledge_dialog task)
    from fairseq import checkpoint_utils

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [args.checkpoint], arg_overrides={"data": args.data_bin}
    )
    for m in models:
        m.eval()
    task.load_dataset(args.subset)
    return models, task


def make_batches(task: Any, subset: str, n: int, bsz: int) -> List[Dict[str, Any]]:
    ds = task.dataset(subset)
    ids = list(range(min(n, len(ds))))
    return [ds.collater([ds[i] for i in ids[k:k + bsz]]) for k in range(0, len(ids), bsz)]


def build_generators(args: argparse.Namespace, models: List[Any], task: Any, tries: Any = None) -> Tuple[Any, Any]:
    from fairseq import search
    from fairseq.sequence_generator import SequenceGenerator
    from informative_dialogue.kid.memory import KIDCore
    from fairseq_plugins.generation.kid_config import KIDConfig
    from fairseq_plugins.generation.kid_generator import KIDSequenceGenerator, build_kid_core

    tgt = task.target_dictionary
    common = dict(beam_size=1, max_len_a=args.max_len_a, max_len_b=args.max_len_b)
    plain = SequenceGenerator(models, tgt, search_strategy=search.Sampling(tgt, args.sampling_topk), **common)
    cfg = KIDConfig(kid=True, kid_trie=args.trie, **{f"kid_{name}": getattr(args, f"kid_{name}") for name in KID_FLAGS})
    core = build_kid_core(cfg, tgt)
    if tries is not None:
        core = KIDCore(tries, core.mapper, core.options)
    kid = KIDSequenceGenerator(models, tgt, kid_core=core, kid_src_dict=task.source_dictionary,
                               search_strategy=search.Sampling(tgt, args.sampling_topk), **common)
    return plain, kid


def merged_tries(trie_path: str, n_examples: int, target_keys: int) -> Tuple[Any, float]:
    """Per example i: its own trie, then the tries of examples i+1, i+2, ... merged in until
    it has >= target_keys keys, cut to target_keys (own keys first). Returns (tries, mean keys)."""
    from informative_dialogue.kid.trie import KnowledgeTrie
    from informative_dialogue.kid.trie_files import InMemoryTries, TrieExample, load_jsonl

    base = load_jsonl(trie_path)
    norm = base[0].trie.normalizer
    out: List[TrieExample] = []
    sizes: List[int] = []
    for i in range(n_examples):
        values: Dict[str, List[str]] = {}
        j = 0
        while len(values) < target_keys and j < len(base):
            for k, vs in base[(i + j) % len(base)].trie.values.items():
                if k not in values:
                    if len(values) >= target_keys:
                        break
                    values[k] = list(vs)
                else:
                    values[k] = values[k] + [v for v in vs if v not in values[k]]
            j += 1
        sizes.append(len(values))
        out.append(TrieExample(KnowledgeTrie(values, normalizer=norm), base[i].entities))
    return InMemoryTries(out), sum(sizes) / len(sizes)


# -- main -----------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    models, task = load(args)
    plain, kid = build_generators(args, models, task)
    if kid.kid_core.disabled:
        raise SystemExit("KID is disabled (kid_steps 0 or empty tries): nothing to compare")
    n_lines = len(kid.kid_core.tries)
    if args.num_examples > n_lines:
        raise SystemExit(f"--num-examples {args.num_examples} > {n_lines} lines in {args.trie}")

    result: Dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items()},
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                "machine": platform.machine(), "processor": platform.processor()},
        "trie_stats": getattr(kid.kid_core.tries, "stats", None),
        "batch_sizes": {},
    }
    for bsz in args.batch_sizes:
        batches = make_batches(task, args.subset, args.num_examples, bsz)
        logger.info("batch size %d: %d batches", bsz, len(batches))
        rp = timed_passes(plain, models, batches, args.seed, args.repeats)
        rk = timed_passes(kid, models, batches, args.seed, args.repeats)
        bd = instrumented_pass(kid, models, batches, args.seed)
        bd_plain = instrumented_pass(plain, models, batches, args.seed)
        ratio = rk["tokens_per_s"] / rp["tokens_per_s"]
        result["batch_sizes"][str(bsz)] = {"plain": rp, "kid": rk, "kid_over_plain": ratio, "kid_breakdown": bd,
                                          "plain_breakdown": bd_plain}
        logger.info("bsz %d: plain %.1f tok/s, KID %.1f tok/s, ratio %.3f; breakdown %s", bsz,
                    rp["tokens_per_s"], rk["tokens_per_s"], ratio,
                    {k: round(v, 1) for k, v in bd["percent"].items()})

    if args.trie_sizes:
        bsz = max(args.batch_sizes)
        batches = make_batches(task, args.subset, args.num_examples, bsz)
        scaling = []
        for target in args.trie_sizes:
            tries, mean_keys = merged_tries(args.trie, args.num_examples, target)
            _, kid_s = build_generators(args, models, task, tries=tries)
            rk = timed_passes(kid_s, models, batches, args.seed, args.repeats)
            bd = instrumented_pass(kid_s, models, batches, args.seed)
            steps = max(bd["decoding_steps"], 1)
            row = {
                "target_keys": target, "mean_keys": mean_keys, "batch_size": bsz,
                "tokens_per_s": rk["tokens_per_s"], "median_s": rk["median_s"], "tokens": rk["tokens"],
                "decoding_steps": bd["decoding_steps"],
                "ms_per_step": 1000.0 * bd["total_s"] / steps,
                "query_ms_per_step": 1000.0 * bd["seconds"].get("trie query / demonstrations", 0.0) / steps,
                "policy_ms_per_step": 1000.0 * bd["seconds"].get("policy update", 0.0) / steps,
                "observe_ms_per_step": 1000.0 * bd["seconds"].get("memory observe (entity test)", 0.0) / steps,
                "forward_ms_per_step": 1000.0 * bd["seconds"].get("model forward (decoder)", 0.0) / steps,
                "percent": bd["percent"],
            }
            scaling.append(row)
            logger.info("trie ~%d keys (mean %.0f): %.1f tok/s, %.2f ms/step (query %.2f, policy %.2f)",
                        target, mean_keys, row["tokens_per_s"], row["ms_per_step"], row["query_ms_per_step"],
                        row["policy_ms_per_step"])
        result["trie_scaling"] = scaling

    result["total_runtime_s"] = time.perf_counter() - t_start
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s (%.0f s)", out, result["total_runtime_s"])
    return result


if __name__ == "__main__":
    main()
