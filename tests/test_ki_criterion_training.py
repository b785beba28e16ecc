"""Criterion ``knowledge_internalization`` with fairseq's LSTM encoder (right-padded states) and
with fairseq's Trainer: two updates -> checkpoint (heads in the criterion state, not the model)
-> plain loading and generation without the knowledge table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils, tasks

from fairseq_plugins.models.encoder_capture import encoder_states
from tests import nd_helpers as H
from tests.test_ki_criterion import ITEMS, LSTM_ARCH, criterion, make_batch, make_setup, model_of


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    return make_setup(tmp_path_factory.mktemp("ki_training"))


# --- LSTM ------------------------------------------------------------------------------------------------------
def test_lstm_encoder(setup) -> None:
    _, data, _, _, _ = setup
    cfg = H.make_cfg(data, arch=LSTM_ARCH)
    task = tasks.setup_task(cfg.task)
    model = model_of(task, cfg)
    crit = criterion(setup, ki_encoder_dim=16)  # 2 x hidden 8
    sample = make_batch(task, ITEMS)  # left-padded, which LSTMEncoder re-pads to the right
    torch.manual_seed(6)
    loss, _, log = crit(model, sample)
    assert torch.isfinite(loss) and log["ki_tokens"] == 9 and float(log["ki_loss"]) > 0
    loss.backward()
    assert model.encoder.lstm.weight_ih_l0.grad.abs().sum() > 0
    # reference: encode each sentence alone (no padding at all), pair states with labels in order
    src = sample["net_input"]["src_tokens"]
    states, labels = [], []
    with torch.no_grad():
        for b in range(src.size(0)):
            toks = src[b][src[b].ne(1)][None]
            out = model.encoder(toks, src_lengths=torch.tensor([toks.size(1)]))
            s, _ = encoder_states(out)
            states.append(s[0])
            labels.append(sample["knowledge"][b][src[b].ne(1)])
        lens = torch.tensor([len(x) for x in labels])
        padded = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
        pvalid = torch.arange(padded.size(1))[None] < lens[:, None]
        plabels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True)
        torch.manual_seed(6)
        expected = crit.ki_loss(padded, pvalid, plabels, pvalid)[0]
    assert float(log["ki_loss"]) == pytest.approx(expected.item(), rel=1e-5)


# --- end to end: fairseq's Trainer, checkpoint, plain loading ---------------------------------------------
def test_trainer_updates_checkpoint_and_plain_loading(setup, tmp_path: Path) -> None:
    from fairseq.trainer import Trainer

    _, data, table, _, _ = setup
    save_dir = tmp_path / "ckpt"
    cfg = H.make_cfg(data, ["--criterion", "knowledge_internalization", "--ki-knowledge-table", str(table),
                            "--ki-encoder-dim", "16", "--ki-projection-dim", "8", "--save-dir", str(save_dir),
                            "--max-update", "2"])
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    crit = task.build_criterion(cfg.criterion)
    f1_before = crit.f1.weight.detach().clone()
    trainer = Trainer(cfg, task, model, crit)
    sample = make_batch(task, ITEMS)
    for _ in range(2):
        log = trainer.train_step([sample])
        assert log is not None and np.isfinite(log["loss"])
    assert trainer.get_num_updates() == 2
    assert not torch.equal(crit.f1.weight.detach(), f1_before)  # the heads are optimised
    path = save_dir / "checkpoint_last.pt"
    save_dir.mkdir()
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does first
    trainer.save_checkpoint(str(path), {"train_iterator": {"epoch": 1}, "previous_epoch_iterator": None})
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert set(state["criterion"]) == {"f1.weight", "f1.bias", "f2.weight", "f2.bias"}
    assert torch.equal(state["criterion"]["f1.weight"], crit.f1.weight.detach())
    assert not any(k.startswith(("f1.", "f2.", "knowledge")) for k in state["model"])
    assert set(state["model"]) == set(model.state_dict())  # exactly the plain architecture
    # plain loading, no KI options, the table file gone
    table.rename(table.with_suffix(".away"))
    try:
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    finally:
        table.with_suffix(".away").rename(table)
    loaded = models[0].eval()
    with torch.no_grad():
        out = loaded(**sample["net_input"])[0]
    assert torch.isfinite(out).all()
    gen = _task.build_generator(models, _cfg.generation)
    hyps = _task.inference_step(gen, models, sample)
    assert len(hyps) == len(ITEMS)
