"""Task ``kid_language_modeling``: fairseq's ``language_modeling`` + knowledge-infused decoding.

For decoder-only LMs: identical data handling and training to ``language_modeling``; with
``--kid --kid-trie FILE`` its generator is the KID generator. The prompt (``src_tokens`` /
interactive input) is forced as a prefix and is not updated by KID; its words initialise the
entity memory when the trie file gives no ``entities``. Example::

    fairseq-interactive data-bin --user-dir fairseq_plugins --task kid_language_modeling \\
        --path lm.pt --kid --kid-trie shared.trie.jsonl --kid-shared-trie --sampling --beam 1
"""
from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from fairseq_plugins.data.batching import CompleteBatchesMixin
from fairseq_plugins.generation.kid_config import KIDConfig
from fairseq_plugins.generation.kid_generator import KIDTaskMixin
from fairseq_plugins.generation.paired_sampling import PairedSamplingConfig


@dataclass
class KIDLanguageModelingConfig(LanguageModelingConfig, KIDConfig, PairedSamplingConfig):
    """``language_modeling``'s fields + the KID flags + ``--sampling-seed-scope``."""


@register_task("kid_language_modeling", dataclass=KIDLanguageModelingConfig)
class KIDLanguageModelingTask(CompleteBatchesMixin, KIDTaskMixin, LanguageModelingTask):
    """``language_modeling`` whose generator applies KID under ``--kid``; batches never drop
    examples (``fairseq_plugins.data.batching``)."""

    cfg: KIDLanguageModelingConfig
