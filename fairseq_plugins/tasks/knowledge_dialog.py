"""Task ``knowledge_dialog``: dialogue generation as source->target translation.

A subclass of fairseq's ``translation`` task with its data handling; the knowledge-internalization
alignments and the knowledge-infused decoding flags hang off this task. Typical use::

    fairseq-train data-bin --user-dir fairseq_plugins --task knowledge_dialog \
        --source-lang src --target-lang tgt ...

Knowledge internalization: ``fairseq-train ... --task knowledge_dialog --knowledge-alignments``
loads ``{split}.align.{ids,offsets}.npy`` (written by ``ki-binarize-alignments``, format:
``data/knowledge_alignments.py``) from the data directory and adds ``sample["knowledge"]`` (B, S)
to every batch (``data/knowledge_aligned_dataset.py``). The training split must have them; a
validation split without them logs a warning and yields plain batches (no ``"knowledge"`` key,
so no KI loss term on it). Generation never needs them (the flag is off by default).

Knowledge-infused decoding: ``fairseq-generate ... --task knowledge_dialog --kid --kid-trie
test.trie.jsonl [--kid-hops 4 --kid-steps 3 ...]`` (flags: ``generation/kid_config.py``).

For the plugin's criteria, ``train_step`` / ``valid_step`` hand the criterion the update number
(negative distillation's progressive alpha) and each newly loaded dataset (start-up checks such
as knowledge internalization's ids against its table), and every checkpoint stores the
dictionaries' symbols (checked when it serves as a negative teacher); see
``criterions/_task_contract.py``.
"""
import logging
import os
from dataclasses import dataclass, field

from fairseq import utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from fairseq_plugins.criterions._task_contract import (
    DICTIONARY_STATE_KEY,
    dictionary_state,
    prepare_criterion,
)
from fairseq_plugins.data.batching import CompleteBatchesMixin
from fairseq_plugins.data.knowledge_aligned_dataset import KnowledgeAlignedDataset
from informative_dialogue.ki.alignments import KnowledgeAlignments, alignment_paths, alignments_exist
from informative_dialogue.ki.binarized_sizes import binarized_source_sizes
from fairseq_plugins.generation.kid_config import KIDConfig
from fairseq_plugins.generation.kid_generator import KIDTaskMixin
from fairseq_plugins.generation.paired_sampling import PairedSamplingConfig


@dataclass
class KnowledgeDialogConfig(TranslationConfig, KIDConfig, PairedSamplingConfig):
    """Configuration of ``knowledge_dialog``: translation's fields + the KID flags + ``--sampling-seed-scope`` + KI alignments."""

    knowledge_alignments: bool = field(
        default=False,
        metadata={
            "help": "load {split}.align.ids.npy/.offsets.npy (ki-binarize-alignments) from the data dir for "
            "knowledge internalization; needed only for training (required for the train split, optional "
            "for valid: a valid split without them has no KI loss)"
        },
    )


logger = logging.getLogger(__name__)


@register_task("knowledge_dialog", dataclass=KnowledgeDialogConfig)
class KnowledgeDialogTask(CompleteBatchesMixin, KIDTaskMixin, TranslationTask):
    """Dialogue context -> response. Datasets: ``{split}.src-tgt.{src,tgt}`` from fairseq-preprocess.

    Batches never drop examples (see ``fairseq_plugins.data.batching``); ``--kid`` selects the
    knowledge-infused decoding generator (see ``fairseq_plugins.generation.kid_generator``)."""

    cfg: KnowledgeDialogConfig
    passes_update_num_to_criterion = True  # _task_contract.PASSES_UPDATE_NUM: train_step hands it over

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._criterion_checked: dict = {}  # split -> the dataset last handed to the criterion

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        """fairseq's train_step, after handing the criterion the update number and the datasets
        loaded since the last step (``fairseq_plugins/criterions/_task_contract.py``)."""
        prepare_criterion(criterion, self.datasets, self._criterion_checked, update_num)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)

    def valid_step(self, sample, model, criterion, **kwargs):
        """fairseq's valid_step, after handing the criterion the datasets loaded since the last step."""
        prepare_criterion(criterion, self.datasets, self._criterion_checked)
        return super().valid_step(sample, model, criterion, **kwargs)

    def state_dict(self):
        """fairseq's task state plus the dictionaries' symbols, so that every checkpoint carries
        its vocabulary (checked when the checkpoint serves as a negative teacher)."""
        state = dict(super().state_dict() or {})
        state[DICTIONARY_STATE_KEY] = dictionary_state(self)
        return state

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        """Load ``split`` as translation does; with ``--knowledge-alignments`` wrap it in a
        :class:`KnowledgeAlignedDataset` (alignments validated against the binarised source)."""
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if not self.cfg.knowledge_alignments:
            return
        data_path = self._split_data_path(split, epoch)
        prefix = os.path.join(data_path, f"{split}.align")
        if not alignments_exist(prefix):
            paths = " and ".join(alignment_paths(prefix))
            if split.startswith(self.cfg.train_subset):
                raise FileNotFoundError(
                    f"--knowledge-alignments: training split {split!r} has no knowledge alignments: expected {paths} "
                    "(write them with ki-binarize-alignments)"
                )
            logger.warning("--knowledge-alignments: %s not found; split %r is loaded without knowledge "
                           "(no KI loss on it)", paths, split)
            return
        alignments = KnowledgeAlignments.load(prefix)
        alignments.validate_against_source(self._raw_source_sizes(data_path, split), eos_appended=True)
        truncate_to = self.cfg.max_source_positions - 1 if self.cfg.truncate_source else None
        self.datasets[split] = KnowledgeAlignedDataset(self.datasets[split], alignments, truncate_to=truncate_to)
        logger.info("%s: knowledge alignments for %d examples (max id %d)", prefix, len(alignments), alignments.max_id)

    def _split_data_path(self, split: str, epoch: int) -> str:
        """The data directory ``TranslationTask.load_dataset`` reads ``split`` from."""
        paths = utils.split_paths(self.cfg.data)
        if split != self.cfg.train_subset:
            paths = paths[:1]
        return paths[(epoch - 1) % len(paths)]

    def _raw_source_sizes(self, data_path: str, split: str):
        """Token counts (EOS included) of the binarised source before any truncation, (n,)."""
        found = binarized_source_sizes(data_path, split, self.cfg.source_lang, self.cfg.target_lang,
                                       self.cfg.dataset_impl)
        if found is None:
            raise FileNotFoundError(f"binarised source of split {split!r} not found in {data_path}")
        path, sizes = found
        if len(sizes) != len(self.datasets[split]):
            raise ValueError(
                f"{path}: {len(sizes)} examples but split {split!r} has {len(self.datasets[split])} "
                "(sharded splits, e.g. train1, are not supported with --knowledge-alignments)"
            )
        return sizes
