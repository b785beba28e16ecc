"""The fairseq-free core: what the three methods are (torch and numpy only; no module here
imports fairseq at module level).

- ``ki/``: knowledge internalization: the contrastive loss (Eq. 2-4) and the token-knowledge
  alignment formats (text and binary).
- ``nd/``: negative distillation: the soft unlikelihood, MRSE and Eq. 13 losses, and the
  unlikelihood baselines.
- ``kid/``: knowledge-infused decoding: knowledge tries and their files, the entity memory,
  token mapping, the policy update, the options, and the Hugging Face processor.

The fairseq adapter (``fairseq_plugins``) and the offline pipelines (``data_prep``) import from
here; nothing here imports them.
"""
