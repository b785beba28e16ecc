"""Wizard of Wikipedia (Dinan et al., 2019) in the two releases available here.

``--format ki``: the knowledge-internalization release, ``{valid,test.seen,test.unseen}.{src,
tgt,voken.src}`` (and ``train.*`` where a user has it). The text is already lower-cased BERT
WordPiece and is copied line for line, untouched (no re-tokenisation, no lower-casing; only the
release's CRLF line ends become LF). Each
``.voken.src`` line holds one integer knowledge id per ``.src`` token (0 = none); it is
validated (integers only, exactly as many as the ``.src`` line has whitespace tokens, else
CorpusError naming the file, the line and both counts) and written as ``{split}.align``.
Output split names: train -> train, valid -> valid, test.seen -> test_seen,
test.unseen -> test_unseen. A split whose ``.src`` or ``.tgt`` file is absent is logged and
skipped (listed under ``missing`` in stats.json); a split without ``.voken.src`` is written
without ``.align`` (``"align": false``). An empty ``src`` or ``tgt`` line is skipped and
counted together with its alignment line. There is no knowledge text in this release.

``--format mini``: ``{train,valid,test}.pro_qa.txt`` (``idx \\t post \\t response``) and
``{train,valid,test}.sent_fact.txt`` (``idx \\t sentence \\t sentence ...`` or ``idx \\t no_fact``),
joined by ``idx`` (an idx present on one side only is a CorpusError naming both files, the
line and the idx). ``src`` = post, ``tgt`` = response, ``knowledge`` = the knowledge sentences
joined by `` __knowledge__ `` (``--knowledge-separator``; a token rather than a space so the
sentence boundaries stay recoverable, e.g. for sentence-level knowledge retrieval). ``no_fact``
gives empty knowledge: the example is kept and counted as ``no_knowledge``. ``--lowercase``,
``--dedup`` and ``--tokenizer bert`` (the knowledge separator kept whole) apply to this format
only.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass

from tqdm import tqdm

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from informative_dialogue.ki.alignment_text import is_knowledge_id
from data_prep.common import Example, SkipCounter, add_text_options, dedup_examples, one_line, write_split, write_stats
from informative_dialogue.cli import console_script, setup_logging

logger = logging.getLogger(__name__)

# input split name (file prefix) -> output split name
KI_SPLITS = {"train": "train", "valid": "valid", "test.seen": "test_seen", "test.unseen": "test_unseen"}
MINI_SPLITS = ("train", "valid", "test")
KNOWLEDGE_SEP = "__knowledge__"
NO_FACT = "no_fact"


def read_lines(path: str) -> list[str]:
    """Lines of a UTF-8 text file, split on ``\\n`` only (a ``\\r`` before it, as in the release's
    CRLF files, is removed; other characters such as U+2028 stay inside their line, so line
    numbers agree with ``wc -l``). A lone ``\\r`` inside a line or bytes that are not UTF-8 are a
    CorpusError naming the file and line (:mod:`informative_dialogue.text_io`)."""
    return text_io.read_lines(path)


# --------------------------------------------------------------------------------------------
# ki


@dataclass
class KiSplit:
    """One split of the KI release: examples (src/tgt only) and their alignment lines
    (``None`` when the split has no ``.voken.src``)."""

    examples: list[Example]
    align: list[str] | None
    stats: dict


def parse_voken_line(voken: str, src: str, path: str, line_no: int, src_path: str) -> str:
    """Validate one ``.voken.src`` line against its ``.src`` line; return the ids joined by
    single spaces."""
    ids = voken.split()
    for tok in ids:
        if not is_knowledge_id(tok):
            raise CorpusError(
                path, f"expected non-negative integer knowledge ids, got {tok!r} (ASCII digits 0-9 only)", line_no
            )
    n_src = len(src.split())
    if len(ids) != n_src:
        raise CorpusError(
            path,
            f"{len(ids)} knowledge ids but {src_path} line {line_no} has {n_src} tokens (expected one id per token)",
            line_no,
        )
    return " ".join(ids)


def prepare_ki_split(input_dir: str, name: str) -> KiSplit | None:
    """Read ``{name}.src/.tgt/.voken.src`` under ``input_dir``; None (logged) if the split's
    ``.src`` or ``.tgt`` is absent."""
    paths = {ext: os.path.join(input_dir, f"{name}.{ext}") for ext in ("src", "tgt", "voken.src")}
    missing = [p for ext, p in paths.items() if ext != "voken.src" and not os.path.exists(p)]
    if missing:
        present = [p for p in paths.values() if os.path.exists(p)]
        log = logger.warning if present else logger.info
        log("WoW ki split %s: %s absent, split skipped", name, ", ".join(missing))
        return None
    src = read_lines(paths["src"])
    tgt = read_lines(paths["tgt"])
    if len(src) != len(tgt):
        raise CorpusError(paths["tgt"], f"{len(tgt)} lines but {paths['src']} has {len(src)}")
    voken: list[str] | None = None
    if os.path.exists(paths["voken.src"]):
        voken = read_lines(paths["voken.src"])
        if len(voken) != len(src):
            raise CorpusError(paths["voken.src"], f"{len(voken)} lines but {paths['src']} has {len(src)}")
    else:
        logger.warning("WoW ki split %s: %s absent, no .align written", name, paths["voken.src"])
    skips = SkipCounter()
    examples: list[Example] = []
    align: list[str] | None = [] if voken is not None else None
    for i in tqdm(range(len(src)), desc=f"wow ki {name}", unit="line"):
        line_no = i + 1
        ids = None
        if voken is not None:
            ids = parse_voken_line(voken[i], src[i], paths["voken.src"], line_no, paths["src"])
        if not src[i].strip():
            skips.skip("empty_src", f"{paths['src']}:{line_no}")
            continue
        if not tgt[i].strip():
            skips.skip("empty_tgt", f"{paths['tgt']}:{line_no}")
            continue
        examples.append(Example(src=src[i], tgt=tgt[i]))
        if align is not None and ids is not None:
            align.append(ids)
    stats = {
        "files": [p for p in paths.values() if os.path.exists(p)],
        "lines": len(src),
        "align": voken is not None,
        "examples": len(examples),
        "skipped": dict(skips.counts),
    }
    return KiSplit(examples, align, stats)


def run_ki(args: argparse.Namespace, out_dir: str) -> dict:
    """Convert the KI release, writing into ``out_dir``; returns the stats for stats.json."""
    splits: dict[str, dict] = {}
    missing: list[str] = []
    for name, out_name in KI_SPLITS.items():
        result = prepare_ki_split(args.input, name)
        if result is None:
            missing.append(name)
            continue
        write_split(out_dir, out_name, result.examples)
        if result.align is not None:
            with open(os.path.join(out_dir, f"{out_name}.align"), "w", encoding="utf-8") as f:
                for line in result.align:
                    f.write(line + "\n")
        splits[out_name] = result.stats
        logger.info(
            "%s -> %s: %d lines -> %d examples (align: %s); skipped %s",
            name,
            out_name,
            result.stats["lines"],
            result.stats["examples"],
            result.stats["align"],
            result.stats["skipped"] or "none",
        )
    if not splits:
        raise CorpusError(args.input, f"no WoW ki split found (expected {{{','.join(KI_SPLITS)}}}.src and .tgt)")
    return {"splits": splits, "missing": missing}


# --------------------------------------------------------------------------------------------
# mini


def _parse_idx(value: str, path: str, line_no: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise CorpusError(path, f"expected an integer idx in the first field, got {value[:30]!r}", line_no) from None


def read_pro_qa(path: str) -> dict[int, tuple[int, str, str]]:
    """``idx -> (line number, post, response)`` in file order (text whitespace-normalised)."""
    rows: dict[int, tuple[int, str, str]] = {}
    for line_no, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue  # a blank line holds no example
        fields = line.split("\t")
        if len(fields) != 3:
            raise CorpusError(
                path, f"expected 3 tab-separated fields (idx, post, response), got {len(fields)}", line_no
            )
        idx = _parse_idx(fields[0], path, line_no)
        if idx in rows:
            raise CorpusError(path, f"idx {idx} repeated (first on line {rows[idx][0]})", line_no)
        rows[idx] = (line_no, one_line(fields[1]), one_line(fields[2]))
    return rows


def read_sent_fact(path: str) -> tuple[dict[int, tuple[int, list[str] | None]], int]:
    """``idx -> (line number, sentences or None for no_fact)`` and the number of empty
    sentence fields dropped."""
    rows: dict[int, tuple[int, list[str] | None]] = {}
    empty_fields = 0
    for line_no, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise CorpusError(
                path, "expected idx then tab-separated knowledge sentences (or 'no_fact'), got 1 field", line_no
            )
        idx = _parse_idx(fields[0], path, line_no)
        if idx in rows:
            raise CorpusError(path, f"idx {idx} repeated (first on line {rows[idx][0]})", line_no)
        if [f.strip() for f in fields[1:]] == [NO_FACT]:
            rows[idx] = (line_no, None)
            continue
        sentences = [one_line(f) for f in fields[1:]]
        empty_fields += sum(1 for s in sentences if not s)
        rows[idx] = (line_no, [s for s in sentences if s])
    return rows, empty_fields


def prepare_mini_split(
    input_dir: str,
    split: str,
    knowledge_separator: str = KNOWLEDGE_SEP,
    lowercase: bool = False,
    dedup: bool = False,
) -> tuple[list[Example], dict] | None:
    """Join ``{split}.pro_qa.txt`` and ``{split}.sent_fact.txt``; None (logged) if either is
    absent."""
    qa_path = os.path.join(input_dir, f"{split}.pro_qa.txt")
    fact_path = os.path.join(input_dir, f"{split}.sent_fact.txt")
    missing = [p for p in (qa_path, fact_path) if not os.path.exists(p)]
    if missing:
        log = logger.warning if len(missing) == 1 else logger.info
        log("WoW mini split %s: %s absent, split skipped", split, ", ".join(missing))
        return None
    qa = read_pro_qa(qa_path)
    facts, empty_fields = read_sent_fact(fact_path)
    for idx, (line_no, _) in facts.items():
        if idx not in qa:
            raise CorpusError(qa_path, f"no line with idx {idx} (which {fact_path} has on line {line_no})")
    joiner = f" {knowledge_separator} "
    skips = SkipCounter()
    examples: list[Example] = []
    no_knowledge = 0
    for idx, (line_no, post, response) in tqdm(qa.items(), desc=f"wow mini {split}", unit="ex"):
        if idx not in facts:
            raise CorpusError(fact_path, f"no line with idx {idx} (which {qa_path} has on line {line_no})")
        sentences = facts[idx][1]
        where = f"{qa_path}:{line_no}"
        if not post:
            skips.skip("empty_post", where)
            continue
        if not response:
            skips.skip("empty_response", where)
            continue
        if not sentences:
            no_knowledge += 1
            knowledge = ""
        else:
            knowledge = joiner.join(sentences)
        if lowercase:
            post, response, knowledge = post.lower(), response.lower(), knowledge.lower()
        examples.append(Example(src=post, tgt=response, knowledge=knowledge))
    pairs = len(examples)
    if dedup:
        examples = dedup_examples(examples)
    stats = {
        "files": [qa_path, fact_path],
        "pairs": pairs,
        "no_knowledge": no_knowledge,
        "empty_knowledge_fields_dropped": empty_fields,
        "duplicates_removed": pairs - len(examples),
        "examples": len(examples),
        "skipped": dict(skips.counts),
    }
    return examples, stats


def run_mini(args: argparse.Namespace, out_dir: str) -> dict:
    """Convert the mini release, writing into ``out_dir``; returns the stats for stats.json."""
    splits: dict[str, dict] = {}
    missing: list[str] = []
    for split in MINI_SPLITS:
        result = prepare_mini_split(args.input, split, args.knowledge_separator, args.lowercase, args.dedup)
        if result is None:
            missing.append(split)
            continue
        examples, stats = result
        if args.tokenizer != "none":
            from data_prep.corpora.tokenize import tokenize_examples

            examples = tokenize_examples(examples, args.tokenizer, keep_tokens=[args.knowledge_separator])
        write_split(out_dir, split, examples)
        splits[split] = stats
        logger.info(
            "%s: %d pairs -> %d examples (%d without knowledge); skipped %s",
            split,
            stats["pairs"],
            stats["examples"],
            stats["no_knowledge"],
            stats["skipped"] or "none",
        )
    if not splits:
        raise CorpusError(args.input, "no WoW mini split found (expected {train,valid,test}.{pro_qa,sent_fact}.txt)")
    return {"splits": splits, "missing": missing}


# --------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """The ``prepare-wow`` argument parser."""
    p = argparse.ArgumentParser(
        prog="prepare-wow",
        description="Wizard of Wikipedia -> {split}.src/.tgt (+ .align for ki, .knowledge for mini) + stats.json.",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=["ki", "mini"],
        help="ki: knowledge-internalization release ({valid,test.seen,test.unseen}.{src,tgt,voken.src}); "
        "mini: {train,valid,test}.{pro_qa,sent_fact}.txt",
    )
    p.add_argument("--input", required=True, help="folder holding the release's files")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--knowledge-separator",
        default=KNOWLEDGE_SEP,
        help=f"(mini) token placed, with spaces, between knowledge sentences (default {KNOWLEDGE_SEP})",
    )
    add_text_options(p, "(mini) tokenise with BERT uncased WordPiece; ki is already tokenised", scope="(mini) ")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Entry point of ``prepare-wow``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.format == "ki" and (args.lowercase or args.dedup or args.tokenizer != "none"):
        parser.error("--lowercase, --dedup and --tokenizer apply to --format mini only (ki is copied as is)")
    if len(args.knowledge_separator.split()) != 1:
        parser.error("--knowledge-separator must be a single non-empty token")
    setup_logging(args.verbose)
    if not os.path.isdir(args.input):
        raise FileNotFoundError(f"{args.input}: not a directory")
    # every file is staged and moved into --output only when all were written
    with text_io.staged_directory(args.output) as stage:
        stats = run_ki(args, stage) if args.format == "ki" else run_mini(args, stage)
        stats = {"corpus": f"wow_{args.format}", "options": vars(args), **stats}
        write_stats(stage, stats)
    return stats


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
