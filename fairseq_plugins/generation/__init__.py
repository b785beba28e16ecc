"""Decoding: sequence generators and their pure helpers."""
from fairseq_plugins._imports import import_submodules

import_submodules(__name__, __file__)
