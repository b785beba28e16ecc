"""Undo subword tokenisation for evaluation: BERT WordPiece (``##``) or sentencepiece (``▁``)."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from informative_dialogue import text_io
from informative_dialogue.cli import console_script, setup_logging

SPM_SPACE = "\u2581"
_WORDPIECE_JOIN = re.compile(r" ##")


def detokenize_wordpiece(text: str) -> str:
    """Join ``##`` continuations: ``"ja ##le ##pen ##os"`` -> ``"jalepenos"``."""
    text = _WORDPIECE_JOIN.sub("", " ".join(text.split()))
    return text[2:] if text.startswith("##") else text


def detokenize_sentencepiece(text: str, keep_tokens: Sequence[str] = ("__eou__",)) -> str:
    """``"▁hel lo ▁world"`` -> ``"hello world"``; ``keep_tokens`` (passed through whole by
    the tokeniser, without a ``▁``) are words of their own."""
    pieces = [f"{SPM_SPACE}{t}{SPM_SPACE}" if t in keep_tokens else t for t in text.split()]
    return " ".join("".join(pieces).replace(SPM_SPACE, " ").split())


DETOKENIZERS = {"bert": detokenize_wordpiece, "wordpiece": detokenize_wordpiece, "spm": detokenize_sentencepiece}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="detokenize-dialog", description=__doc__)
    p.add_argument("--tokenizer", choices=sorted(DETOKENIZERS), default="bert")
    p.add_argument("--input", default="-", help="file to read (default stdin)")
    args = p.parse_args(argv)
    setup_logging()
    detok = DETOKENIZERS[args.tokenizer]
    # line-aligned input, read strictly: only \n ends a line (informative_dialogue.text_io)
    lines = text_io.iter_stream_lines(sys.stdin.buffer, "<stdin>") if args.input == "-" else text_io.iter_lines(args.input)
    for line in lines:
        sys.stdout.write(detok(line) + "\n")


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
