"""DailyDialog (Li et al., 2017) from the official split zips -> query/response pairs.

Input: a directory holding ``train.zip``, ``validation.zip``, ``test.zip`` as distributed in
``ijcnlp_dailydialog`` (each with ``<split>/dialogues_<split>.txt``: one dialogue per line,
every utterance ending in `` __eou__``), or the same directory already unzipped.

Modes:
- single-turn (``--context-turns 1``, default): adjacent utterance pairs (u_i, u_{i+1});
  76,053 / 7,069 / 6,740 on the official data, 68,104 / 6,996 / 6,693 unique lower-cased.
- multi-turn (``--context-turns N``): the last N utterances joined by ``--separator`` -> next.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import zipfile
from typing import Iterator

from tqdm import tqdm

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from data_prep.common import Example, SkipCounter, add_text_options, dedup_examples, one_line, write_split, write_stats
from informative_dialogue.cli import console_script, setup_logging

logger = logging.getLogger(__name__)

EOU = "__eou__"
# our split name -> the official one (zip name and file suffix)
OFFICIAL_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


def open_dialogues(data_dir: str, official_split: str) -> tuple[str, list[str]]:
    """Return (source description, lines) of ``dialogues_<split>.txt`` from the split's zip,
    or from the unzipped folder when there is no zip. Lines are split on ``\\n`` only
    (:mod:`informative_dialogue.text_io`).

    Raises CorpusError for a corrupt zip, one without the dialogues file, bytes that are not
    UTF-8 or a lone ``\\r`` (naming the line).
    """
    member = f"{official_split}/dialogues_{official_split}.txt"
    zip_path = os.path.join(data_dir, f"{official_split}.zip")
    if os.path.exists(zip_path):
        try:
            with zipfile.ZipFile(zip_path) as zf:
                names = [n for n in zf.namelist() if n.endswith(f"dialogues_{official_split}.txt")]
                if not names:
                    raise CorpusError(zip_path, f"no member named {member!r} in the archive")
                raw = zf.read(names[0])
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise CorpusError(zip_path, f"not a valid zip archive ({exc})") from exc
        source = f"{zip_path}!{names[0]}"
    else:
        plain = os.path.join(data_dir, member)
        if not os.path.exists(plain):
            raise CorpusError(data_dir, f"neither {official_split}.zip nor {member} found")
        with open(plain, "rb") as f:
            raw = f.read()
        source = plain
    return source, list(text_io.iter_stream_lines(io.BytesIO(raw), source))


def parse_dialogue(line: str, source: str, line_no: int) -> list[str]:
    """Split one dialogue line into utterances (whitespace-normalised, possibly empty strings).

    Raises CorpusError if the line does not end with ``__eou__``.
    """
    stripped = line.strip()
    if not stripped.endswith(EOU):
        raise CorpusError(source, f"dialogue does not end with '{EOU}' (got ...{stripped[-30:]!r})", line_no)
    return [one_line(u) for u in stripped[: -len(EOU)].split(EOU)]


def dialogue_examples(
    utterances: list[str],
    context_turns: int,
    separator: str,
    skips: SkipCounter,
    where: str,
) -> Iterator[Example]:
    """Yield (context -> response) examples from one dialogue.

    The context is the previous ``context_turns`` utterances joined by `` separator ``. An
    empty utterance cannot be a response and breaks the context: examples whose response or
    context contain it are skipped and counted (``empty_utterance``).
    """
    for t in range(1, len(utterances)):
        context = utterances[max(0, t - context_turns) : t]
        if not utterances[t] or any(not u for u in context):
            skips.skip("empty_utterance", where)
            continue
        yield Example(src=f" {separator} ".join(context), tgt=utterances[t])


def prepare_split(
    data_dir: str,
    split: str,
    context_turns: int = 1,
    separator: str = EOU,
    lowercase: bool = False,
    dedup: bool = False,
    max_dialogues: int | None = None,
) -> tuple[list[Example], dict]:
    """Read one split and return its examples with counts
    (``dialogues``, ``pairs``, ``duplicates_removed``, ``examples``, ``skipped``).

    ``max_dialogues`` keeps only the first N dialogues of the split (for quick runs and tests).
    """
    if context_turns < 1:
        raise ValueError(f"context_turns must be >= 1, got {context_turns}")
    source, lines = open_dialogues(data_dir, OFFICIAL_SPLITS[split])
    skips = SkipCounter()
    examples: list[Example] = []
    dialogues = 0
    for line_no, line in enumerate(tqdm(lines, desc=f"dailydialog {split}", unit="dlg"), 1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing one) hold no dialogue
        if max_dialogues is not None and dialogues >= max_dialogues:
            break
        dialogues += 1
        utterances = parse_dialogue(line, source, line_no)
        if lowercase:
            utterances = [u.lower() for u in utterances]
        examples.extend(
            dialogue_examples(utterances, context_turns, separator, skips, f"{source}:{line_no}")
        )
    pairs = len(examples)
    if dedup:
        examples = dedup_examples(examples)
    stats = {
        "dialogues": dialogues,
        "pairs": pairs,
        "duplicates_removed": pairs - len(examples),
        "examples": len(examples),
        "skipped": dict(skips.counts),
    }
    return examples, stats


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare-dailydialog",
        description="DailyDialog official zips -> {train,valid,test}.{src,tgt} (+ stats.json).",
    )
    p.add_argument("--input", required=True, help="folder with train.zip, validation.zip, test.zip (or unzipped)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--context-turns", type=int, default=1, help="utterances of context (1 = single-turn pairs)")
    p.add_argument("--separator", default=EOU, help="token placed between context utterances")
    add_text_options(p, "tokenise the output with BERT uncased WordPiece (tokenize-dialog does this and sentencepiece too)")
    p.add_argument("--max-dialogues", type=int, default=None, help="keep only the first N dialogues of each split")
    p.add_argument("--splits", nargs="+", default=list(OFFICIAL_SPLITS), choices=list(OFFICIAL_SPLITS))
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    all_stats = {}
    # all splits and stats.json are staged and moved into --output together: a split that fails
    # (e.g. a corrupt zip) leaves the previous output as it was, without a half-new mix
    with text_io.staged_directory(args.output) as stage:
        for split in args.splits:
            examples, stats = prepare_split(
                args.input, split, args.context_turns, args.separator, args.lowercase, args.dedup,
                args.max_dialogues,
            )
            if args.tokenizer != "none":
                from data_prep.corpora.tokenize import tokenize_examples

                examples = tokenize_examples(examples, args.tokenizer, keep_tokens=[args.separator])
            write_split(stage, split, examples)
            all_stats[split] = stats
            logger.info("%s: %d dialogues -> %d pairs -> %d examples", split, stats["dialogues"], stats["pairs"],
                        stats["examples"])
        stats = {"corpus": "dailydialog", "options": vars(args), "splits": all_stats}
        write_stats(stage, stats)
    return stats


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
