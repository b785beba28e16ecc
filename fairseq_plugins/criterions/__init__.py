"""Training criteria registered with fairseq (each module registers one with @register_criterion)."""
from fairseq_plugins._imports import import_submodules

import_submodules(__name__, __file__)
