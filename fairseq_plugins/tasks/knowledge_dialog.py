"""Task ``knowledge_dialog``: dialogue generation as source->target translation.

A subclass of fairseq's ``translation`` task with identical data handling so far; the
knowledge-internalization alignments and the knowledge-infused decoding flags hang off this
task. Typical use::

    fairseq-train data-bin --user-dir fairseq_plugins --task knowledge_dialog \
        --source-lang src --target-lang tgt ...
"""
from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from fairseq_plugins.data.batching import CompleteBatchesMixin


@dataclass
class KnowledgeDialogConfig(TranslationConfig):
    """Configuration of ``knowledge_dialog`` (today: translation's fields)."""


@register_task("knowledge_dialog", dataclass=KnowledgeDialogConfig)
class KnowledgeDialogTask(CompleteBatchesMixin, TranslationTask):
    """Dialogue context -> response. Datasets: ``{split}.src-tgt.{src,tgt}`` from fairseq-preprocess.

    Batches never drop examples (see ``fairseq_plugins.data.batching``)."""

    cfg: KnowledgeDialogConfig
