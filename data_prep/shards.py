"""Sharded, resumable runs of the offline data commands (``ki-mine``, ``kid-retrieve``,
``kid-build-trie``) and the merge of shards of JSONL outputs (``kid-merge-shards``;
``ki-merge-alignments`` merges mining's own shards, :mod:`data_prep.ki.merge`).

- ``--num-shards N --shard-id I`` (default 1 and 0): shard I is the contiguous line range
  ``[n·I//N, n·(I+1)//N)`` of the command's input (``--input`` of ``kid-retrieve``,
  ``--retrieval`` of ``kid-build-trie``). ``--num-shards`` below 1 or ``--shard-id`` outside
  ``0..N-1`` is a ValueError naming the flag.
- For ``--output OUT.jsonl`` a shard writes ``OUT.shard{I}of{N}.jsonl`` (its lines carry their
  line number in the whole input, so the shards concatenated are the unsharded output, byte
  for byte), ``OUT.shard{I}of{N}.progress.json`` (rewritten atomically after every flushed
  chunk of ``--chunk-lines`` lines: lines done, byte offset, counts) and, once complete,
  ``OUT.shard{I}of{N}.stats.json``. (An output not ending in ``.jsonl``: ``OUT.shard{I}of{N}``.)
- A rerun resumes at the recorded line (any tail after the recorded byte offset is cut
  off); a complete shard is skipped without loading models. The recorded run must match this
  one: the input by content (sha256; the path may change), the shard, and every option
  that shapes the output (the collection by content, the retriever and its settings, the
  contexts file, ...); otherwise a ValueError names the progress file and each difference.
- ``--num-shards 1`` (the default) moves its one shard into ``OUT`` and ``OUT.stats.json``
  (``--stats``) when it completes and deletes the shard files, so a killed unsharded run
  resumes the same way. With N > 1, ``kid-merge-shards --output OUT --num-shards N`` (see
  :func:`merge_shards`) checks and joins the shards; the shard files are kept.

Counts (``counts`` of the progress file) are combined by :func:`merge_counts`: numbers are
summed, keys starting with ``max_`` take the maximum, dicts are joined (a key must map to the
same value everywhere). Each command turns its counts into its stats (``summarize``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from tqdm import tqdm

from informative_dialogue.errors import CorpusError
from informative_dialogue.text_io import OutputSet, file_sha256, iter_lines, write_json_atomic

logger = logging.getLogger(__name__)


def shard_range(n_lines: int, num_shards: int, shard_id: int) -> tuple[int, int]:
    """Balanced contiguous line range ``[start, end)`` of shard ``shard_id`` of ``num_shards``."""
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"need 0 <= shard-id < num-shards, got shard {shard_id} of {num_shards}")
    return n_lines * shard_id // num_shards, n_lines * (shard_id + 1) // num_shards


def source_fingerprint(path: str | os.PathLike, n_lines: int) -> dict:
    """An input file's identity for resuming and merging: path, size, sha256, line count."""
    return {"path": os.path.abspath(os.fspath(path)), "size": os.path.getsize(path), "sha256": file_sha256(path), "lines": n_lines}


RECORD_KEYS = ("format", "source", "index", "options", "num_shards", "shard_id", "start_line", "end_line")


