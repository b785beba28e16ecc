"""The training step s of negative distillation's progressive alpha: handed over by
``knowledge_dialog``'s train_step (fairseq's update number), kept for validation, and after a
resume from a checkpoint the checkpoint's count."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fairseq import tasks

from fairseq_plugins.criterions.negative_distillation import NegativeDistillationCriterion
from informative_dialogue.nd import losses as nd
from tests import nd_helpers as H


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("nd_step")
    teacher = H.make_teacher(tmp)
    data = H.make_data_dir(tmp / "student")
    return tmp, teacher, data


class _Backward:
    """The one optimizer method task.train_step uses."""

    def backward(self, loss):
        loss.backward()


def test_update_number_comes_from_train_step_and_validation_keeps_it(setup) -> None:
    _, teacher, data = setup
    cfg = H.make_cfg(data, ["--criterion", "negative_distillation", "--teacher-path", str(teacher),
                            "--nd-gamma", "100"])
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    crit = task.build_criterion(cfg.criterion)
    sample = H.make_sample(task, H.PAIRS)
    _, _, log = task.train_step(sample, model, crit, _Backward(), update_num=0)
    assert log["nd_step"] == 0 and log["nd_alpha"] == pytest.approx(nd.progressive_alpha(0, 4.0, 100.0))
    _, _, log = task.train_step(sample, model, crit, _Backward(), update_num=100)
    assert log["nd_step"] == 100 and log["nd_alpha"] == pytest.approx(1.0)
    model.set_num_updates(7)  # the model's count is not what the criterion reads
    _, _, log = task.valid_step(sample, model, crit)
    assert log["nd_step"] == 100 and log["nd_alpha"] == pytest.approx(1.0)


def test_other_tasks_are_refused(setup) -> None:
    _, teacher, data = setup
    cfg = H.make_cfg(data, task="translation")
    with pytest.raises(ValueError, match="needs --task knowledge_dialog"):
        NegativeDistillationCriterion(tasks.setup_task(cfg.task), teacher_path=str(teacher))


def test_resume_continues_at_the_checkpoints_update_count(setup, tmp_path: Path) -> None:
    """fairseq's Trainer: after load_checkpoint, train_step passes the checkpoint's count as
    update_num, so the first forward after a resume has s = that count (as fairseq-train)."""
    from fairseq.logging import metrics
    from fairseq.trainer import Trainer

    _, teacher, data = setup
    cfg = H.make_cfg(data, ["--criterion", "negative_distillation", "--teacher-path", str(teacher),
                            "--nd-gamma", "100", "--save-dir", str(tmp_path), "--max-update", "1000"])

    def trainer():
        task = tasks.setup_task(cfg.task)
        torch.manual_seed(0)
        logs = []
        step = task.train_step

        def recorded(*args, **kwargs):
            out = step(*args, **kwargs)
            logs.append(out[2])
            return out

        task.train_step = recorded
        return task, Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)), logs

    task, first, logs = trainer()
    sample = H.make_sample(task, H.PAIRS)
    first.train_step([sample])
    assert logs[-1]["nd_step"] == 0
    first.set_num_updates(100)  # as if 100 updates had run
    path = tmp_path / "checkpoint_last.pt"
    first.consolidate_optimizer()
    first.save_checkpoint(str(path), {"train_iterator": {"epoch": 1}, "previous_epoch_iterator": None})
    metrics.reset()  # a new process
    _, resumed, logs = trainer()
    resumed.load_checkpoint(str(path))
    resumed.train_step([sample])
    assert logs[-1]["nd_step"] == 100 and logs[-1]["nd_alpha"] == pytest.approx(1.0)
    resumed.train_step([sample])
    assert logs[-1]["nd_step"] == 101
