"""The decoding side of ``generate_endings.py``: the methods, the logits processors of each
(KID first, then the sampling warpers), the batched ``model.generate`` loop, the one-sentence
cut and the measurement of what KID did.

Every method is ``[kid_|little_]{greedy|beam|sample}``: ``greedy`` / ``beam`` / ``sample``
alone is plain decoding; the ``kid_`` prefix adds
:class:`~informative_dialogue.kid.hf_processor.KIDLogitsProcessor` (memory + multi-hop
trie query, paper Algorithm 2), ``little_`` the same processor with ``mode="little"`` (every
end node of the example's trie, no dynamic query; appendix A.3). The processor runs *before*
the sampling warpers (temperature, top-k, top-p), as in the paper ("KID uses sampling decoding
... to pick actual tokens" from the updated policy): ``generate`` itself gets
``top_k=0, top_p=1, temperature=1`` and the warpers are appended after KID.

Under ``--kid-solver kv`` (the KID release's update of the model's cached keys/values) a logits
processor cannot act: ``kid_greedy`` / ``kid_sample`` / ``little_*`` then decode through
:func:`~informative_dialogue.kid.hf_kv_decoding.kid_kv_generate` with the same filters (min new
tokens, no-repeat n-grams, temperature, top-k, top-p) and the same seed; beam search is refused.

``transformers`` is imported by the functions that need it, so the module loads cheaply.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from informative_dialogue.kid.options import KIDOptions

logger = logging.getLogger("generate_endings")

KNOWLEDGE_MODES = ("none", "kid", "little")
DECODINGS = ("greedy", "beam", "sample")
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
# sentences


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
    no_repeat_ngram_size: int = 0  # ban repeated n-grams (0: off; the KID release: 2)
    # KID hyper-parameters (subwords included); the mode comes from each method
    kid: KIDOptions = field(default_factory=KIDOptions)


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
    sampling warpers (sampling only).

    ``tries`` are one batch's; a batch whose tries are all empty is decoded plainly (the whole
    file is checked for knowledge once, by the caller), so the processor is built with
    ``allow_empty_tries=True``.
    """
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    procs: List[Any] = []
    if method.knowledge != "none" and cfg.kid.solver == "kv":
        raise ValueError(f"{method.name} with --kid-solver kv has no logits processor: it decodes through "
                         "kid_kv_generate (generate_batch)")
    if method.knowledge != "none":
        from informative_dialogue.kid.hf_processor import KIDLogitsProcessor

        rows = cfg.num_beams if method.decoding == "beam" else 1
        kid = KIDLogitsProcessor(list(tries), mapper, rows_per_input=rows,
                                 options=replace(cfg.kid, mode=method.knowledge, allow_empty_tries=True))
        procs.append(KIDActivity(kid, activity) if activity is not None else kid)
    if method.decoding == "sample":
        if cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k > 0:
            procs.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


