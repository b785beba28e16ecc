"""The simplest alternative to knowledge-infused decoding: put the knowledge in the prompt.

For a dialogue model trained on contexts (turns joined by a separator such as ``__eou__``), the
knowledge of each example becomes one more, earlier turn of its context: ``knowledge
SEPARATOR context``, the knowledge cut to its first ``max_knowledge_tokens`` tokens (the
contexts are kept whole: they carry the turn the model answers). Tokens named by
``drop_tokens`` (e.g. the ``__knowledge__`` separator between knowledge sentences) are removed
from the knowledge first.

    python3 -m data_prep.corpora.knowledge_prompt --src tok/test.src --knowledge tok/test.knowledge \\
        --output tok/test_kprompt.src --max-knowledge-tokens 64 --drop-token __knowledge__

Every input line must be non-empty in ``--src``; an example with empty knowledge keeps its
context unchanged (counted in the log).
"""
from __future__ import annotations

import argparse
import logging
from typing import Collection, List, Optional, Sequence

from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.errors import CorpusError
from informative_dialogue.text_io import read_lines, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["knowledge_turn", "prompt_with_knowledge", "main"]


def knowledge_turn(knowledge: str, max_tokens: int, drop_tokens: Collection[str] = ()) -> str:
    """The first ``max_tokens`` whitespace tokens of ``knowledge``, ``drop_tokens`` removed."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    return " ".join([t for t in knowledge.split() if t not in drop_tokens][:max_tokens])


def prompt_with_knowledge(
    contexts: Sequence[str],
    knowledge: Sequence[str],
    max_knowledge_tokens: int,
    separator: str = "__eou__",
    drop_tokens: Collection[str] = (),
    name: str = "contexts",
) -> List[str]:
    """``knowledge SEPARATOR context`` per example (the context alone when its knowledge is empty).

    Raises:
        CorpusError: different line counts, or an empty context (naming ``name`` and the line).
    """
    if len(contexts) != len(knowledge):
        raise CorpusError(name, f"{len(contexts)} lines but the knowledge has {len(knowledge)}: "
                          "expected one knowledge line per example")
    out = []
    for lineno, (context, know) in enumerate(zip(contexts, knowledge), start=1):
        if not context.strip():
            raise CorpusError(name, "empty context (expected the dialogue turns of the example)", lineno)
        turn = knowledge_turn(know, max_knowledge_tokens, drop_tokens)
        out.append(f"{turn} {separator} {context.strip()}" if turn else context.strip())
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knowledge-prompt", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="contexts, one example per line (tokenised as the model's data)")
    p.add_argument("--knowledge", required=True, help="knowledge text of every example, one line each")
    p.add_argument("--output", required=True, help="the new contexts")
    p.add_argument("--max-knowledge-tokens", type=int, default=64)
    p.add_argument("--separator", default="__eou__", help="the token between turns in --src")
    p.add_argument("--drop-token", action="append", default=[], help="a token removed from the knowledge")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    contexts, knowledge = read_lines(args.src), read_lines(args.knowledge)
    lines = prompt_with_knowledge(contexts, knowledge, args.max_knowledge_tokens, args.separator,
                                  set(args.drop_token), name=args.src)
    write_text_atomic(args.output, lines)
    empty = sum(not knowledge_turn(k, args.max_knowledge_tokens, set(args.drop_token)) for k in knowledge)
    logger.info("%s: %d contexts with up to %d knowledge tokens in front (%d without knowledge)",
                args.output, len(lines), args.max_knowledge_tokens, empty)
    return 0


cli = console_script(main)

if __name__ == "__main__":
    cli()
