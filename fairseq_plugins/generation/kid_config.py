"""Command-line flags of knowledge-infused decoding, shared by the tasks that offer it.

A task config gets the flags by inheriting the mixin::

    @dataclass
    class KnowledgeDialogConfig(TranslationConfig, KIDConfig): ...

They then reach fairseq-generate and fairseq-interactive (``--kid --kid-trie FILE ...``);
the task's ``build_generator`` (see :class:`~fairseq_plugins.generation.kid_generator.KIDTaskMixin`)
turns them into a :class:`~fairseq_plugins.generation.kid_generator.KIDSequenceGenerator`.
"""
# no ``from __future__ import annotations``: fairseq reads the field types at run time
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

KID_MODE_CHOICES = ChoiceEnum(["kid", "little"])
KID_SUBWORD_CHOICES = ChoiceEnum(["first", "all"])
KID_ENTITY_CHOICES = ChoiceEnum(["key", "content"])
KID_SCHEME_CHOICES = ChoiceEnum(["auto", "wordpiece", "sentencepiece", "gpt2", "subword_nmt", "word"])


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
            "(format: informative_dialogue/kid/trie_files.py)"
        },
    )
    kid_shared_trie: bool = field(
        default=False,
        metadata={
            "help": "use line 0 of --kid-trie for every input and initialise the memory from "
            "the input's words (fairseq-interactive, whose ids restart in every batch)"
        },
    )
    kid_mode: KID_MODE_CHOICES = field(  # type: ignore[valid-type]
        default="kid",
        metadata={
            "help": "kid: local memory + multi-hop trie query at every step; little: Little "
            "KID, every end node of the example's trie as a fixed demonstration list"
        },
    )
    kid_hops: int = field(default=4, metadata={"help": "h_max, hops of the trie query"})
    kid_memory: Optional[int] = field(
        default=None,
        metadata={"help": "w_max, length of the FIFO entity memory (default: --kid-hops)"},
    )
    kid_steps: int = field(
        default=3,
        metadata={"help": "K, Adam steps of the policy update per decoding step (0: plain decoding)"},
    )
    kid_lr: float = field(default=0.1, metadata={"help": "Adam step size of the policy update"})
    kid_sigma: float = field(
        default=0.02,
        metadata={"help": "target KL(pi || pi*) of the adaptive KL weight beta"},
    )
    kid_beta: float = field(default=1.0, metadata={"help": "initial KL weight beta"})
    kid_subwords: KID_SUBWORD_CHOICES = field(  # type: ignore[valid-type]
        default="first",
        metadata={"help": "reward the first subword of each knowledge word, or all its subwords"},
    )
    kid_entity: KID_ENTITY_CHOICES = field(  # type: ignore[valid-type]
        default="key",
        metadata={
            "help": "generated words that enter the memory: key (content words whose stem is a "
            "key of the example's trie) or content (every non-stop-word)"
        },
    )
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
