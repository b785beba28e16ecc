"""ROCStories / Story Cloze (Mostafazadeh et al., 2016) CSV -> story-ending pairs.

The story-ending generation task of the knowledge-infused decoding paper (section 4.1, "ROC"):
given the first four sentences of a five-sentence story, generate its ending.

Input CSV layouts (recognised by the header, columns in any order, extra columns ignored):

``cloze`` (Story Cloze validation / test)
    ``[InputStoryid,] InputSentence1..4, RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2
    [, AnswerRightEnding]``. The source is the four input sentences; the target is the right
    ending (``RandomFifthSentenceQuiz{AnswerRightEnding}``, label 1 or 2) where the split has
    labels (validation), none otherwise (test).
``stories`` (the ROCStories training corpora)
    ``storyid, storytitle, sentence1..sentence5``: source = sentences 1-4, target = sentence 5.

Output, under ``--output``: ``{split}.src`` (the four context sentences joined by one space,
one story per line), ``{split}.tgt`` (the ending; only for splits with endings) and
``stats.json`` (stories, labels, words per field, the file read, per split).

Every row is checked; a malformed one (wrong number of fields, an empty sentence, a label
other than 1/2, a header without the needed columns, text that is not UTF-8) is a
:class:`~data_prep.common.CorpusError` naming the file and the 1-based line where the row
starts. Blank lines are skipped and counted.

Input files: ``--input DIR`` holds ``{split}.csv`` or exactly one CSV whose name ends in
``_{split}.csv`` (or another non-alphanumeric character before the split name), so the official
names, e.g. ``cloze_test_val__spring2016 - cloze_test_ALL_val.csv``, are found;
``--file SPLIT=PATH`` names a file directly (e.g. ``train=ROCStories_winter2017.csv``).
"""
from __future__ import annotations

import argparse
import csv
import glob
import logging
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from tqdm import tqdm

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from informative_dialogue.cli import console_script, setup_logging
from data_prep.common import one_line, write_stats

logger = logging.getLogger(__name__)

CLOZE_CONTEXT = tuple(f"InputSentence{i}" for i in range(1, 5))
CLOZE_ENDINGS = ("RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2")
CLOZE_LABEL = "AnswerRightEnding"
STORY_COLUMNS = tuple(f"sentence{i}" for i in range(1, 6))
DEFAULT_SPLITS = ("val", "test")


@dataclass(frozen=True)
class Story:
    """One story: the four context sentences (one line) and its ending (``None`` if unknown).

    Attributes:
        context: the four input sentences joined by single spaces.
        ending: the right ending, or ``None`` for an unlabelled Story Cloze test row.
        line: 1-based line of the CSV where the row starts.
    """

    context: str
    ending: Optional[str]
    line: int


def detect_layout(header: Sequence[str], path: str) -> str:
    """``cloze`` or ``stories`` from a CSV header; CorpusError (line 1) otherwise."""
    cols = set(h.strip() for h in header)
    if set(CLOZE_CONTEXT) <= cols and set(CLOZE_ENDINGS) <= cols:
        return "cloze"
    if set(STORY_COLUMNS) <= cols:
        return "stories"
    raise CorpusError(
        path,
        f"header {list(header)!r} is neither Story Cloze ({', '.join(CLOZE_CONTEXT + CLOZE_ENDINGS)}) "
        f"nor ROCStories ({', '.join(STORY_COLUMNS)})",
        1,
    )


