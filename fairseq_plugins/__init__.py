"""fairseq plugin: knowledge internalization, negative distillation, knowledge-infused decoding.

Load with ``--user-dir fairseq_plugins`` (fairseq-train, fairseq-generate, fairseq-interactive).
fairseq imports only this ``__init__`` (plus ``tasks/`` and ``models/``), so everything that
registers itself is imported from here.
"""
import os

# torch >= 2.6 loads checkpoints with weights_only=True, but fairseq checkpoints hold
# argparse.Namespace and numpy objects, so every resume/generate would fail with
# "Weights only load failed". fairseq's own checkpoints are trusted input here.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from . import criterions, generation, models, tasks  # noqa: E402,F401  (registration side effects)
