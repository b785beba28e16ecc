"""The knowledge-infused-decoding offline pipeline: document collections -> retrieval ->
triples -> per-example knowledge tries."""
