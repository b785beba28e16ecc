"""The knowledge-internalization pipeline: knowledge base -> token-level retriever ->
knowledge index -> mining -> merged and binarised alignments (and their ablations)."""
