"""Knowledge internalization loss (paper: shared/papers/knowledge_internalization.txt, §3.2, Eq. 2–3).

For every source token x_i aligned with a knowledge item K_i (id != 0)::

    s(x, K)  = f1(h_x)^T f2(g(K))                                   (Eq. 2)
    L_KI     = sum_i max{0, m - s(x_i, K_i) + s(x_i, K_i^-)}          (Eq. 3)

with K_i^- drawn uniformly from the knowledge labels of the tokens of *other* sentences of the
batch, K_i^- != K_i (by id). With ``n`` negatives per token the hinge is averaged over them.

Pure tensor functions, no fairseq: the criterion
``fairseq_plugins.criterions.knowledge_internalization`` calls them (:func:`ki_loss` for a batch,
:func:`check_labels` for a batch's labels, :func:`check_alignment_ids` for a whole split at
start-up). Notation: ``N`` labelled
tokens of the batch, flattened row-major (sentence by sentence, in token order), ``C`` the
encoder size, ``d`` the projection size, ``n`` negatives per token.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def align_by_order(
    states: Tensor, state_valid: Tensor, labels: Tensor, label_valid: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """Pair the i-th valid state of row b with the i-th valid label of row b.

    Encoders may lay out their states differently from ``src_tokens`` (fairseq's LSTMEncoder
    turns left padding into right padding), so states and labels are matched by order within
    each row, not by position. This also makes everything downstream independent of the
    padding side.

    Args:
        states: ``(B, S1, C)``; state_valid: ``(B, S1)`` bool, True at real tokens.
        labels: ``(B, S2)``; label_valid: ``(B, S2)`` bool, True at real tokens.
    Returns:
        ``(flat_states (M, C), flat_labels (M,), sentence (M,) long)`` with M real tokens, in
        row-major order; ``sentence`` is the row index b of each.
    Raises:
        ValueError if a row has a different number of valid states and labels.
    """
    if states.dim() != 3 or states.shape[:2] != state_valid.shape:
        raise ValueError(f"states {tuple(states.shape)} and state mask {tuple(state_valid.shape)} disagree")
    if labels.shape != label_valid.shape or labels.size(0) != states.size(0):
        raise ValueError(f"labels {tuple(labels.shape)} do not fit states {tuple(states.shape)}")
    n_states = state_valid.sum(1)
    n_labels = label_valid.sum(1)
    if not torch.equal(n_states, n_labels):
        bad = int((n_states != n_labels).nonzero()[0, 0])
        raise ValueError(
            f"row {bad}: the encoder has {int(n_states[bad])} non-pad states but the labels cover "
            f"{int(n_labels[bad])} tokens"
        )
    rows = torch.arange(states.size(0), device=states.device)[:, None].expand_as(state_valid)
    return states[state_valid], labels[label_valid], rows[state_valid]


def count_negatives(ids: Tensor, sentence: Tensor) -> Tensor:
    """Number of valid negatives of each token: tokens of other sentences with another id.

    Args: ids ``(N,)`` knowledge ids (all != 0), sentence ``(N,)`` row index, non-decreasing.
    Returns: ``(N,)`` long.
    """
    n = ids.numel()
    if n == 0:
        return ids.new_zeros(0)
    _, inv_s, cnt_s = torch.unique_consecutive(sentence, return_inverse=True, return_counts=True)
    _, inv_k, cnt_k = torch.unique(ids, return_inverse=True, return_counts=True)
    pair = inv_s * (int(inv_k.max()) + 1) + inv_k
    _, inv_p, cnt_p = torch.unique(pair, return_inverse=True, return_counts=True)
    others = n - cnt_s[inv_s]  # tokens of other sentences
    same_id_elsewhere = cnt_k[inv_k] - cnt_p[inv_p]  # tokens with this id in other sentences
    return others - same_id_elsewhere


def sample_negatives(
    ids: Tensor,
    sentence: Tensor,
    num: int = 1,
    max_rounds: int = 8,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Draw ``num`` negatives per token, uniformly (with replacement) among the labelled tokens of
    the other sentences whose id differs from the token's.

    Vectorised rejection sampling: each round draws, for every pending query, a token uniformly
    among the tokens of the other sentences (an offset that skips the query's own contiguous
    block) and accepts it when the ids differ, which is exactly uniform over the valid tokens.
    Queries still pending after ``max_rounds`` rounds (ids that dominate the batch) are drawn
    exactly from a ``(P, N)`` mask with ``torch.multinomial``. Memory O(N) except that fallback.
    Uses ``generator`` or, when None, torch's global RNG (fairseq seeds it per update).

    Args:
        ids: ``(N,)`` knowledge ids (!= 0); sentence: ``(N,)`` row of each token, non-decreasing
            (row-major flattening, as :func:`align_by_order` returns).
    Returns:
        ``(neg (N, num) long, has_negative (N,) bool)``: ``neg`` holds token indices into the
        flattened arrays (``ids[neg]`` are the negative ids); rows without a valid negative hold 0
        and have ``has_negative`` False.
    """
    if num < 1:
        raise ValueError(f"num negatives must be >= 1, got {num}")
    if ids.shape != sentence.shape or ids.dim() != 1:
        raise ValueError(f"ids {tuple(ids.shape)} and sentence {tuple(sentence.shape)} must be equal 1-d shapes")
    n = ids.numel()
    device = ids.device
    neg = torch.zeros(n, num, dtype=torch.long, device=device)
    if n == 0:
        return neg, torch.zeros(0, dtype=torch.bool, device=device)
    if bool((sentence[1:] < sentence[:-1]).any()):
        raise ValueError("sentence indices must be non-decreasing (row-major flattening)")
    has_negative = count_negatives(ids, sentence) > 0

    _, inv_s, cnt_s = torch.unique_consecutive(sentence, return_inverse=True, return_counts=True)
    starts = torch.cumsum(cnt_s, 0) - cnt_s
    tok_start, tok_cnt = starts[inv_s], cnt_s[inv_s]
    others = n - tok_cnt

    query = torch.arange(n, device=device)[has_negative].repeat_interleave(num)  # (Q,)
    result = torch.full_like(query, -1)
    pending = torch.arange(query.numel(), device=device)
    for _ in range(max_rounds):
        if pending.numel() == 0:
            break
        q = query[pending]
        u = torch.rand(q.numel(), generator=generator, device=device)
        offset = (u * others[q]).long().clamp_max(others[q] - 1)
        j = offset + (offset >= tok_start[q]).long() * tok_cnt[q]
        ok = ids[j] != ids[q]
        result[pending[ok]] = j[ok]
        pending = pending[~ok]
    if pending.numel() > 0:
        q = query[pending]
        allowed = (sentence[None, :] != sentence[q, None]) & (ids[None, :] != ids[q, None])  # (P, N)
        result[pending] = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)
    neg[has_negative] = result.view(-1, num)
    return neg, has_negative