def record_mismatch(old: dict, new: dict) -> list[str]:
    """What differs between a shard's recorded run (``old``) and this one (``new``) on the
    :data:`RECORD_KEYS`: the source by content (not path), the index by its meta.json hash,
    options one by one; empty when the shard may resume."""
    diffs = []
    for key in RECORD_KEYS:
        a, b = old.get(key), new.get(key)
        if key == "source" and isinstance(a, dict) and isinstance(b, dict):
            # the path may move; the content decides
            a = {k: v for k, v in a.items() if k != "path"}
            b = {k: v for k, v in b.items() if k != "path"}
        if key == "index" and isinstance(a, dict) and isinstance(b, dict):
            a, b = a.get("meta_sha256"), b.get("meta_sha256")
        if a != b:
            if key == "options" and isinstance(a, dict) and isinstance(b, dict):
                diffs += [f"option {k}: recorded {a.get(k)!r}, now {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            else:
                diffs.append(f"{key}: recorded {a!r}, now {b!r}")
    return diffs


ChunkFn = Callable[[int, int], tuple[list[str], dict]]
"""``process(start, end)`` -> (output lines of input lines ``[start, end)`` without ``\\n``, counts)."""
Prepare = Callable[[int], tuple[ChunkFn, dict]]
"""``prepare(lines_done)``, called only when a shard has lines left (``lines_done`` of its lines
are in its data file already, e.g. to rebuild a cache on resume): loads models, returns
(process, setup counts)."""
Summarize = Callable[[Mapping[str, Any], Mapping[str, Any]], dict]
"""``summarize(counts, record)`` -> stats."""


def add_shard_arguments(p: argparse.ArgumentParser, chunk_lines: int = 2000) -> None:
    """``--num-shards``, ``--shard-id``, ``--chunk-lines`` (as ``ki-mine``)."""
    p.add_argument("--num-shards", type=int, default=1, help="split the input into N contiguous line ranges (default 1)")
    p.add_argument("--shard-id", type=int, default=0, help="which shard this run computes, 0..N-1 (default 0)")
    p.add_argument("--chunk-lines", type=int, default=chunk_lines, help="lines per flushed chunk (resume granularity)")


def check_shard_flags(num_shards: int, shard_id: int, chunk_lines: int = 1) -> None:
    """ValueError naming the flag for ``--num-shards < 1``, ``--shard-id`` outside ``0..N-1``
    or ``--chunk-lines < 1``."""
    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"--shard-id must be in 0..{num_shards - 1} (--num-shards {num_shards}), got {shard_id}")
    if chunk_lines < 1:
        raise ValueError(f"--chunk-lines must be >= 1, got {chunk_lines}")


def shard_files(output: str | os.PathLike, num_shards: int, shard_id: int) -> dict[str, str]:
    """``data``, ``progress`` and ``stats`` paths of shard ``shard_id`` of ``num_shards`` of ``output``."""
    output = os.fspath(output)
    ext = ".jsonl" if output.endswith(".jsonl") else ""
    base = f"{output[: len(output) - len(ext)]}.shard{shard_id}of{num_shards}"
    return {"data": base + ext, "progress": base + ".progress.json", "stats": base + ".stats.json"}


def merge_counts(acc: Mapping[str, Any], delta: Mapping[str, Any], where: str = "counts") -> dict:
    """``acc`` combined with ``delta``: numbers summed, ``max_*`` maximised, dicts joined
    (ValueError naming ``where`` when a dict key has two values)."""
    out = dict(acc)
    for key, value in delta.items():
        if key not in out:
            out[key] = dict(value) if isinstance(value, dict) else value
        elif isinstance(value, dict):
            joined = dict(out[key])
            for k, v in value.items():
                if joined.setdefault(k, v) != v:
                    raise ValueError(f"{where}: {key}[{k!r}] is {joined[k]!r} in one part and {v!r} in another")
            out[key] = joined
        elif key.startswith("max_"):
            out[key] = max(out[key], value)
        else:
            out[key] = out[key] + value
    return out


def new_record(command: str, input_path: str, n_lines: int, options: dict, **extra: Any) -> dict:
    """The part of a shard's progress record that must match on resume and merge: ``format``
    (the command), ``source`` (the input's fingerprint), ``options``; ``extra`` is carried
    (e.g. the collection path) but not compared."""
    return {"format": f"{command}/1", "source": source_fingerprint(input_path, n_lines), "index": None, "options": options, **extra}


def _count_lines_to(path: str, n_bytes: int) -> int:
    n = 0
    with open(path, "rb") as f:
        left = n_bytes
        while left > 0 and (block := f.read(min(left, 1 << 22))):
            n += block.count(b"\n")
            left -= len(block)
    return n


