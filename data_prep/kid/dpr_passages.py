"""``kid-convert-dpr``: DPR's Wikipedia passages (``psgs_w100.tsv[.gz]``, the knowledge source of
the knowledge-infused decoding paper) -> this project's ``tsv`` collection format.

Input (DPR, Karpukhin et al. 2020): a header line ``id<TAB>text<TAB>title``, then one passage
per row, CSV quoting (``"`` around fields that contain quotes, doubled ``""`` inside).
Output (``data_prep.kid.collection`` ``tsv``): ``id<TAB>title<TAB>text`` per line, no header,
whitespace (tabs and newlines included) collapsed to single spaces. The output is written under
a temporary name beside ``OUTPUT`` and renamed when complete
(:class:`informative_dialogue.text_io.OutputSet`), so a failed or killed run never leaves a
partial collection. Any row without exactly 3 fields, or bytes that are not UTF-8, are an error
naming the file and line (exit status 2).
"""
from __future__ import annotations

import csv
import gzip
import logging
import os
import sys
from argparse import ArgumentParser
from typing import Optional

from tqdm import tqdm

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.text_io import OutputSet

logger = logging.getLogger(__name__)

DPR_HEADER = ["id", "text", "title"]


def convert_dpr_passages(source: str | os.PathLike, output: str | os.PathLike, progress: bool = True) -> int:
    """Convert ``source`` (DPR tsv, optionally gzipped) to a ``tsv`` collection at ``output``.
    Returns the number of passages written; raises CorpusError on a wrong header or row."""
    source, output = os.fspath(source), os.fspath(output)
    csv.field_size_limit(sys.maxsize)
    opener = gzip.open if source.endswith(".gz") else open
    n_passages = 0
    line_no = 1
    try:
        with OutputSet() as outputs, opener(source, "rt", encoding="utf-8", newline="") as f, \
                open(outputs.path(output), "w", encoding="utf-8") as out:
            rows = csv.reader(f, delimiter="\t")
            header = next(rows, None)
            if header is None or header[:3] != DPR_HEADER:
                raise CorpusError(source, f"expected the DPR header id<TAB>text<TAB>title, got {header}", 1)
            for row in tqdm(rows, desc=f"convert {os.path.basename(source)}", unit="passage", disable=not progress):
                # physical line number (quoted newlines count) of the last line of this row
                line_no = rows.line_num
                if len(row) != 3:
                    raise CorpusError(source, f"expected 3 tab-separated fields (id, text, title), got {len(row)}",
                                      line_no)
                pid, text, title = (" ".join(field.split()) for field in row)
                if not pid:
                    raise CorpusError(source, "empty passage id", line_no)
                out.write(f"{pid}\t{title}\t{text}\n")
                n_passages += 1
    except UnicodeDecodeError:
        with (gzip.open(source, "rb") if source.endswith(".gz") else open(source, "rb")) as raw:
            raise text_io.not_utf8_error(source, raw) from None  # names the line and column
    except csv.Error as exc:
        raise CorpusError(source, f"malformed row ({exc})", line_no) from exc
    logger.info("wrote %s: %d passages", output, n_passages)
    return n_passages


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="kid-convert-dpr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="DPR psgs_w100.tsv or psgs_w100.tsv.gz")
    parser.add_argument("--output", required=True, help="collection to write (.tsv: id, title, text)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Optional[list[str]] = None) -> dict:
    """``kid-convert-dpr``; returns ``{"passages": number written}``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if not args.output.endswith(".tsv"):
        raise ValueError(f"--output must end in .tsv (the collection format), got {args.output}")
    return {"passages": convert_dpr_passages(args.input, args.output, progress=not args.no_progress)}


cli = console_script(main)
