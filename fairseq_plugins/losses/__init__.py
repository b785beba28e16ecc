"""Pure loss functions (no fairseq registration): the registered criteria in
``fairseq_plugins.criterions`` are thin wrappers around these."""
