"""Knowledge-infused decoding core: ``trie`` and ``trie_files`` (the knowledge tries),
``memory`` (the entity memory and ``KIDCore``), ``token_mapping``, ``policy_update``,
``options`` and ``hf_processor`` (the Hugging Face processor)."""