def project(x: Tensor, linear: nn.Module, normalize: bool = True) -> Tensor:
    """f(x) of Eq. 2: ``linear(x)`` ``(..., d)``, L2-normalised along the last dim if ``normalize``."""
    y = linear(x)
    return F.normalize(y, p=2.0, dim=-1) if normalize else y


def hinge(pos: Tensor, neg: Tensor, margin: float) -> Tensor:
    """Per-token Eq. 3 term averaged over negatives.

    Args: pos ``(N,)`` scores s(x_i, K_i); neg ``(N, n)`` scores s(x_i, K_i^-).
    Returns: ``(N,)`` ``mean_k max{0, margin - pos_i + neg_ik}``.
    """
    return torch.clamp(margin - pos[:, None] + neg, min=0.0).mean(dim=1)


def ki_token_losses(h: Tensor, k_pos: Tensor, k_neg: Tensor, margin: float) -> Tensor:
    """Eq. 3 per token from projected vectors.

    Args:
        h: ``(N, d)`` f1(h_i); k_pos: ``(N, d)`` f2(g(K_i)); k_neg: ``(N, n, d)`` f2(g(K_i^-)).
    Returns: ``(N,)`` hinge per token (average over the n negatives).
    """
    pos = (h * k_pos).sum(-1)
    negs = torch.einsum("nd,nkd->nk", h, k_neg)
    return hinge(pos, negs, margin)