def _resume_state(files: dict[str, str], record: dict) -> dict:
    with open(files["progress"], encoding="utf-8") as f:
        state = json.load(f)
    diffs = record_mismatch(state, record)
    if diffs:
        raise ValueError(
            f"{files['progress']}: cannot resume, the run differs from the recorded one: " + "; ".join(diffs)
            + f". Delete {files['progress']} and {files['data']} to start this shard over."
        )
    if not os.path.exists(files["data"]) or os.path.getsize(files["data"]) < state["byte_offset"]:
        raise CorpusError(files["data"], f"shorter than the {state['byte_offset']} bytes recorded in {files['progress']}; delete both to start over")
    with open(files["data"], "r+b") as f:
        f.truncate(state["byte_offset"])
    if _count_lines_to(files["data"], state["byte_offset"]) != state["lines_done"]:
        raise CorpusError(files["data"], f"line count before byte {state['byte_offset']} differs from the {state['lines_done']} lines recorded in {files['progress']}")
    return state


def run_shard(
    output: str,
    record: dict,
    prepare: Prepare,
    summarize: Summarize,
    num_shards: int = 1,
    shard_id: int = 0,
    chunk_lines: int = 2000,
    stop_after_chunks: Optional[int] = None,
    files: Optional[dict[str, str]] = None,
    desc: Optional[str] = None,
    progress: bool = True,
) -> dict:
    """Compute (or resume, or skip when complete) one shard; returns its stats (also written to
    its ``.stats.json``; a complete shard returns the stats written when it completed).
    ``record`` from :func:`new_record` (or any dict with ``source`` = a
    :func:`source_fingerprint` and the other :data:`RECORD_KEYS` to
    compare). ``files``: the shard's ``data``, ``progress`` and ``stats`` paths (default
    :func:`shard_files` of ``output``). ``desc``: the progress bar's label (tqdm, off with
    ``progress=False``). ``stop_after_chunks`` (tests) returns ``{"stopped_at_line": ...}``
    after that many chunks, as if killed."""
    check_shard_flags(num_shards, shard_id, chunk_lines)
    start, end = shard_range(record["source"]["lines"], num_shards, shard_id)
    files = files or shard_files(output, num_shards, shard_id)
    record = {**record, "num_shards": num_shards, "shard_id": shard_id, "start_line": start, "end_line": end}
    os.makedirs(os.path.dirname(os.path.abspath(files["data"])), exist_ok=True)
    if os.path.exists(files["progress"]):
        state = _resume_state(files, record)
        if state.get("complete"):
            logger.info("shard %d of %d already complete (%s): skipped", shard_id, num_shards, files["data"])
            if os.path.exists(files["stats"]):
                with open(files["stats"], encoding="utf-8") as f:
                    return json.load(f)
            return summarize(state["counts"], state)
        logger.info("resuming shard %d of %d at line %d of [%d, %d)", shard_id, num_shards, start + state["lines_done"], start, end)
    else:
        if os.path.exists(files["data"]):
            logger.warning("%s exists without a progress file: overwriting it", files["data"])
        state = {**record, "lines_done": 0, "byte_offset": 0, "counts": {}, "elapsed_s": 0.0, "complete": False}
        open(files["data"], "w").close()
        write_json_atomic(files["progress"], state)
    t0 = time.perf_counter()
    pos = start + state["lines_done"]
    if pos < end:
        process, setup_counts = prepare(state["lines_done"])
        state["counts"] = merge_counts(state["counts"], setup_counts, files["progress"])
    chunks = 0
    label = desc or f"{record.get('format', 'shard')} {shard_id}/{num_shards}"
    with open(files["data"], "ab") as out, tqdm(total=end - start, initial=pos - start, desc=label, unit="line",
                                                 disable=not progress) as bar:
        while pos < end:
            if stop_after_chunks is not None and chunks >= stop_after_chunks:
                logger.info("stopping after %d chunk(s) (test hook)", chunks)
                return {"stopped_at_line": pos}
            stop = min(pos + chunk_lines, end)
            lines, delta = process(pos, stop)
            if len(lines) != stop - pos:
                raise RuntimeError(f"{len(lines)} output lines for input lines [{pos}, {stop})")
            out.write("".join(line + "\n" for line in lines).encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
            pos, chunks = stop, chunks + 1
            state.update(lines_done=pos - start, byte_offset=out.tell(), counts=merge_counts(state["counts"], delta, files["progress"]))
            write_json_atomic(files["progress"], {**state, "elapsed_s": state["elapsed_s"] + time.perf_counter() - t0})
            bar.update(len(lines))
    state.update(complete=True, elapsed_s=state["elapsed_s"] + time.perf_counter() - t0)
    stats = summarize(state["counts"], state)
    write_json_atomic(files["stats"], stats)
    write_json_atomic(files["progress"], state)
    logger.info("shard %d of %d complete: lines [%d, %d) -> %s", shard_id, num_shards, start, end, files["data"])
    return stats


def _shard_state(files: dict[str, str], i: int, num_shards: int, command: str, run_args: str = "...") -> dict:
    """Shard ``i``'s progress record, checked: present (else: run ``command run_args``), of this
    shard, complete, and its data file (``files["data"]``) of the recorded size."""
    if not os.path.exists(files["progress"]):
        raise FileNotFoundError(
            f"{files['progress']}: shard {i} of {num_shards} is missing (run {command} {run_args} --num-shards {num_shards} --shard-id {i})"
        )
    with open(files["progress"], encoding="utf-8") as f:
        st = json.load(f)
    if st.get("num_shards") != num_shards or st.get("shard_id") != i:
        raise ValueError(f"{files['progress']}: records shard {st.get('shard_id')} of {st.get('num_shards')}, expected {i} of {num_shards}")
    total = st["end_line"] - st["start_line"]
    if not st.get("complete"):
        raise ValueError(f"{files['progress']}: shard {i} of {num_shards} is incomplete ({st.get('lines_done')} of {total} lines); rerun {command} for it to resume")
    if st["lines_done"] != total:
        raise ValueError(f"{files['progress']}: marked complete but {st['lines_done']} lines done of {total}")
    size = os.path.getsize(files["data"]) if os.path.exists(files["data"]) else "missing"
    if size != st["byte_offset"]:
        raise CorpusError(files["data"], f"size {size} differs from the {st['byte_offset']} bytes recorded in {files['progress']}")
    return st


def complete_shards(
    num_shards: int,
    files_of: Callable[[int], dict[str, str]],
    same: Sequence[str],
    input_path: Optional[str] = None,
    command: Optional[str] = None,
    run_args: str = "...",
    origin: str = "input",
    made: str = "computed",
) -> tuple[list[dict], str]:
    """The progress records of shards ``0..num_shards-1`` (``files_of(i)``: their ``data`` and
    ``progress`` paths) checked as one set, and the input they were computed from.

    Each shard must be present, complete and of its recorded size (:func:`_shard_state`; the
    hint names ``command``, default the ``format`` recorded by shard 0), agree with shard 0 on
    the keys ``same`` and on the input's content, and start where the previous one ends; the
    shards must cover the whole input, and the input (``input_path``, default the recorded path)
    must exist and be the one recorded. Errors name the file; ``origin`` / ``made`` word them
    ("input" / "computed", or "source" / "mined")."""
    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    states: list[dict] = []
    for i in range(num_shards):
        files = files_of(i)
        name = command or (states[0]["format"].split("/")[0] if states else "the command")
        st = _shard_state(files, i, num_shards, name, run_args)
        if states:
            first = states[0]
            for key in same:
                if st[key] != first[key]:
                    raise ValueError(f"{files['progress']}: {key} differ from shard 0's (must be the same in all shards)")
            if st["source"]["sha256"] != first["source"]["sha256"]:
                raise ValueError(f"{files['progress']}: {made} from another {origin} than shard 0 ({st['source']['path']})")
            if st["start_line"] != states[-1]["end_line"]:
                raise ValueError(f"{files['progress']}: starts at line {st['start_line']} but shard {i - 1} ends at {states[-1]['end_line']}")
        elif st["start_line"] != 0:
            raise ValueError(f"{files['progress']}: shard 0 starts at line {st['start_line']}, expected 0")
        states.append(st)
    recorded = states[0]["source"]
    if states[-1]["end_line"] != recorded["lines"]:
        raise ValueError(f"shards cover {states[-1]['end_line']} lines but the {origin} {recorded['path']} has {recorded['lines']}")
    input_path = input_path or recorded["path"]
    if not os.path.exists(input_path):
        raise FileNotFoundError(f"{input_path}: {origin} file not found (pass --{origin})")
    if file_sha256(input_path) != recorded["sha256"]:
        raise ValueError(f"{input_path}: differs from the {origin} the shards were {made} from ({recorded['path']})")
    return states, input_path


def shard_command(output: str, num_shards: int) -> str:
    """The ``format`` (``"kid-retrieve/1"``, ...) recorded by shard 0 of ``output``."""
    files = shard_files(output, num_shards, 0)
    return _shard_state(files, 0, num_shards, "the command")["format"]


def merge_shards(
    output: str,
    num_shards: int,
    summarize: Summarize,
    line_key: str,
    stats_path: Optional[str] = None,
    input_path: Optional[str] = None,
    remove_shards: bool = False,
) -> dict:
    """Check the ``num_shards`` shards of ``output`` and join them into ``output`` and its stats
    (``stats_path``, default ``output + ".stats.json"``), both or neither.

    Errors (each naming the file): a shard missing or incomplete, shards of different
    commands, inputs or options, line ranges that are not contiguous or do not cover the
    input, a data file whose size or line count differs from its progress file, a line whose
    ``line_key`` field is not its line number in the input, an input (``input_path``, default
    the recorded one) that is not the one the shards were computed from.
    """
    paths = [shard_files(output, num_shards, i) for i in range(max(num_shards, 0))]
    states, input_path = complete_shards(num_shards, lambda i: paths[i], ("format", "options"), input_path)
    recorded = states[0]["source"]
    counts: dict = {}
    for st, files in zip(states, paths):
        count = 0
        for j, line in enumerate(iter_lines(files["data"])):
            n = st["start_line"] + j
            try:
                got = json.loads(line).get(line_key)
            except (json.JSONDecodeError, AttributeError) as exc:
                raise CorpusError(files["data"], f"not a JSON object ({exc})", j + 1) from exc
            if got != n:
                raise CorpusError(files["data"], f"{line_key!r} is {got!r}, expected {n} (its line in {recorded['path']})", j + 1)
            count += 1
        if count != st["end_line"] - st["start_line"]:
            raise CorpusError(files["data"], f"{count} lines but its progress file records {st['end_line'] - st['start_line']}")
        counts = merge_counts(counts, st["counts"], files["progress"])
    merged = {**states[0], "counts": counts, "elapsed_s": sum(st["elapsed_s"] for st in states)}
    stats = {**summarize(counts, merged), "num_shards": num_shards}
    stats_path = stats_path or f"{output}.stats.json"
    with OutputSet() as out:  # the output and its stats, both or neither
        with open(out.path(output), "wb") as dest:
            for files in paths:
                with open(files["data"], "rb") as f:
                    while block := f.read(1 << 22):
                        dest.write(block)
        with open(out.path(stats_path), "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2, sort_keys=True)
    if remove_shards:
        for files in paths:
            for path in (files["data"], files["stats"], files["progress"]):  # progress last: resume needs it
                if os.path.exists(path):
                    os.remove(path)
    logger.info("merged %d shard(s) -> %s (%d lines), stats %s", num_shards, output, recorded["lines"], stats_path)
    return stats
