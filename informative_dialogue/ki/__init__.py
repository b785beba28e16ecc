"""Knowledge internalization core: the loss (``loss``) and the alignment formats
(``alignment_text``: one knowledge id per source token per line; ``alignments``: the binarised
ids/offsets arrays)."""