def kid_kv_batch(model: Any, enc: Any, tries: Sequence[Any], method: Method, cfg: DecodeConfig, mapper: Any,
                 stop_ids: Sequence[int], pad_id: Optional[int], activity: Optional[dict] = None) -> torch.Tensor:
    """One batch under ``--kid-solver kv``: (B, L + T) token ids from
    :func:`~informative_dialogue.kid.hf_kv_decoding.kid_kv_generate` (greedy or sampling with
    ``cfg``'s filters, torch's global RNG as ``generate``). ``activity`` gets the entry point's
    totals under :class:`KIDActivity`'s names (``rows``, ``updated``, ``argmax_changed``,
    ``kl`` = KL(pi || mixture), ``demo_mass`` / ``demo_mass_kid`` = the demonstrations'
    probability before / after) and ``seconds_kv``."""
    from informative_dialogue.kid.hf_kv_decoding import kid_kv_generate
    from informative_dialogue.kid.memory import KIDCore
    from informative_dialogue.kid.trie_files import InMemoryTries

    if method.decoding == "beam":
        raise ValueError(f"{method.name}: --kid-solver kv decodes greedily or by sampling, not with beam search "
                         "(use kid_greedy or kid_sample, or another --kid-solver)")
    core = KIDCore(InMemoryTries(list(tries)), mapper, replace(cfg.kid, mode=method.knowledge, allow_empty_tries=True))
    stats: dict = {}
    out = kid_kv_generate(model, enc["input_ids"], enc["attention_mask"], core, max_new_tokens=cfg.max_new_tokens,
                          do_sample=method.decoding == "sample", top_k=cfg.top_k, top_p=cfg.top_p,
                          temperature=cfg.temperature, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                          min_new_tokens=cfg.min_new_tokens, eos_token_id=list(stop_ids), pad_token_id=pad_id,
                          stats=stats)
    if activity is not None:
        for key in ("rows", "updated", "argmax_changed", "kl", "demo_mass", "demo_mass_kid", "seconds_kv"):
            activity[key] = activity.get(key, 0) + stats.get(key, 0)
    return out


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
    if method.knowledge != "none" and cfg.kid.solver == "kv":
        out = kid_kv_batch(model, enc, tries, method, cfg, mapper, stop_ids, tokenizer.pad_token_id, activity)
    else:
        kw: dict = dict(max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                        eos_token_id=list(stop_ids), pad_token_id=tokenizer.pad_token_id,
                        logits_processor=LogitsProcessorList(logits_processors(method, tries, mapper, cfg, activity)))
        if method.decoding == "sample":
            kw.update(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, num_beams=1)
        elif method.decoding == "beam":
            kw.update(do_sample=False, num_beams=cfg.num_beams, early_stopping=True)
        else:
            kw.update(do_sample=False, num_beams=1)
        if cfg.no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = cfg.no_repeat_ngram_size
        with torch.no_grad():
            out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kw)
    new = out[:, enc["input_ids"].size(1):]
    n_tokens = int((new != tokenizer.pad_token_id).sum()) if tokenizer.pad_token_id is not None else new.numel()
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [first_sentence(t) for t in texts], n_tokens


SEED_SCOPES = ("batch", "run")
SEED_SCOPE_HELP = ("batch: torch is seeded again before every batch (from --seed and the batch's first example), so "
                   "a batch's draws do not depend on what earlier batches drew and paired runs differ only where "
                   "KID acted; run: seeded once per method (the sweeps of RESULTS.md before 2026-12-07)")


def batch_seed(seed: int, first_example: int) -> int:
    """The torch seed of the batch that starts at example ``first_example`` in a run seeded
    ``seed``: distinct for every (seed, batch start) pair with fewer than 1,000,003 examples, so
    neither two batches of one run nor the same batch under two seeds share a stream."""
    return seed * 1_000_003 + first_example


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
    seed_scope: str = "batch",
) -> Tuple[List[str], dict]:
    """All endings of one method and its timing / size statistics.

    ``seed_scope``: ``"batch"`` seeds torch before every batch with :func:`batch_seed`, so a
    batch's draws do not depend on what earlier batches drew (two runs that differ only in
    some batches -- KID acting on a few examples -- sample the others identically); ``"run"``
    seeds once at the start (earlier sweeps; a change of length in one batch then redraws
    every later batch)."""
    if seed_scope not in SEED_SCOPES:
        raise ValueError(f"seed_scope must be one of {SEED_SCOPES}, got {seed_scope!r}")
    if seed_scope == "run":
        torch.manual_seed(seed)
    hyps: List[str] = []
    tokens = 0
    activity: dict = {}
    t0 = time.time()
    for start in tqdm(range(0, len(prompts), batch_size), desc=method.name, unit="batch"):
        end = start + batch_size
        if seed_scope == "batch":
            torch.manual_seed(batch_seed(seed, start))
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