def _rows(path: str) -> Iterator[tuple[int, list[str]]]:
    """``(start line, fields)`` of every CSV row (quoted fields may span lines)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            start = 1
            try:
                for row in reader:
                    yield start, row
                    start = reader.line_num + 1
            except csv.Error as exc:
                raise CorpusError(path, f"malformed CSV ({exc})", start) from exc
    except UnicodeDecodeError:
        raise text_io.not_utf8_error(path) from None  # names the line and column


def read_stories(path: str | os.PathLike, max_stories: Optional[int] = None) -> tuple[list[Story], dict]:
    """Parse one ROCStories / Story Cloze CSV (see the module doc).

    Args:
        path: the CSV file.
        max_stories: keep only the first N stories.

    Returns:
        ``(stories, stats)``: stats has ``file``, ``layout``, ``stories``, ``with_ending``,
        ``blank_lines`` and, for labelled Story Cloze, ``labels`` ({"1": n, "2": n}).
    """
    path = os.fspath(path)
    rows = _rows(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise CorpusError(path, "empty file (expected a CSV header)") from None
    header = [h.strip() for h in header]
    layout = detect_layout(header, path)
    col = {h: i for i, h in enumerate(header)}
    has_label = layout == "cloze" and CLOZE_LABEL in col
    stories: list[Story] = []
    blank = 0
    labels = {"1": 0, "2": 0}
    for line, row in tqdm(rows, desc=f"rocstories {os.path.basename(path)}", unit="story"):
        if max_stories is not None and len(stories) >= max_stories:
            break
        if not row or all(not f.strip() for f in row):
            blank += 1
            continue
        if len(row) != len(header):
            raise CorpusError(path, f"{len(row)} fields, the header has {len(header)}", line)

        def field(name: str) -> str:
            value = one_line(row[col[name]])
            if not value:
                raise CorpusError(path, f"empty {name}", line)
            return value

        if layout == "cloze":
            context = " ".join(field(c) for c in CLOZE_CONTEXT)
            endings = [field(c) for c in CLOZE_ENDINGS]
            ending = None
            if has_label:
                label = row[col[CLOZE_LABEL]].strip()
                if label not in ("1", "2"):
                    raise CorpusError(path, f"{CLOZE_LABEL} must be 1 or 2, got {label!r}", line)
                labels[label] += 1
                ending = endings[int(label) - 1]
        else:
            context = " ".join(field(c) for c in STORY_COLUMNS[:4])
            ending = field(STORY_COLUMNS[4])
        stories.append(Story(context, ending, line))
    with_ending = sum(s.ending is not None for s in stories)
    stats: dict = {
        "file": path,
        "layout": layout,
        "stories": len(stories),
        "with_ending": with_ending,
        "blank_lines": blank,
    }
    if has_label:
        stats["labels"] = labels
    if stories:
        stats["context_words_mean"] = round(sum(len(s.context.split()) for s in stories) / len(stories), 2)
    if with_ending:
        stats["ending_words_mean"] = round(
            sum(len(s.ending.split()) for s in stories if s.ending is not None) / with_ending, 2
        )
    return stories, stats


def find_split_file(input_dir: str, split: str) -> str:
    """``{split}.csv`` in ``input_dir``, else the one CSV there whose name ends in the split name
    after a non-alphanumeric character (case-insensitive: ``... cloze_test_ALL_val.csv``)."""
    exact = os.path.join(input_dir, f"{split}.csv")
    if os.path.isfile(exact):
        return exact
    if not os.path.isdir(input_dir):
        raise CorpusError(input_dir, "not a folder")
    ends = re.compile(rf"(^|[^a-z0-9]){re.escape(split.lower())}\.csv$")
    matches = sorted(p for p in glob.glob(os.path.join(input_dir, "*.csv")) if ends.search(os.path.basename(p).lower()))
    if len(matches) != 1:
        found = ", ".join(os.path.basename(m) for m in matches) or "none"
        raise CorpusError(input_dir, f"need {split}.csv or exactly one *_{split}.csv (found: {found})")
    return matches[0]


def write_stories(out_dir: str, split: str, stories: Sequence[Story]) -> list[str]:
    """Write ``{split}.src`` and, when every story has an ending, ``{split}.tgt``; returns the
    paths written. A split where only some stories have endings is an error."""
    os.makedirs(out_dir, exist_ok=True)
    n_end = sum(s.ending is not None for s in stories)
    if 0 < n_end < len(stories):
        raise ValueError(f"{split}: {n_end} of {len(stories)} stories have an ending (all or none expected)")
    paths = [os.path.join(out_dir, f"{split}.src")]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.writelines(s.context + "\n" for s in stories)
    if n_end:
        paths.append(os.path.join(out_dir, f"{split}.tgt"))
        with open(paths[1], "w", encoding="utf-8") as f:
            f.writelines(f"{s.ending}\n" for s in stories)
    return paths


def _split_files(spec: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in spec:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            raise argparse.ArgumentTypeError(f"--file expects SPLIT=PATH, got {item!r}")
        out[split] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``prepare-rocstories`` argument parser."""
    p = argparse.ArgumentParser(
        prog="prepare-rocstories",
        description="ROCStories / Story Cloze CSV -> {split}.src (4 context sentences), {split}.tgt (ending), stats.json.",
    )
    p.add_argument("--input", help="folder with {split}.csv (or one *_{split}.csv per split)")
    p.add_argument("--file", action="append", default=[], metavar="SPLIT=PATH", help="a split's CSV, named directly")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--splits", nargs="+", default=None, help=f"splits to read from --input (default: {' '.join(DEFAULT_SPLITS)})")
    p.add_argument("--max-stories", type=int, default=None, help="keep only the first N stories of each split")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[list[str]] = None) -> dict:
    """``prepare-rocstories``; returns the statistics it writes to ``stats.json``. Every output
    file is staged and moved into ``--output`` only when all splits were written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        files = _split_files(args.file)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    splits = list(args.splits) if args.splits is not None else ([] if files and not args.input else list(DEFAULT_SPLITS))
    for split in splits:
        if split not in files:
            if not args.input:
                parser.error(f"split {split!r} needs --input DIR or --file {split}=PATH")
            files[split] = find_split_file(args.input, split)
    if not files:
        parser.error("nothing to do (give --input and/or --file)")
    all_stats: dict = {}
    with text_io.staged_directory(args.output) as stage:
        for split, path in files.items():
            stories, stats = read_stories(path, args.max_stories)
            if not stories:
                raise CorpusError(path, "no stories")
            stats["written"] = [os.path.basename(p) for p in write_stories(stage, split, stories)]
            all_stats[split] = stats
            logger.info("%s: %d stories from %s (%d with an ending)", split, stats["stories"], path,
                        stats["with_ending"])
        result = {"corpus": "rocstories", "options": vars(args), "splits": all_stats}
        write_stats(stage, result)
    return result


cli = console_script(main)

if __name__ == "__main__":
    cli()
