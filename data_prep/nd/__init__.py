"""The negative-distillation pipeline: source entropy and the entropy halves (Eq. 4)."""
