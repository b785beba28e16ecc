"""What ``--task knowledge_dialog`` does for the plugin's criteria, beyond fairseq's
``criterion(model, sample)``.

fairseq hands the update number to the task, not to the criterion:
``Trainer.train_step`` calls ``task.train_step(sample, model, criterion, optimizer,
update_num=trainer.get_num_updates(), ...)`` (after a resume ``get_num_updates()`` is the
checkpoint's count). ``knowledge_dialog``'s ``train_step`` and ``valid_step`` call
:func:`prepare_criterion`, which hands a criterion, through small optional methods,

- ``criterion.set_update_num(update_num)`` before every training forward (completed updates,
  0 during the first); validation keeps the last training update's number;
- ``criterion.check_dataset(split, dataset)`` once for every dataset the task has loaded, before
  the first step that follows the loading (start-up checks of a whole split, e.g. KI's
  knowledge ids against its knowledge table).

A criterion that needs the update number asks :func:`passes_update_num` at construction and
refuses other tasks (with them its step would silently stay 0).

The task also stores its dictionaries' symbols in every checkpoint it saves
(``task_state[DICTIONARY_STATE_KEY]``), so a checkpoint used as ND teacher carries its own
vocabulary (``teacher.py`` compares it with the student's).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

#: key of the dictionaries' symbols in a checkpoint's ``task_state``
DICTIONARY_STATE_KEY = "dictionary_symbols"
#: class attribute of tasks that call :func:`prepare_criterion` from train_step / valid_step
PASSES_UPDATE_NUM = "passes_update_num_to_criterion"


def passes_update_num(task: Any) -> bool:
    """Whether ``task`` hands criteria the update number (``knowledge_dialog`` does)."""
    return bool(getattr(task, PASSES_UPDATE_NUM, False))


def dictionary_state(task: Any) -> Dict[str, List[str]]:
    """``{"source": symbols, "target": symbols}`` of a task's dictionaries."""
    out = {}
    for side, dictionary in (("source", task.source_dictionary), ("target", task.target_dictionary)):
        if dictionary is not None:
            out[side] = list(dictionary.symbols)
    return out


def prepare_criterion(criterion: Any, datasets: Dict[str, Any], checked: Dict[str, Any],
                      update_num: Optional[int] = None) -> None:
    """Hand ``criterion`` the datasets it has not seen (``checked``: split -> the dataset object
    last handed over, updated here; a split reloaded as a new object is handed over again) and,
    in training, the update number."""
    check = getattr(criterion, "check_dataset", None)
    if check is not None:
        for split, dataset in list(datasets.items()):
            if checked.get(split) is not dataset:
                check(split, dataset)
                checked[split] = dataset
    set_update_num = getattr(criterion, "set_update_num", None)
    if update_num is not None and set_update_num is not None:
        set_update_num(update_num)
