"""Output: the JSON report and the markdown results table (new or appended to)."""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from informative_dialogue.text_io import write_json_atomic, write_text_atomic

from .readers import InputError
from .registry import BY_HEADER, BY_KEY, DEFAULT_ROUGE_TOKENIZER, FOOTNOTE, definition

NAME_HEADER = "System"
N_HEADER = "N"  # the last column: the number of examples scored
MISSING = "–"


def format_value(key: str, value: float | None) -> str:
    """A metric value as shown in the table: scaled (x100 for proportions) and rounded."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    info = BY_KEY[key]
    return f"{value * info.scale:.{info.decimals}f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_header(keys: Sequence[str]) -> list[str]:
    """The header and alignment lines of a table with the given metric columns (then ``N``)."""
    headers = [NAME_HEADER, *(BY_KEY[k].header for k in keys), N_HEADER]
    return [_row(headers), "|" + "|".join([":---"] + ["---:"] * (len(keys) + 1)) + "|"]


def format_count(n_examples: int | None) -> str:
    """The ``N`` cell: the number of examples scored (``–`` when unknown)."""
    return MISSING if n_examples is None else str(int(n_examples))


def markdown_row(name: str, results: Mapping[str, float], keys: Sequence[str], n_examples: int | None = None) -> str:
    """One table row: the system name, the formatted values of ``keys``, then ``N`` (the number
    of examples scored)."""
    return _row([name.replace("|", "\\|"), *(format_value(k, results.get(k)) for k in keys), format_count(n_examples)])


def markdown_table(name: str, results: Mapping[str, float], n_examples: int | None = None) -> str:
    """A complete one-row table (header, row, footnote) for ``results`` in their key order, with
    ``N`` (the number of examples scored) as the last column."""
    keys = list(results)
    lines = [*markdown_header(keys), markdown_row(name, results, keys, n_examples), "", FOOTNOTE]
    return "\n".join(lines) + "\n"


def _split_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def append_markdown(
    path: str | os.PathLike, name: str, results: Mapping[str, float], n_examples: int | None = None
) -> None:
    """Add a row for ``results`` (scored on ``n_examples`` examples) to the table in ``path``,
    creating the file if needed.

    The row is inserted after the last row of the first table in the file, under that table's
    header: metrics this run did not compute show as ``–``; a computed metric the table has no
    column for is an error (the table's columns are fixed by its first system), and so is a table
    without the final ``N`` column (written by an older version: every row must say on how many
    examples it was scored). The file is replaced all at once.
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        write_text_atomic(path, markdown_table(name, results, n_examples).split("\n")[:-1])
        return
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|")), None)
    if start is None or start + 1 >= len(lines):
        raise InputError(f"{os.fspath(path)}: no markdown table to append to")
    headers = _split_cells(lines[start])
    has_n = bool(headers) and headers[-1] == N_HEADER
    metric_headers = headers[1:-1] if has_n else headers[1:]
    if not headers or headers[0] != NAME_HEADER or any(h not in BY_HEADER for h in metric_headers):
        raise InputError(
            f"{os.fspath(path)}: table header {headers} is not a dialog-metrics header"
        )
    if not has_n:
        raise InputError(
            f"{os.fspath(path)}: the table has no final '{N_HEADER}' column (the number of examples scored; "
            "written by an older dialog-metrics); write a new table (--md-out, or remove the file)"
        )
    keys = [BY_HEADER[h].key for h in metric_headers]
    extra = [k for k in results if k not in keys]
    if extra:
        raise InputError(
            f"{os.fspath(path)}: the table has no column for {', '.join(extra)}; write a new "
            "table (--md-out) or choose the table's metrics with --metrics"
        )
    end = start + 1
    while end < len(lines) and lines[end].lstrip().startswith("|"):
        end += 1
    lines.insert(end, markdown_row(name, results, keys, n_examples))
    write_text_atomic(path, lines[:-1] if lines and lines[-1] == "" else lines)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def json_report(
    name: str,
    results: Mapping[str, float],
    counts: Mapping[str, int],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON report: name, counts (``n_examples``, the number of examples scored, ...), every
    metric value (unscaled: 0-1 except ``safe`` in percent, ``ppl``, ``kl*``, ``entity``,
    ``avg_len``; NaN as null), the one-line ``definitions`` of the reported metrics (as computed:
    ``rougeL``'s names the tokenisation in ``settings["rouge_tokenizer"]``) and the ``settings``
    used."""
    report: dict[str, Any] = {"name": name, **counts}
    report.update({k: _json_value(v) for k, v in results.items()})
    report["definitions"] = {
        k: definition(k, rouge_tokenizer=settings.get("rouge_tokenizer", DEFAULT_ROUGE_TOKENIZER)) for k in results
    }
    report["settings"] = dict(settings)
    return report


def write_json(path: str | os.PathLike, report: Mapping[str, Any]) -> None:
    """Write ``report`` as indented UTF-8 JSON (all at once: a temporary file, then renamed)."""
    write_json_atomic(path, report, sort_keys=False, ensure_ascii=False)
