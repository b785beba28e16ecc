"""Command-line flags of knowledge-infused decoding, shared by the tasks that offer it.

A task config gets the flags by inheriting the mixin::

    @dataclass
    class KnowledgeDialogConfig(TranslationConfig, KIDConfig): ...

They then reach fairseq-generate and fairseq-interactive (``--kid --kid-trie FILE ...``);
the task's ``build_generator`` (see :class:`~fairseq_plugins.generation.kid_generator.KIDTaskMixin`)
turns them into a :class:`~fairseq_plugins.generation.kid_generator.KIDSequenceGenerator`.

Flag ``--kid-NAME`` (field ``kid_NAME``) is option ``NAME`` of
:class:`~informative_dialogue.kid.options.KIDOptions`, whose default and help text it takes
(``fairseq_plugins.generation.kid_generator.kid_options`` reads them back); the other flags
(``--kid``, ``--kid-trie``, ``--kid-shared-trie``, ``--kid-vocab-scheme``,
``--kid-gpt2-encoder-json``) say where the knowledge and the vocabulary come from.
"""
# no ``from __future__ import annotations``: fairseq reads the field types at run time
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from informative_dialogue.kid.options import CHOICES, HELP, KIDOptions
from informative_dialogue.kid.token_mapping import SCHEMES

KID_MODE_CHOICES = ChoiceEnum(list(CHOICES["mode"]))
KID_SUBWORD_CHOICES = ChoiceEnum(list(CHOICES["subwords"]))
KID_ENTITY_CHOICES = ChoiceEnum(list(CHOICES["entity"]))
KID_SOLVER_CHOICES = ChoiceEnum(list(CHOICES["solver"]))
KID_SCHEME_CHOICES = ChoiceEnum(list(SCHEMES))


@dataclass
class KIDConfig(FairseqDataclass):
    """Knowledge-infused decoding (KID) options; all off unless ``--kid`` is given."""

    kid: bool = field(
        default=False,
        metadata={"help": "decode with knowledge-infused decoding (KID); needs --kid-trie"},
    )
    kid_trie: Optional[str] = field(
        default=None,
        metadata={
            "help": "knowledge trie JSONL file, line i = example i of the generation subset "
            "(format: informative_dialogue/kid/trie_files.py); its line count must equal the size of "
            "--gen-subset"
        },
    )
    kid_shared_trie: bool = field(
        default=False,
        metadata={
            "help": "use line 0 of --kid-trie for every input and initialise the memory from "
            "the input's words (fairseq-interactive, whose ids restart in every batch)"
        },
    )
    # --- the KIDOptions fields, defaults and help from informative_dialogue/kid/options.py -----
    kid_mode: KID_MODE_CHOICES = field(  # type: ignore[valid-type]
        default=KIDOptions.mode, metadata={"help": HELP["mode"]}
    )
    kid_hops: int = field(default=KIDOptions.hops, metadata={"help": HELP["hops"]})
    kid_memory: Optional[int] = field(default=KIDOptions.memory, metadata={"help": HELP["memory"]})
    kid_steps: int = field(default=KIDOptions.steps, metadata={"help": HELP["steps"]})
    kid_lr: float = field(default=KIDOptions.lr, metadata={"help": HELP["lr"]})
    kid_sigma: float = field(default=KIDOptions.sigma, metadata={"help": HELP["sigma"]})
    kid_beta: float = field(default=KIDOptions.beta, metadata={"help": HELP["beta"]})
    kid_subwords: KID_SUBWORD_CHOICES = field(  # type: ignore[valid-type]
        default=KIDOptions.subwords, metadata={"help": HELP["subwords"]}
    )
    kid_entity: KID_ENTITY_CHOICES = field(  # type: ignore[valid-type]
        default=KIDOptions.entity, metadata={"help": HELP["entity"]}
    )
    kid_allow_empty_tries: bool = field(
        default=KIDOptions.allow_empty_tries, metadata={"help": HELP["allow_empty_tries"]}
    )
    kid_solver: KID_SOLVER_CHOICES = field(  # type: ignore[valid-type]
        default=KIDOptions.solver, metadata={"help": HELP["solver"]}
    )
    kid_kv_step: float = field(default=KIDOptions.kv_step, metadata={"help": HELP["kv_step"]})
    kid_kv_kl: float = field(default=KIDOptions.kv_kl, metadata={"help": HELP["kv_kl"]})
    kid_kv_gamma: float = field(default=KIDOptions.kv_gamma, metadata={"help": HELP["kv_gamma"]})
    kid_kv_mix: float = field(default=KIDOptions.kv_mix, metadata={"help": HELP["kv_mix"]})
    # --- the target vocabulary -------------------------------------------------------------
    kid_vocab_scheme: KID_SCHEME_CHOICES = field(  # type: ignore[valid-type]
        default="auto",
        metadata={"help": "subword scheme of the target dictionary (auto: detect from its symbols)"},
    )
    kid_gpt2_encoder_json: Optional[str] = field(
        default=None,
        metadata={
            "help": "GPT-2 encoder.json, for dictionaries of fairseq --bpe gpt2 whose symbols "
            "are GPT-2 token ids"
        },
    )
