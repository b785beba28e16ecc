"""``dialog-metrics``: score one system's responses and report JSON + a markdown table row.

A fairseq-generate output must hold every example of the test set: missing ids (a cut or
partial output) or ids without a reference are an error (exit status 2) unless
``--allow-partial``; the JSON report (``n_examples``, ``n_expected``, ``n_missing``, ``n_extra``)
and the markdown row (column ``N``) say how many examples were scored. ROUGE-L uses rouge-score's
own tokenizer unless ``--rouge-tokenizer whitespace``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from . import entities, registry, report, safe
from .evaluate import EvalInputs, evaluate
from .ngrams import token_counts
from .ppl import ppl_from_log
from .overlap import ROUGE_TOKENIZERS
from .readers import InputError, align_by_ids, check_ids, check_same_count, drop_tokens, read_gen_out, read_text_lines
from .text import TOKENIZERS, tokenize_all, wordpiece_detok
from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.text_io import write_text_atomic

logger = logging.getLogger("dialogue_metrics")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dialog-metrics``."""
    p = argparse.ArgumentParser(
        prog="dialog-metrics",
        description=__doc__,
        epilog="Metric keys: " + ", ".join(m.key for m in registry.METRICS)
        + "; groups: " + ", ".join(registry.GROUPS),
    )
    add = p.add_argument
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gen-out", metavar="FILE",
                     help="fairseq-generate output (D-/H-, T- lines)")
    src.add_argument("--hyp", metavar="FILE", help="hypotheses, one per line (may be empty)")
    add("--ref", metavar="FILE",
        help="references, one per line (needed with --hyp; with --gen-out it replaces the T- "
        "lines, picked by example id)")
    add("--knowledge", metavar="FILE", help="grounding knowledge, one line per example (kF1)")
    add("--knowledge-drop-token", metavar="TOKEN", action="append", default=[],
        help="a token removed from the knowledge lines before scoring, e.g. the sentence "
        "separator __knowledge__ of prepare-wow / prepare-cmu-dog; repeatable")
    add("--train-tgt", metavar="FILE", help="training responses, one per line (LF)")
    add("--train-src", metavar="FILE",
        help="training sources (LF with --lf-counts-from src+tgt)")
    add("--lf-counts-from", choices=("tgt", "src+tgt"), default="tgt",
        help="training side(s) the LF token frequencies come from (default tgt)")
    add("--lf-threshold", type=int, default=100,
        help="tokens seen fewer times than this in training are low-frequency (default 100)")
    ppl = p.add_mutually_exclusive_group()
    ppl.add_argument("--ppl-log", metavar="FILE",
                     help="fairseq-train/-validate log: report its last validation ppl")
    ppl.add_argument("--ppl", type=float, metavar="X", help="perplexity value to report")
    add("--entities", action="store_true", help="compute the entity score with spaCy NER")
    add("--entity-vocab", metavar="FILE",
        help="entity words, one per line: the entity score counts response tokens in it "
        "instead of spaCy entities")
    add("--entity-labels", metavar="L1,L2", help="spaCy entity labels to count (default all)")
    add("--spacy-model", default=entities.DEFAULT_SPACY_MODEL, help="spaCy model (--entities)")
    add("--safe-phrases-file", metavar="FILE",
        help="safe phrases, one per line (replaces the default \"i'm not sure\", "
        "\"i don't know\")")
    add("--tokenize", choices=TOKENIZERS, default="space",
        help="tokenisation after lower-casing (default space: split on whitespace)")
    add("--wordpiece-detok", action="store_true",
        help="join '##' WordPiece continuations in all text inputs first")
    add("--rouge-tokenizer", choices=ROUGE_TOKENIZERS, default="rouge_score",
        help="ROUGE-L tokenisation: rouge_score (default: the rouge-score package's own tokenizer, "
        "punctuation dropped) or whitespace (the tokens of the other metrics, punctuation kept; "
        "this project's ROUGE-L before the default changed)")
    add("--allow-partial", action="store_true",
        help="score a fairseq-generate output that lacks some examples of the test set (or holds ids "
        "without a reference): only the examples with a reference are scored, and N says how many "
        "(default: such an output is an error)")
    add("--metrics", metavar="M1,M2",
        help="metric keys/groups to compute (default: all that the inputs allow)")
    add("--name", help="system name for the table row (default: input file name)")
    add("--json-out", metavar="FILE", help="write the JSON report here")
    add("--md-out", metavar="FILE", help="write a one-row markdown table here")
    add("--append-md", metavar="FILE",
        help="append a row to the markdown table in FILE (created if missing)")
    add("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _read_knowledge(args: argparse.Namespace) -> list[str]:
    """The --knowledge lines, detokenised as the other inputs, without --knowledge-drop-token."""
    return drop_tokens(read_text_lines(args.knowledge, args.wordpiece_detok), args.knowledge_drop_token)


def _load_inputs(args: argparse.Namespace) -> tuple[EvalInputs, dict[str, str], dict[str, int]]:
    """Read every input file named on the command line; checks counts, names files in errors.

    Returns the inputs, the files read (``_name``: the system's file) and the example coverage
    (``n_expected``, ``n_missing``, ``n_extra``)."""
    detok = args.wordpiece_detok
    files: dict[str, str] = {}
    coverage: dict[str, int] = {}
    if args.gen_out:
        gen = read_gen_out(args.gen_out)
        files["gen_out"] = args.gen_out
        ref_lines = read_text_lines(args.ref, detok) if args.ref else None
        knowledge_lines = _read_knowledge(args) if args.knowledge else None
        if ref_lines is not None and knowledge_lines is not None:
            check_same_count(ref_lines, f"references file {args.ref}", knowledge_lines,
                             f"knowledge file {args.knowledge}")
        # the examples expected: one per line of --ref (or --knowledge); else the T- lines' own ids
        expected_name, expected_lines = (
            (args.ref, ref_lines) if ref_lines is not None
            else (args.knowledge, knowledge_lines) if knowledge_lines is not None else (None, None)
        )
        check = check_ids(gen.ids, args.gen_out, None if expected_lines is None else len(expected_lines),
                          expected_name, gen.translated, args.allow_partial)
        keep = [k for k, i in enumerate(gen.ids) if i < check.expected]
        hyps = [gen.hypotheses[k] for k in keep]
        hyps = [wordpiece_detok(h) for h in hyps] if detok else hyps
        refs = None if gen.references is None else [gen.references[k] for k in keep]
        if refs is not None and detok:
            refs = [wordpiece_detok(r) for r in refs]
        if ref_lines is not None:
            refs = align_by_ids(ref_lines, check.kept, args.ref, args.gen_out)
        knowledge = None
        if knowledge_lines is not None:
            knowledge = align_by_ids(knowledge_lines, check.kept, args.knowledge, args.gen_out)
        coverage = {"n_expected": check.expected, "n_missing": len(check.missing), "n_extra": len(check.extra)}
        hyp_name = args.gen_out
    else:
        if not args.ref:
            raise InputError("--hyp needs --ref")
        hyps = read_text_lines(args.hyp, detok)
        refs = read_text_lines(args.ref, detok)
        files["hyp"] = args.hyp
        check_same_count(hyps, f"hypotheses file {args.hyp}", refs, f"references file {args.ref}")
        knowledge = None
        if args.knowledge:
            knowledge = _read_knowledge(args)
            check_same_count(hyps, f"hypotheses file {args.hyp}", knowledge,
                             f"knowledge file {args.knowledge}")
        coverage = {"n_expected": len(refs), "n_missing": 0, "n_extra": 0}
        hyp_name = args.hyp
    if args.ref:
        files["ref"] = args.ref
    if args.knowledge:
        files["knowledge"] = args.knowledge

    train_counts = None
    if args.lf_counts_from == "src+tgt" and not (args.train_src and args.train_tgt):
        raise InputError("--lf-counts-from src+tgt needs --train-src and --train-tgt")
    if args.train_tgt:
        files["train_tgt"] = args.train_tgt
        train_lines = read_text_lines(args.train_tgt, detok)
        if args.lf_counts_from == "src+tgt":
            files["train_src"] = args.train_src
            train_lines += read_text_lines(args.train_src, detok)
        train_counts = token_counts(tokenize_all(train_lines, args.tokenize))

    ppl = args.ppl
    if args.ppl_log:
        ppl = ppl_from_log(args.ppl_log)
        files["ppl_log"] = args.ppl_log
        logger.info("%s: last validation ppl %.4f", args.ppl_log, ppl)

    if args.entities and args.entity_vocab:
        raise InputError("give either --entities (spaCy NER) or --entity-vocab, not both")
    entity_mode = "vocab" if args.entity_vocab else "spacy" if args.entities else None
    asked = {m.strip() for m in (args.metrics or "").split(",")}
    if entity_mode is None and "entity" in asked:
        entity_mode = "spacy"
    entity_vocab = None
    if args.entity_vocab:
        entity_vocab = entities.load_entity_vocab(args.entity_vocab)
        files["entity_vocab"] = args.entity_vocab
    phrases = list(safe.DEFAULT_SAFE_PHRASES)
    if args.safe_phrases_file:
        phrases = safe.load_phrases(args.safe_phrases_file)
        files["safe_phrases"] = args.safe_phrases_file

    inputs = EvalInputs(
        hypotheses=hyps,
        references=refs,
        knowledge=knowledge,
        train_counts=train_counts,
        ppl=ppl,
        entity_mode=entity_mode,
        entity_vocab=entity_vocab,
        entity_labels=args.entity_labels.split(",") if args.entity_labels else None,
        spacy_model=args.spacy_model,
        lf_threshold=args.lf_threshold,
        safe_phrases=phrases,
        tokenize=args.tokenize,
        rouge_tokenizer=args.rouge_tokenizer,
    )
    files["_name"] = hyp_name
    return inputs, files, coverage


def run(args: argparse.Namespace) -> dict:
    """Compute and write everything for parsed ``args``; returns the JSON report."""
    try:
        requested = registry.resolve(args.metrics)
    except ValueError as e:
        raise InputError(str(e)) from e
    try:
        inputs, files, coverage = _load_inputs(args)
    except InputError:
        raise
    except (OSError, ValueError) as e:  # unreadable or empty phrase/entity-vocabulary file
        raise InputError(str(e)) from e
    name = args.name or os.path.basename(files.pop("_name"))
    try:
        results = evaluate(inputs, requested)
    except (ValueError, RuntimeError) as e:  # RuntimeError: spaCy model unavailable
        raise InputError(str(e)) from e
    counts = {
        "n_examples": len(inputs.hypotheses),  # N: the examples scored
        "n_empty_hypotheses": sum(1 for h in inputs.hypotheses if not h.split()),
        **coverage,
    }
    settings = {
        "files": files,
        "tokenize": args.tokenize,
        "wordpiece_detok": args.wordpiece_detok,
        "lowercase": True,
        "allow_partial": args.allow_partial,
    }
    if "rougeL" in results:
        settings["rouge_tokenizer"] = args.rouge_tokenizer
    if args.knowledge_drop_token:
        settings["knowledge_drop_tokens"] = list(args.knowledge_drop_token)
    if "lf" in results:
        settings.update(lf_threshold=args.lf_threshold, lf_counts_from=args.lf_counts_from)
    if "safe" in results:
        settings["safe_phrases"] = list(inputs.safe_phrases)
    if "entity" in results:
        settings["entity_mode"] = inputs.entity_mode
        if inputs.entity_mode == "spacy":
            settings.update(spacy_model=args.spacy_model, entity_labels=inputs.entity_labels)
    out = report.json_report(name, results, counts, settings)
    if args.json_out:
        report.write_json(args.json_out, out)
        logger.info("wrote %s", args.json_out)
    n = counts["n_examples"]
    table = report.markdown_table(name, results, n)
    if args.md_out:
        write_text_atomic(args.md_out, table.split("\n")[:-1])
        logger.info("wrote %s", args.md_out)
    if args.append_md:
        report.append_markdown(args.append_md, name, results, n)
        logger.info("appended a row to %s", args.append_md)
    sys.stdout.write(table)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns 0 on success, 2 on unusable input (the message is logged,
    on the command line as the one line ``dialog-metrics: message``)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, prog="dialog-metrics")
    try:
        run(args)
    except InputError as e:
        logger.error("%s", e)
        return 2
    return 0


cli = console_script(main)  # the console script: exits with main's status

if __name__ == "__main__":
    sys.exit(main())
