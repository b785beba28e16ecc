"""Tasks registered with fairseq (@register_task)."""
from fairseq_plugins._imports import import_submodules

import_submodules(__name__, __file__)
