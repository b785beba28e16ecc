"""The negative teacher's checks (fairseq_plugins/criterions/teacher.py): missing checkpoint,
vocabulary size, dictionary symbols (from the checkpoint itself, so that deleting the teacher's
data folder does not switch the check off), architecture."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from fairseq import tasks

from fairseq_plugins.criterions._task_contract import DICTIONARY_STATE_KEY
from fairseq_plugins.criterions.negative_distillation import NegativeDistillationCriterion
from tests import nd_helpers as H


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("nd_teacher")
    data = H.make_data_dir(tmp / "student")
    cfg = H.make_cfg(data)
    return tmp, data, tasks.setup_task(cfg.task), cfg


def build(setup, teacher_path):
    _, _, task, _ = setup
    return NegativeDistillationCriterion(task, teacher_path=str(teacher_path))


def test_missing_and_empty_teacher_path(setup) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pt: no such file"):
        build(setup, setup[0] / "missing.pt")
    with pytest.raises(ValueError, match="needs --teacher-path"):
        NegativeDistillationCriterion(setup[2], teacher_path="")


def test_vocabulary_size_mismatch_names_the_students_dictionary(setup) -> None:
    tmp, data, _, _ = setup
    other = H.make_teacher(tmp, seed=3, words=H.WORDS[:-2])  # 2 words fewer
    with pytest.raises(ValueError, match=r"source vocabulary: teacher 22 entries, student task 24 \(.*dict.src.txt\)"):
        build(setup, other)


def test_permuted_dictionary_is_refused_with_its_data_folder_gone(setup) -> None:
    """Same size, other order: refused from the symbols stored in the checkpoint, also after
    the teacher's data folder (and so its dict.*.txt files) is deleted."""
    tmp, data, _, _ = setup
    shuffled = H.make_teacher(tmp, seed=4, words=list(reversed(H.WORDS)))
    state = torch.load(shuffled, weights_only=False)
    assert state["task_state"][DICTIONARY_STATE_KEY]["source"][4:6] == ["t", "s"]
    shutil.rmtree(Path(state["cfg"].task.data))
    with pytest.raises(ValueError) as err:
        build(setup, shuffled)
    message = str(err.value)
    assert str(shuffled) in message and str(data / "dict.src.txt") in message
    assert "entry 4: teacher 't', student 'a'" in message


def test_symbols_from_dictionary_files_when_the_checkpoint_has_none(setup, caplog) -> None:
    """A checkpoint without stored symbols (e.g. trained with --task translation): its data
    folder's, else dictionary files next to it, are compared; with neither, a warning says that
    only the sizes were checked."""
    tmp, data, task, cfg = setup
    teacher_data = H.make_data_dir(tmp / "plain_teacher_data", list(reversed(H.WORDS)))
    torch.manual_seed(5)
    plain_cfg = H.make_cfg(teacher_data, task="translation")
    _, model = H.build(plain_cfg)
    path = H.save_checkpoint(model, plain_cfg, tmp / "plain_teacher" / "checkpoint.pt")
    with pytest.raises(ValueError, match="plain_teacher_data/dict.src.txt and .*: entry 4"):
        build(setup, path)
    shutil.move(str(teacher_data), str(tmp / "moved"))
    for name in ("dict.src.txt", "dict.tgt.txt"):
        shutil.copy(tmp / "moved" / name, path.parent / name)
    with pytest.raises(ValueError, match="plain_teacher/dict.src.txt and .*: entry 4"):
        build(setup, path)
    for name in ("dict.src.txt", "dict.tgt.txt"):
        (path.parent / name).unlink()
    with caplog.at_level(logging.WARNING, logger="fairseq_plugins.criterions.teacher"):
        build(setup, path)  # nothing to compare the symbols with: accepted, with a warning
    assert "cannot check that its dictionaries hold the student's symbols" in caplog.text


def test_same_dictionary_is_accepted_from_the_stored_symbols(setup) -> None:
    tmp, data, _, _ = setup
    same = H.make_teacher(tmp, seed=6)
    shutil.rmtree(Path(torch.load(same, weights_only=False)["cfg"].task.data))
    crit = build(setup, same)
    assert all(not p.requires_grad for p in crit.teacher.parameters()) and not crit.teacher.training


def test_architecture_mismatch_is_a_clear_error(setup) -> None:
    tmp, _, task, cfg = setup
    arch = list(H.TINY_ARCH)
    arch[arch.index("--decoder-layers") + 1] = "1"
    other = H.make_teacher(tmp, seed=5, arch=arch)
    crit = build(setup, other)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    with pytest.raises(ValueError, match="decoder layers: student 2, teacher 1"):
        crit(model, H.make_sample(task, H.PAIRS))
