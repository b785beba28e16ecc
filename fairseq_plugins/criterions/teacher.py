"""The negative teacher of ``negative_distillation``: loading and every check, in one place.

:func:`load_teacher` reads a fairseq checkpoint and refuses it, naming the files, when

- the path is empty or no file (``ValueError`` / ``FileNotFoundError``);
- its embedding tables do not have the sizes of the student task's dictionaries;
- its dictionaries hold other symbols, or the same ones in another order, than the student's.
  The teacher's symbols come, first found first, from

  1. the checkpoint itself: ``task_state["dictionary_symbols"]``, which ``--task
     knowledge_dialog`` writes into every checkpoint it saves (``_task_contract.py``);
  2. ``dict.{lang}.txt`` next to the checkpoint;
  3. ``dict.{lang}.txt`` in the teacher's data folder (``cfg.task.data`` of the checkpoint).

  Where none is there (a checkpoint of another task whose data folder is gone) only the sizes
  can be compared, and a warning says so.

:func:`check_architecture` compares student and teacher decoders (the ND terms pair them layer
by layer, element by element); the criterion calls it on its first forward pass, when it first
sees the student.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary

from fairseq_plugins.criterions._task_contract import DICTIONARY_STATE_KEY

logger = logging.getLogger(__name__)

SIDES = ("source", "target")


def _languages(cfg: Any) -> Tuple[Optional[str], Optional[str]]:
    task_cfg = cfg.task if cfg is not None and "task" in cfg else None
    if task_cfg is None:
        return None, None
    return getattr(task_cfg, "source_lang", None), getattr(task_cfg, "target_lang", None)


def teacher_symbols(state: dict, path: str) -> Tuple[Optional[Dict[str, List[str]]], str]:
    """The teacher's dictionary symbols per side and where they were read (see the module
    docstring), or ``(None, why not)``."""
    stored = (state.get("task_state") or {}).get(DICTIONARY_STATE_KEY)
    if stored:
        return {side: list(symbols) for side, symbols in stored.items()}, f"the checkpoint {path}"
    cfg = state.get("cfg")
    langs = _languages(cfg)
    folders = [os.path.dirname(os.path.abspath(path))]
    data = getattr(cfg.task, "data", None) if cfg is not None and "task" in cfg else None
    if data:
        folders.append(str(data).split(os.pathsep)[0])
    if not all(langs):
        return None, f"{path} names no source/target language"
    for folder in folders:
        files = [os.path.join(folder, f"dict.{lang}.txt") for lang in langs]
        if all(os.path.isfile(f) for f in files):
            return ({side: list(Dictionary.load(f).symbols) for side, f in zip(SIDES, files)},
                    " and ".join(files))
    return None, (f"no dictionary symbols in {path} (it was not saved by --task knowledge_dialog) and no "
                  f"dict.{langs[0]}.txt / dict.{langs[1]}.txt in {' or '.join(folders)}")


def student_dictionary_file(task: Any, side: str) -> str:
    """The file the student task read its ``side`` dictionary from (for error messages)."""
    cfg = getattr(task, "cfg", None)
    lang = getattr(cfg, "source_lang" if side == "source" else "target_lang", None)
    data = getattr(cfg, "data", None)
    if not (lang and data):
        return f"the student's {side} dictionary"
    return os.path.join(str(data).split(os.pathsep)[0], f"dict.{lang}.txt")


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"entry {i}: teacher {x!r}, student {y!r}"
    return f"teacher {len(a)} entries, student {len(b)}"


def dictionary_problems(state: dict, path: str, task: Any) -> List[str]:
    """What keeps the teacher checkpoint ``state`` (read from ``path``) from the student task's
    dictionaries: embedding sizes, then symbols (a warning where the symbols cannot be found)."""
    weights = state["model"]
    dictionaries = dict(zip(SIDES, (task.source_dictionary, task.target_dictionary)))
    problems = []
    for side, key in (("source", "encoder.embed_tokens.weight"), ("target", "decoder.embed_tokens.weight")):
        d = dictionaries[side]
        if d is not None and key in weights and weights[key].size(0) != len(d):
            problems.append(f"{side} vocabulary: teacher {weights[key].size(0)} entries, student task {len(d)} "
                            f"({student_dictionary_file(task, side)})")
    if problems:
        return problems
    symbols, where = teacher_symbols(state, path)
    if symbols is None:
        logger.warning("teacher %s: cannot check that its dictionaries hold the student's symbols in the same "
                       "order (%s); only the vocabulary sizes were compared", path, where)
        return problems
    for side, d in dictionaries.items():
        if d is not None and side in symbols and list(symbols[side]) != list(d.symbols):
            problems.append(
                f"the {side} dictionary of teacher {path} (symbols from {where}) differs from the student's "
                f"{student_dictionary_file(task, side)}: {_first_difference(symbols[side], d.symbols)}")
    return problems


def load_teacher(path: str, task: Any) -> torch.nn.Module:
    """The frozen teacher model (eval mode, no gradient) of checkpoint ``path``, built with the
    student task; raises unless its dictionaries are the student's (see the module docstring)."""
    if not path:
        raise ValueError("negative_distillation needs --teacher-path (a checkpoint of the negative teacher)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--teacher-path {path}: no such file")
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    problems = dictionary_problems(state, path, task)
    if problems:
        raise ValueError(
            f"teacher {path} is incompatible with the student's dictionaries: " + "; ".join(problems)
            + ". Binarise the negative set with the student's dictionaries "
            "(fairseq-preprocess --srcdict/--tgtdict) and retrain the teacher."
        )
    cfg = state["cfg"]
    model = task.build_model(cfg.model)
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    model.requires_grad_(False)
    model.eval()
    return model


def check_architecture(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """The ND terms pair the decoders layer by layer and element by element: raise ValueError
    unless both have the same number of decoder layers, model dimension, heads and vocabulary."""

    def shape(model):
        dec = model.decoder
        layer = dec.layers[0] if len(dec.layers) else None
        return {
            "decoder layers": len(dec.layers),
            "decoder embed dim": dec.embed_dim if hasattr(dec, "embed_dim") else None,
            "decoder attention heads": layer.self_attn.num_heads if layer is not None else None,
            "encoder-decoder attention heads": (
                layer.encoder_attn.num_heads if layer is not None and layer.encoder_attn is not None else None),
            "output vocabulary": dec.output_projection.out_features if hasattr(dec, "output_projection") else None,
        }

    s, t = shape(student), shape(teacher)
    diff = [f"{k}: student {s[k]}, teacher {t[k]}" for k in s if s[k] != t[k]]
    if diff:
        raise ValueError("negative teacher and student architectures differ (" + "; ".join(diff)
                         + "); train the teacher with the student's architecture flags")
