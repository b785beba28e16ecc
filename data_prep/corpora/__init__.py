"""Corpus readers: each ``prepare-*`` command writes aligned ``{split}.src/.tgt`` (and
``.knowledge``) text; ``tokenize``/``detokenize`` map text to and from subword tokens."""
