"""Output: the JSON report and the markdown results table (new or appended to)."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

from .readers import InputError
from .registry import BY_HEADER, BY_KEY, FOOTNOTE

NAME_HEADER = "System"
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
    """The header and alignment lines of a table with the given metric columns."""
    headers = [NAME_HEADER, *(BY_KEY[k].header for k in keys)]
    return [_row(headers), "|" + "|".join([":---"] + ["---:"] * len(keys)) + "|"]


def markdown_row(name: str, results: Mapping[str, float], keys: Sequence[str]) -> str:
    """One table row: the system name, then the formatted values of ``keys``."""
    return _row([name.replace("|", "\\|"), *(format_value(k, results.get(k)) for k in keys)])


def markdown_table(name: str, results: Mapping[str, float]) -> str:
    """A complete one-row table (header, row, footnote) for ``results`` in their key order."""
    keys = list(results)
    lines = [*markdown_header(keys), markdown_row(name, results, keys), "", FOOTNOTE]
    return "\n".join(lines) + "\n"


def _split_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def append_markdown(path: str | os.PathLike, name: str, results: Mapping[str, float]) -> None:
    """Add a row for ``results`` to the table in ``path``, creating the file if needed.

    The row is inserted after the last row of the first table in the file, under that table's
    header: metrics this run did not compute show as ``–``; a computed metric the table has no
    column for is an error (the table's columns are fixed by its first system).
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        with open(path, "w", encoding="utf-8") as f:
            f.write(markdown_table(name, results))
        return
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|")), None)
    if start is None or start + 1 >= len(lines):
        raise InputError(f"{os.fspath(path)}: no markdown table to append to")
    headers = _split_cells(lines[start])
    if not headers or headers[0] != NAME_HEADER or any(h not in BY_HEADER for h in headers[1:]):
        raise InputError(
            f"{os.fspath(path)}: table header {headers} is not a dialog-metrics header"
        )
    keys = [BY_HEADER[h].key for h in headers[1:]]
    extra = [k for k in results if k not in keys]
    if extra:
        raise InputError(
            f"{os.fspath(path)}: the table has no column for {', '.join(extra)}; write a new "
            "table (--md-out) or choose the table's metrics with --metrics"
        )
    end = start + 1
    while end < len(lines) and lines[end].lstrip().startswith("|"):
        end += 1
    lines.insert(end, markdown_row(name, results, keys))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


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
    """The JSON report: name, counts (``n_examples``...), every metric value (unscaled: 0-1
    except ``safe`` in percent, ``ppl``, ``kl*``, ``entity``, ``avg_len``; NaN as null), the
    one-line ``definitions`` of the reported metrics and the ``settings`` used."""
    report: dict[str, Any] = {"name": name, **counts}
    report.update({k: _json_value(v) for k, v in results.items()})
    report["definitions"] = {k: BY_KEY[k].definition for k in results}
    report["settings"] = dict(settings)
    return report


def write_json(path: str | os.PathLike, report: Mapping[str, Any]) -> None:
    """Write ``report`` as indented UTF-8 JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")
