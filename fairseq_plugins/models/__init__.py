"""Model architectures registered with fairseq (only where a method needs a hook)."""
from fairseq_plugins._imports import import_submodules

import_submodules(__name__, __file__)
