"""What is particular to sharded mining (``ki-mine --num-shards/--shard-id``,
``ki-merge-alignments``): the shard file names, the mining counts and their summary. Line
ranges, fingerprints, the resume check and the resumable chunk loop are the general ones of
:mod:`data_prep.shards`.
"""
from __future__ import annotations

from typing import Mapping

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


def strip_prefix(prefix: str) -> str:
    """``x.align`` → ``x`` (both commands accept either)."""
    return prefix[: -len(".align")] if prefix.endswith(".align") else prefix


def shard_paths(prefix: str, num_shards: int, shard_id: int) -> dict[str, str]:
    """``align``, ``progress`` and ``stats`` paths of a shard."""
    base = f"{strip_prefix(prefix)}.shard{shard_id}of{num_shards}"
    return {"align": base + ".align", "progress": base + ".progress.json", "stats": base + ".stats.json"}


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
