"""Bookkeeping of sharded mining (``ki-mine --num-shards/--shard-id``, ``ki-merge``): shard line
ranges and file names, per-shard counts and their summary, resumable progress records written
atomically, and the check that a shard may resume (same source content, index and options).
"""
from __future__ import annotations

import os
from typing import Mapping

from informative_dialogue import text_io

COUNT_KEYS = (
    "lines",
    "lines_with_knowledge",
    "tokens",
    "tokens_with_knowledge",
    "tokens_exact",
    "tokens_retrieved",
    "tokens_unresolved",
    "tokens_masked",
    "tokens_skip",
    "tokens_stopword_rule",
    "tokens_content_with_knowledge",
    "words",
    "dedup_hits",
    "lines_mined",
    "lines_encoded",
    "words_searched",
    "words_truncated",
)


def new_counts() -> dict[str, int]:
    """Every count of :data:`COUNT_KEYS` at 0."""
    return {k: 0 for k in COUNT_KEYS}


def shard_range(n_lines: int, num_shards: int, shard_id: int) -> tuple[int, int]:
    """Balanced contiguous line range ``[start, end)`` of shard ``shard_id`` of ``num_shards``."""
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"need 0 <= shard-id < num-shards, got shard {shard_id} of {num_shards}")
    return n_lines * shard_id // num_shards, n_lines * (shard_id + 1) // num_shards


def strip_prefix(prefix: str) -> str:
    """``x.align`` → ``x`` (both commands accept either)."""
    return prefix[: -len(".align")] if prefix.endswith(".align") else prefix


def shard_paths(prefix: str, num_shards: int, shard_id: int) -> dict[str, str]:
    """``align``, ``progress`` and ``stats`` paths of a shard."""
    base = f"{strip_prefix(prefix)}.shard{shard_id}of{num_shards}"
    return {"align": base + ".align", "progress": base + ".progress.json", "stats": base + ".stats.json"}


def source_fingerprint(path: str | os.PathLike, n_lines: int) -> dict:
    from data_prep.ki.index import file_sha256

    return {"path": os.path.abspath(os.fspath(path)), "size": os.path.getsize(path), "sha256": file_sha256(path), "lines": n_lines}


def write_json_atomic(path: str, obj: dict) -> None:
    """Write JSON to ``path`` all or nothing (:func:`informative_dialogue.text_io.write_json_atomic`:
    a temporary file beside it, flushed to disk, renamed over ``path``)."""
    text_io.write_json_atomic(path, obj)


RECORD_KEYS = ("format", "source", "index", "options", "num_shards", "shard_id", "start_line", "end_line")


def record_mismatch(old: dict, new: dict) -> list[str]:
    """What differs between a shard's recorded run (``old``) and this one (``new``) on the
    :data:`RECORD_KEYS`: the source by content (not path), the index by its meta.json hash,
    options one by one; empty when the shard may resume."""
    diffs = []
    for key in RECORD_KEYS:
        a, b = old.get(key), new.get(key)
        if key == "source" and isinstance(a, dict) and isinstance(b, dict):
            # the path may move; the content decides
            a = {k: v for k, v in a.items() if k != "path"}
            b = {k: v for k, v in b.items() if k != "path"}
        if key == "index" and isinstance(a, dict) and isinstance(b, dict):
            a, b = a.get("meta_sha256"), b.get("meta_sha256")
        if a != b:
            if key == "options" and isinstance(a, dict) and isinstance(b, dict):
                diffs += [f"option {k}: recorded {a.get(k)!r}, now {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            else:
                diffs.append(f"{key}: recorded {a!r}, now {b!r}")
    return diffs


def summarize(counts: Mapping[str, int]) -> dict:
    """Shares derived from summed counts."""
    tok = max(counts["tokens"], 1)
    content = max(counts["tokens"] - counts["tokens_stopword_rule"] - counts["tokens_skip"], 1)
    with_k = max(counts["tokens_with_knowledge"], 1)
    return {
        "share_tokens_with_knowledge": counts["tokens_with_knowledge"] / tok,
        "share_content_tokens_with_knowledge": counts["tokens_content_with_knowledge"] / content,
        "share_lines_with_knowledge": counts["lines_with_knowledge"] / max(counts["lines"], 1),
        "share_knowledge_tokens_exact": counts["tokens_exact"] / with_k,
        "share_knowledge_tokens_retrieved": counts["tokens_retrieved"] / with_k,
        "dedup_hit_rate": counts["dedup_hits"] / max(counts["lines"], 1),
    }
