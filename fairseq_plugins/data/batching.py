"""Batching that never drops examples.

fairseq's ``data_utils.batch_by_size`` discards the final batch whenever its size is not a
multiple of ``--required-batch-size-multiple`` (default 8): fairseq-generate silently skips
up to 7 test examples, validation perplexity leaves out up to 7 of the longest validation
examples, and every training epoch loses the same up-to-7 longest pairs (fairseq issue #5036,
present in the fairseq builds that run on Python 3.11). The plugin's tasks batch with a
multiple of 1 instead, which loses nothing; the multiple only rounds batch sizes for GPU
efficiency.
"""
import logging

logger = logging.getLogger(__name__)


class CompleteBatchesMixin:
    """Task mixin: ``get_batch_iterator`` always batches with ``required_batch_size_multiple=1``."""

    def get_batch_iterator(self, dataset, *args, required_batch_size_multiple: int = 1, **kwargs):
        if required_batch_size_multiple > 1 and not getattr(self, "_warned_batch_multiple", False):
            logger.info(
                "batching with --required-batch-size-multiple 1 instead of %d: fairseq drops the last "
                "batch when its size is not a multiple (issue #5036), which would lose examples",
                required_batch_size_multiple,
            )
            self._warned_batch_multiple = True
        return super().get_batch_iterator(dataset, *args, required_batch_size_multiple=1, **kwargs)
