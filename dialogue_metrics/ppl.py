"""Perplexity from a fairseq-train / fairseq-validate log (it cannot be computed from text)."""
from __future__ import annotations

import math
import os
import re

from .readers import InputError

# JSON log format: {"epoch": 1, "valid_loss": "5.1", "valid_ppl": "29.87", ...}; the key is
# <subset>_ppl (valid_ppl, test_ppl, valid1_ppl, ...), train_ppl/train_inner_ppl are skipped.
_JSON_PPL = re.compile(r'"(?!train)(\w+?)_ppl"\s*:\s*"?([-+0-9.eE]+|inf|nan)"?')
# simple/tqdm format: "... | valid on 'valid' subset | loss 5.123 | nll_loss 4.9 | ppl 29.87 | ..."
_VALID_LINE = re.compile(r"valid on '[^']*' subset|\|\s*valid\s*\|")
_PIPE_PPL = re.compile(r"\|\s*ppl[\s=]+([-+0-9.eE]+|inf|nan)\b")


def ppl_from_log(path: str | os.PathLike) -> float:
    """The LAST validation perplexity in a fairseq log.

    Matches both fairseq log formats: lines of the simple/tqdm format that are validation lines
    (``valid on '<subset>' subset`` or the ``| valid |`` logger tag) and carry ``| ppl X``, and
    JSON lines with a ``"<subset>_ppl"`` key other than ``train_ppl``/``train_inner_ppl``
    (values may be quoted). fairseq's ``ppl`` is ``2 ** nll_loss`` (base 2). Raises
    :class:`InputError` if the log has no validation ppl.

    A log is not a line-aligned corpus file: it is read leniently (progress bars redraw with
    ``\\r``, which counts as a line break here; undecodable bytes are replaced).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"cannot read {os.fspath(path)}: {e.strerror}") from e
    found: float | None = None
    for line in text.splitlines():
        m = _JSON_PPL.search(line)
        if m:
            found = float(m.group(2))
            continue
        if _VALID_LINE.search(line):
            m = _PIPE_PPL.search(line)
            if m:
                found = float(m.group(1))
    if found is None:
        raise InputError(f"{os.fspath(path)}: no validation ppl found in this fairseq log")
    if math.isnan(found):
        raise InputError(f"{os.fspath(path)}: last validation ppl is nan")
    return found
