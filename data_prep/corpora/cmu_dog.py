"""CMU Document Grounded Conversations (Zhou et al., 2018) -> context/response/knowledge.

Input (``--input``): either the ``cmu_dog.tar.gz`` archive (members are read directly, nothing
is extracted) or a directory laid out like the official GitHub download::

    Conversations/{train,valid,test}/<hash>.json   # one conversation each
    WikiData/<Movie>.json                          # 30 movie documents, sections "0".."3"

(a directory holding exactly one such root, e.g. the extracted ``cmu_dog/``, works too).

A conversation has ``history`` (turns ``{text, docIdx, uid, utcTimestamp}``),
``wikiDocumentIdx`` (the document) and ``whoSawDoc`` (``["user1"]``, ``["user2"]`` or both).
A document has ``wikiDocumentIdx`` and sections ``"0"`` (a dict: movieName, year, director,
genre, rating, cast, introduction, critical_response; lists for rating/cast/critical_response)
and ``"1"``..``"3"`` (plain text: key scenes of the plot).

Examples. Turns are cleaned (whitespace collapsed to one line); an empty turn is dropped and
counted (``skipped.empty_turn``, in turns). With ``--merge-consecutive`` (default on; off with
``--no-merge-consecutive``) consecutive turns by the same ``uid`` -- about 30% of the raw turns
in CMU_DoG are such continuations, people typed one message in several lines -- are joined
with a space into one utterance whose ``docIdx`` is that of the run's *last* turn (the section
on screen when the utterance was finished). Then, for every utterance t >= 1 of a
conversation:

- ``src`` = the previous ``--context-turns`` utterances (default 3; 1 = single-turn)
  joined by `` __eou__ `` (``--separator``),
- ``tgt`` = utterance t,
- ``knowledge`` = the text of section ``docIdx`` of the conversation's document, where
  ``docIdx`` is utterance t's. Section 0 is rendered as
  ``"movie name: X. year: Y. director: ... cast: A, B, C. introduction: ... critical
  response: ..."`` (list items joined with ", ", critical responses with " ").

``whoSawDoc``: in the one-reader scenario only one of the two workers saw the document.
``docIdx`` is nevertheless the *conversation's* current section (it advances for both speakers
alike and is non-decreasing in 99% of the conversations), so by default the section is attached
to every response -- the usual CMU_DoG setting, in which the model is always given the section
under discussion. ``--knowledge-only-if-seen`` instead leaves ``knowledge`` empty when the
speaker of the response did not see the document; how many responses that concerns is
counted either way (``knowledge_unseen``).

Each split also gets ``{split}.docid`` (the ``wikiDocumentIdx`` of each example) so that
evaluation can recover the whole document (see :func:`load_documents`).
Options ``--lowercase``, ``--dedup`` (first of identical (src, tgt) pairs per split; applied
before tokenisation) and ``--tokenizer bert`` (BERT uncased WordPiece, the separator kept
whole). Very long turns (a few pasted paragraphs, one of 8k words) are kept as they are:
truncation is the model's business.

Malformed input raises :class:`CorpusError` naming the file (``archive[member]`` for the
tarball), the line for invalid JSON, or the JSON key / turn index, and what was expected.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from data_prep.common import SPLITS, Example, SkipCounter, add_text_options, one_line, write_split, write_stats
from informative_dialogue import text_io
from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.errors import CorpusError
from data_prep.corpora.cmu_dog_source import CmuDogSource, documents_of, is_int

logger = logging.getLogger(__name__)

EOU = "__eou__"


@dataclass
class Turn:
    """One (possibly merged) utterance of a conversation."""

    text: str
    uid: str
    doc_idx: int


def parse_conversation(
    conv: Any,
    where: str,
    docs: dict[int, dict[str, str]],
) -> tuple[int, list[str], list[tuple[int, str, str, int]]]:
    """Validate one conversation JSON object.

    Returns ``(wikiDocumentIdx, whoSawDoc, [(turn index, text, uid, docIdx), ...])`` with the
    text whitespace-normalised (possibly empty). Raises CorpusError naming the key or turn.
    """
    if not isinstance(conv, dict):
        raise CorpusError(where, f"expected a JSON object (a conversation), got {type(conv).__name__}")
    for key in ("history", "wikiDocumentIdx", "whoSawDoc"):
        if key not in conv:
            raise CorpusError(where, f"missing key {key!r}")
    doc_id = conv["wikiDocumentIdx"]
    if not is_int(doc_id):
        raise CorpusError(where, f"key 'wikiDocumentIdx': expected an integer, got {doc_id!r}")
    if doc_id not in docs:
        raise CorpusError(where, f"key 'wikiDocumentIdx': document {doc_id} is not in WikiData/ (have {sorted(docs)})")
    who = conv["whoSawDoc"]
    if not isinstance(who, list) or not all(isinstance(u, str) for u in who):
        raise CorpusError(where, f"key 'whoSawDoc': expected a list of user ids, got {who!r}")
    history = conv["history"]
    if not isinstance(history, list):
        raise CorpusError(where, f"key 'history': expected a list of turns, got {type(history).__name__}")
    turns = []
    for i, turn in enumerate(history):
        if not isinstance(turn, dict):
            raise CorpusError(where, f"history[{i}]: expected an object, got {type(turn).__name__}")
        for key, ok, expected in (
            ("text", lambda v: isinstance(v, str), "a string"),
            ("uid", lambda v: isinstance(v, str), "a string"),
            ("docIdx", is_int, "an integer"),
        ):
            if key not in turn:
                raise CorpusError(where, f"history[{i}]: missing field {key!r}")
            if not ok(turn[key]):
                raise CorpusError(where, f"history[{i}].{key}: expected {expected}, got {turn[key]!r}")
        if str(turn["docIdx"]) not in docs[doc_id]:
            raise CorpusError(where, f"history[{i}].docIdx: expected a section 0..3, got {turn['docIdx']}")
        turns.append((i, one_line(turn["text"]), turn["uid"], turn["docIdx"]))
    return doc_id, who, turns


def conversation_turns(
    raw_turns: Sequence[tuple[int, str, str, int]],
    merge_consecutive: bool,
    skips: SkipCounter,
    where: str,
) -> tuple[list[Turn], int]:
    """Drop empty turns (counted as ``empty_turn``) and, if asked, merge consecutive turns by
    the same speaker (text joined by a space, docIdx of the last). Returns (turns, number of
    raw turns merged into a previous one)."""
    turns: list[Turn] = []
    merged = 0
    for i, text, uid, doc_idx in raw_turns:
        if not text:
            skips.skip("empty_turn", f"{where} history[{i}]")
            continue
        if merge_consecutive and turns and turns[-1].uid == uid:
            turns[-1].text += " " + text
            turns[-1].doc_idx = doc_idx
            merged += 1
        else:
            turns.append(Turn(text, uid, doc_idx))
    return turns, merged


def conversation_examples(
    turns: Sequence[Turn],
    sections: dict[str, str],
    who_saw_doc: Sequence[str],
    context_turns: int,
    separator: str,
    knowledge_only_if_seen: bool,
) -> Iterator[tuple[Example, bool]]:
    """Yield ``(example, speaker_saw_doc)`` for every utterance t >= 1 (see module doc)."""
    joiner = f" {separator} "
    for t in range(1, len(turns)):
        context = turns[max(0, t - context_turns) : t]
        seen = turns[t].uid in who_saw_doc
        knowledge = sections[str(turns[t].doc_idx)]
        if knowledge_only_if_seen and not seen:
            knowledge = ""
        yield Example(src=joiner.join(u.text for u in context), tgt=turns[t].text, knowledge=knowledge), seen


def prepare_split(
    source: CmuDogSource,
    docs: dict[int, dict[str, str]],
    split: str,
    context_turns: int = 3,
    separator: str = EOU,
    merge_consecutive: bool = True,
    knowledge_only_if_seen: bool = False,
    lowercase: bool = False,
    dedup: bool = False,
) -> tuple[list[Example], list[int], dict]:
    """Read ``Conversations/<split>/*.json``. Returns (examples, docids, stats); ``docids``
    is aligned with ``examples``. ``docs`` comes from :func:`load_documents` (raw case)."""
    if context_turns < 1:
        raise ValueError(f"context_turns must be >= 1, got {context_turns}")
    files = source.list(f"Conversations/{split}")
    if not files:
        raise CorpusError(source.path, f"no Conversations/{split}/*.json files")
    if lowercase:
        docs = {d: {s: t.lower() for s, t in secs.items()} for d, secs in docs.items()}
    skips = SkipCounter()
    pairs: list[tuple[Example, int, bool]] = []
    raw_turns_total = merged_total = 0
    for rel in tqdm(files, desc=f"cmu_dog {split}", unit="conv"):
        where = source.describe(rel)
        doc_id, who, raw_turns = parse_conversation(source.load_json(rel), where, docs)
        raw_turns_total += len(raw_turns)
        if lowercase:
            raw_turns = [(i, text.lower(), uid, d) for i, text, uid, d in raw_turns]
        turns, merged = conversation_turns(raw_turns, merge_consecutive, skips, where)
        merged_total += merged
        if len(turns) < 2:
            skips.skip("short_conversation", where)
            continue
        for ex, seen in conversation_examples(
            turns, docs[doc_id], who, context_turns, separator, knowledge_only_if_seen
        ):
            pairs.append((ex, doc_id, seen))
    n_pairs = len(pairs)
    if dedup:
        seen_keys: set[tuple[str, str]] = set()
        kept = []
        for pair in pairs:
            key = (pair[0].src, pair[0].tgt)
            if key not in seen_keys:
                seen_keys.add(key)
                kept.append(pair)
        pairs = kept
    stats = {
        "conversations": len(files),
        "raw_turns": raw_turns_total,
        "merged_turns": merged_total,
        "pairs": n_pairs,
        "knowledge_unseen": sum(1 for p in pairs if not p[2]),
        "duplicates_removed": n_pairs - len(pairs),
        "examples": len(pairs),
        "skipped": dict(skips.counts),
    }
    return [p[0] for p in pairs], [p[1] for p in pairs], stats


def write_docids(out_dir: str | os.PathLike, split: str, docids: Sequence[int]) -> None:
    """Write ``{split}.docid``: one wikiDocumentIdx per example line."""
    with open(os.path.join(out_dir, f"{split}.docid"), "w", encoding="utf-8") as f:
        for d in docids:
            f.write(f"{d}\n")


# --------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """The ``prepare-cmu-dog`` argument parser."""
    p = argparse.ArgumentParser(
        prog="prepare-cmu-dog",
        description=(
            "CMU_DoG (tarball or official directory) -> {split}.src/.tgt/.knowledge/.docid + stats.json. "
            "Knowledge = the document section (docIdx) current at the response."
        ),
    )
    p.add_argument("--input", required=True, help="cmu_dog.tar.gz, or a folder with Conversations/ and WikiData/")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--context-turns", type=int, default=3, help="utterances of context (1 = single-turn); default 3")
    p.add_argument("--separator", default=EOU, help="token placed (with spaces) between context utterances")
    p.add_argument(
        "--merge-consecutive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="merge consecutive turns by the same speaker into one utterance (default on)",
    )
    p.add_argument(
        "--knowledge-only-if-seen",
        action="store_true",
        help="empty knowledge when the responding speaker did not see the document (whoSawDoc); "
        "by default the conversation's current section is always attached",
    )
    add_text_options(p, "tokenise with BERT uncased WordPiece (the separator stays one token)")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Entry point of ``prepare-cmu-dog``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.context_turns < 1:
        parser.error("--context-turns must be >= 1")
    if not args.separator.strip() or len(args.separator.split()) != 1:
        parser.error("--separator must be a single non-empty token")
    setup_logging(args.verbose)
    source = CmuDogSource(args.input)
    docs = documents_of(source)
    logger.info("%s: %d documents", args.input, len(docs))
    all_stats = {}
    # every file is staged and moved into --output only when all splits were written
    with text_io.staged_directory(args.output) as stage:
        for split in args.splits:
            examples, docids, stats = prepare_split(
                source,
                docs,
                split,
                context_turns=args.context_turns,
                separator=args.separator,
                merge_consecutive=args.merge_consecutive,
                knowledge_only_if_seen=args.knowledge_only_if_seen,
                lowercase=args.lowercase,
                dedup=args.dedup,
            )
            if args.tokenizer != "none":
                from data_prep.corpora.tokenize import tokenize_examples

                examples = tokenize_examples(examples, args.tokenizer, [args.separator])
            write_split(stage, split, examples)
            write_docids(stage, split, docids)
            all_stats[split] = stats
            logger.info(
                "%s: %d conversations, %d turns (%d merged) -> %d pairs -> %d examples; skipped %s",
                split,
                stats["conversations"],
                stats["raw_turns"],
                stats["merged_turns"],
                stats["pairs"],
                stats["examples"],
                stats["skipped"] or "none",
            )
        stats = {"corpus": "cmu_dog", "documents": len(docs), "options": vars(args), "splits": all_stats}
        write_stats(stage, stats)
    return stats


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
