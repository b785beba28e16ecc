"""Task ``knowledge_dialog``: dialogue generation as source->target translation.

A subclass of fairseq's ``translation`` task with identical data handling so far; the
knowledge-internalization alignments and the knowledge-infused decoding flags hang off this
task. Typical use::

    fairseq-train data-bin --user-dir fairseq_plugins --task knowledge_dialog \
        --source-lang src --target-lang tgt ...

Knowledge-infused decoding: ``fairseq-generate ... --task knowledge_dialog --kid --kid-trie
test.trie.jsonl [--kid-hops 4 --kid-steps 3 ...]`` (flags: ``generation/kid_config.py``).
"""
from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from fairseq_plugins.data.batching import CompleteBatchesMixin
from fairseq_plugins.generation.kid_config import KIDConfig
from fairseq_plugins.generation.kid_generator import KIDTaskMixin


@dataclass
class KnowledgeDialogConfig(TranslationConfig, KIDConfig):
    """Configuration of ``knowledge_dialog``: translation's fields + the KID flags."""


@register_task("knowledge_dialog", dataclass=KnowledgeDialogConfig)
class KnowledgeDialogTask(CompleteBatchesMixin, KIDTaskMixin, TranslationTask):
    """Dialogue context -> response. Datasets: ``{split}.src-tgt.{src,tgt}`` from fairseq-preprocess.

    Batches never drop examples (see ``fairseq_plugins.data.batching``); ``--kid`` selects the
    knowledge-infused decoding generator (see ``fairseq_plugins.generation.kid_generator``)."""

    cfg: KnowledgeDialogConfig
