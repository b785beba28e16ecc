"""Deterministic data preparation that does not import fairseq.

Every ``prepare-*`` command writes one directory per corpus with ``{split}.src`` /
``{split}.tgt`` (one example per line, aligned) and, for knowledge-grounded corpora,
``{split}.knowledge`` (the example's grounding knowledge text on the same line), plus
``stats.json`` with the counts it kept and skipped.
"""
