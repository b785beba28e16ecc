"""A ``LanguagePairDataset`` whose batches also carry the source tokens' knowledge ids.

``sample["knowledge"]``: LongTensor (B, S), position by position aligned with
``sample["net_input"]["src_tokens"]`` (B, S): the line's knowledge ids at its token positions,
``0`` at the EOS position and at every padding position, padded on the same side as the
source (``left_pad_source``). Rows follow the collated order (``sample["id"]``), which
``LanguagePairDataset.collater`` re-sorts by source length.

Everything else (sizes, ordering, filtering by size, batching, bucketing, prefetching, epochs)
goes to the wrapped dataset unchanged.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, LanguagePairDataset, PrependTokenDataset

from informative_dialogue.ki.alignments import KnowledgeAlignments


def check_mirrorable(dataset: LanguagePairDataset) -> None:
    """Refuse source transformations whose effect on token positions is not mirrored here.

    Raises ValueError for ``append_bos``, ``remove_eos_from_source``, an EOS other than the
    dictionary's (``append_source_id``) and a source wrapped in ``PrependTokenDataset``
    (``prepend_bos``)."""
    if getattr(dataset, "append_bos", False):
        raise ValueError("knowledge alignments do not support append_bos (it shifts source positions)")
    if getattr(dataset, "remove_eos_from_source", False):
        raise ValueError("knowledge alignments do not support remove_eos_from_source")
    eos = getattr(dataset, "eos", None)
    if eos is not None and eos != dataset.src_dict.eos():
        raise ValueError("knowledge alignments do not support append_source_id (a language token after the source)")
    if isinstance(dataset.src, PrependTokenDataset):
        raise ValueError("knowledge alignments do not support prepend_bos (it shifts source positions)")


def knowledge_matrix(
    rows: list[np.ndarray | torch.Tensor],
    src_lengths: torch.Tensor,
    width: int,
    left_pad: bool,
    ids: Optional[list[int]] = None,
) -> torch.Tensor:
    """Place each row's ids at its source token positions.

    Args:
        rows: B arrays of ids, row b of length ``src_lengths[b] - 1`` (the EOS has none).
        src_lengths: (B,) unpadded source lengths, EOS included.
        width: S, the padded source width.
        left_pad: padding on the left (real tokens are the last ``src_lengths[b]`` positions).
        ids: example ids, only for error messages.

    Returns:
        LongTensor (B, S): ids, 0 at EOS and padding.
    """
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        n = int(src_lengths[b])
        row = torch.as_tensor(row, dtype=torch.long)
        if row.numel() != n - 1:
            who = f"example {ids[b]}" if ids is not None else f"row {b}"
            raise ValueError(
                f"{who}: {row.numel()} knowledge ids but the source has {n - 1} tokens + EOS "
                "(expected one id per source token)"
            )
        start = width - n if left_pad else 0
        out[b, start : start + n - 1] = row
    return out


class KnowledgeAlignedDataset(BaseWrapperDataset):
    """Wrap a ``LanguagePairDataset``; items and batches gain ``"knowledge"``.

    Args:
        dataset: the task's LanguagePairDataset (source binarised with EOS appended).
        alignments: one id array per example, validated against the raw source sizes.
        truncate_to: keep only the first ``truncate_to`` ids (``--truncate-source`` keeps
            ``max_source_positions - 1`` source tokens before the EOS); None keeps all.
    """

    def __init__(self, dataset: LanguagePairDataset, alignments: KnowledgeAlignments, truncate_to: Optional[int] = None):
        super().__init__(dataset)
        check_mirrorable(dataset)
        if len(alignments) != len(dataset):
            raise ValueError(
                f"{alignments.path}: {len(alignments)} alignment lines but the dataset has {len(dataset)} examples"
            )
        self.alignments = alignments
        self.truncate_to = truncate_to

    # attributes of the wrapped LanguagePairDataset that callers read
    @property
    def src(self):
        return self.dataset.src

    @property
    def tgt(self):
        return self.dataset.tgt

    @property
    def src_sizes(self) -> np.ndarray:
        return self.dataset.src_sizes

    @property
    def tgt_sizes(self) -> Optional[np.ndarray]:
        return self.dataset.tgt_sizes

    @property
    def src_dict(self):
        return self.dataset.src_dict

    @property
    def tgt_dict(self):
        return self.dataset.tgt_dict

    @property
    def left_pad_source(self) -> bool:
        return self.dataset.left_pad_source

    @property
    def left_pad_target(self) -> bool:
        return self.dataset.left_pad_target

    @property
    def buckets(self):
        return self.dataset.buckets

    @property
    def supports_fetch_outside_dataloader(self) -> bool:
        return self.dataset.supports_fetch_outside_dataloader

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        return self.dataset.num_tokens_vec(indices)

    def knowledge(self, index: int) -> torch.Tensor:
        """LongTensor (n,): the ids of example ``index``'s source tokens (after truncation)."""
        ids = self.alignments[index]
        if self.truncate_to is not None:
            ids = ids[: self.truncate_to]
        return torch.from_numpy(ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        item["knowledge"] = self.knowledge(index)
        return item

    def collater(self, samples: list[dict[str, Any]], pad_to_length: Optional[dict] = None) -> dict[str, Any]:
        """The inner collater's batch plus ``"knowledge"`` (B, S) in the batch's row order."""
        batch = self.dataset.collater(samples, pad_to_length=pad_to_length)
        if not batch:
            return batch
        by_id = {int(s["id"]): s["knowledge"] for s in samples}
        order = [int(i) for i in batch["id"]]
        src_tokens = batch["net_input"]["src_tokens"]
        src_lengths = batch["net_input"]["src_lengths"]
        left_pad = self.dataset.left_pad_source
        knowledge = knowledge_matrix([by_id[i] for i in order], src_lengths, src_tokens.size(1), left_pad, order)
        eos_pos = (src_tokens.size(1) - 1) * torch.ones_like(src_lengths) if left_pad else src_lengths - 1
        eos_tokens = src_tokens.gather(1, eos_pos.view(-1, 1)).view(-1)
        if (eos_tokens != self.dataset.src_dict.eos()).any():
            b = int(torch.nonzero(eos_tokens != self.dataset.src_dict.eos())[0])
            raise ValueError(f"example {order[b]}: the source does not end with EOS; knowledge ids cannot be placed")
        batch["knowledge"] = knowledge
        return batch