def check_labels(knowledge: Tensor, src_tokens: Tensor, real: Tensor, table_rows: int, table_name: str,
                 padding_idx: int) -> None:
    """The input contract of a batch's knowledge labels: raise ValueError unless ``knowledge``
    has the shape of ``src_tokens``, holds integer ids within a table of ``table_rows`` rows
    (``table_name`` in the message), and 0 wherever ``real`` (non-pad, non-EOS) is False."""
    if knowledge.shape != src_tokens.shape:
        raise ValueError(f'sample["knowledge"] has shape {tuple(knowledge.shape)} but src_tokens '
                         f"{tuple(src_tokens.shape)}: the labels must be position-aligned with the source")
    if knowledge.dtype.is_floating_point or knowledge.dtype == torch.bool:
        raise ValueError(f'sample["knowledge"] must hold integer ids, got {knowledge.dtype}')
    out_of_range = knowledge.lt(0) | knowledge.ge(table_rows)
    misplaced = knowledge.ne(0) & ~real
    if not bool((out_of_range | misplaced).any()):
        return
    if bool(out_of_range.any()):
        bad = int(knowledge[out_of_range][0])
        raise ValueError(f"knowledge id {bad} out of range: the table {table_name} has "
                         f"{table_rows} rows (valid ids 0..{table_rows - 1})")
    row, col = (int(v) for v in misplaced.nonzero()[0])
    what = "padding" if src_tokens[row, col].eq(padding_idx) else "EOS"
    raise ValueError(f"knowledge id {int(knowledge[row, col])} at a {what} position (sentence {row}, "
                     f"position {col}): labels must be 0 there; are the labels padded on a different "
                     "side from src_tokens?")


def check_alignment_ids(alignments, table_rows: int, table_name: str) -> None:
    """Start-up check of a whole split's alignments (``informative_dialogue.ki.alignments.
    KnowledgeAlignments``: flat ``ids``, ``offsets``, ``path``) against a knowledge table of
    ``table_rows`` rows: raise ValueError naming the alignment file, the first line (1-based)
    with an id beyond the table, that id and the table."""
    ids = np.asarray(alignments.ids)
    beyond = np.flatnonzero(ids >= table_rows) if ids.size else ids[:0]
    if beyond.size == 0:
        return
    first = int(beyond[0])
    line = int(np.searchsorted(np.asarray(alignments.offsets), first, side="right"))
    raise ValueError(
        f"{alignments.path}:{line}: knowledge id {int(ids[first])} is beyond the knowledge table {table_name} "
        f"({table_rows} rows, valid ids 0..{table_rows - 1}; {beyond.size} id(s) beyond it in all): were the "
        "alignments mined with another knowledge base or index?")


def ki_loss(states: Tensor, valid: Tensor, knowledge: Tensor, labelled_positions: Tensor, f1: nn.Module,
            f2: nn.Module, knowledge_vectors: Callable[[Tensor], Tensor], margin: float, normalize: bool = True,
            num_negatives: int = 1) -> Tuple[Tensor, int, int]:
    """L_KI (Eq. 3) of a batch, summed over its labelled tokens.

    Args:
        states: encoder states ``(B, S1, C)``; valid: ``(B, S1)`` bool, their real positions.
        knowledge: ``(B, S2)`` ids; labelled_positions: ``(B, S2)`` the source's non-pad positions
            (paired with ``valid`` by order, :func:`align_by_order`).
        f1, f2: the projections of Eq. 2; knowledge_vectors: ids ``(M,)`` -> g(K) ``(M, d_k)``.
    Returns:
        ``(loss (sum over tokens), tokens used, tokens labelled)``; tokens whose batch has no
        valid negative are labelled but not used.
    """
    h, ids, sentence = align_by_order(states, valid, knowledge, labelled_positions)
    keep = ids.ne(0)
    h, ids, sentence = h[keep], ids[keep], sentence[keep]
    neg, has_negative = sample_negatives(ids, sentence, num_negatives)
    hp = project(h[has_negative], f1, normalize)  # (N, d)
    kp = project(knowledge_vectors(ids), f2, normalize)  # (M, d)
    losses = ki_token_losses(hp, kp[has_negative], kp[neg[has_negative]], margin)
    return losses.sum(), int(has_negative.sum()), int(ids.numel())
