"""analysis/training_curve.py: the validation curve, best epoch, early stop and wall times of a
fairseq training log (simple format), with hand-made logs in fairseq's own line format."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.training_curve import NoValidationError, main, markdown_table, read_training_log, stopping_point

T = "2026-12-07 15:12:40 | INFO | "


def valid(epoch: int, loss: float, nll: float, updates: int) -> str:
    return (f"{T}valid | epoch {epoch:03d} | valid on 'valid' subset | loss {loss} | nll_loss {nll} | "
            f"ppl {2 ** nll:.2f} | wps 1083.3 | wpb 1564.1 | bsz 98.5 | num_updates {updates} | best_loss {loss}\n")


def train(epoch: int, train_wall: int, wall: int) -> str:
    return (f"{T}train | epoch {epoch:03d} | loss 9.965 | nll_loss 9.368 | ppl 660.91 | wps 386.6 | ups 0.2 | "
            f"num_updates 153 | lr 0.000765062 | gnorm 1.691 | clip 100 | train_wall {train_wall} | wall {wall}\n")


def write_log(tmp_path: Path) -> Path:
    log = tmp_path / "train.log"
    log.write_text(
        f"{T}fairseq_cli.train | task: KnowledgeDialogTask\n"
        + f"{T}train_inner | epoch 001:     50 / 153 loss=12.705, nll_loss=12.497, ppl=5780.55, num_updates=50\n"
        + valid(1, 8.6, 7.7, 153) + train(1, 667, 775)
        + valid(2, 7.9, 6.9, 306) + train(2, 700, 1500)
        # the run was stopped during epoch 3 and resumed: epoch 3 is logged once, after the restart
        + f"{T}fairseq_cli.train | task: KnowledgeDialogTask\n"
        + valid(3, 7.5, 6.95, 459) + train(3, 650, 700)
        + valid(4, 7.4, 7.1, 612) + train(4, 640, 1400)
        + f"{T}fairseq_cli.train | early stop since valid performance hasn't improved for last 2 runs\n"
        + f"{T}fairseq_cli.train | done training in 3105.2 seconds\n")
    return log


def test_curve_best_epoch_early_stop_and_walls(tmp_path: Path) -> None:
    curve = read_training_log(write_log(tmp_path))
    assert [e.epoch for e in curve.epochs] == [1, 2, 3, 4]
    assert (curve.best_epoch, curve.best_value, curve.updates_at_best) == (2, 6.9, 306)  # by nll_loss
    assert (curve.early_stop_patience, curve.done_seconds) == (2, 3105.2)
    assert [(e.train_wall, e.wall) for e in curve.epochs] == [(667, 775), (700, 1500), (650, 700), (640, 1400)]
    assert curve.train_seconds == 667 + 700 + 650 + 640
    by_loss = read_training_log(write_log(tmp_path), metric="loss")
    assert (by_loss.best_epoch, by_loss.best_value) == (4, 7.4)
    table = markdown_table(curve)
    assert ("4 epochs, best epoch 2 (nll_loss 6.900, 306 updates), early stopping (patience 2), done in 3105 s, "
            "2657 s in training steps") in table
    assert "| **2** | **306** | **7.900** | **6.900** |" in table
    assert "| 4 | 612 | 7.400 | 7.100 | 137.19 | 640 | 1400 |" in table


def test_an_epoch_logged_twice_keeps_its_last_line_and_an_unfinished_run_says_so(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text(valid(1, 9.0, 8.0, 100) + train(1, 10, 12) + valid(1, 8.0, 7.0, 100) + train(1, 11, 13))
    curve = read_training_log(log)
    assert len(curve.epochs) == 1 and curve.best_value == 7.0 and curve.epochs[0].wall == 13
    assert curve.early_stop_patience is None and curve.done_seconds is None
    assert "unfinished" in markdown_table(curve)


def test_bad_logs_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="training log not found"):
        read_training_log(tmp_path / "missing.log")
    empty = tmp_path / "empty.log"
    empty.write_text(train(1, 10, 12))
    with pytest.raises(ValueError, match=r"empty.log: no \"valid on 'valid' subset\" line"):
        read_training_log(empty)
    no_metric = tmp_path / "odd.log"
    no_metric.write_text(train(1, 10, 12) + f"{T}valid | epoch 001 | valid on 'valid' subset | loss 8.0 | num_updates 5\n")
    with pytest.raises(ValueError, match=r"odd.log:2: validation line without 'nll_loss' \(has loss, num_updates\)"):
        read_training_log(no_metric)


def test_cli_writes_markdown_and_json(tmp_path: Path) -> None:
    md, js = tmp_path / "curve.md", tmp_path / "curve.json"
    main([str(write_log(tmp_path)), "--markdown", str(md), "--json", str(js)])
    assert md.read_text().startswith(f"`{tmp_path / 'train.log'}`: 4 epochs, best epoch 2")
    data = json.loads(js.read_text())
    assert data["best_epoch"] == 2 and data["updates_at_best"] == 306 and len(data["epochs"]) == 4
    assert data["train_seconds"] == 2657
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.log")])


def test_stopping_point_is_the_best_epoch_plus_patience_capped_by_max_epoch(tmp_path: Path) -> None:
    """The log of write_log: best nll_loss at epoch 2, last epoch 4; by loss the best is epoch 4."""
    log = write_log(tmp_path)
    point = stopping_point(log, patience=3, max_epoch=60)
    assert (point.cap, point.last_epoch, point.finished) == (5, 4, False)  # one more epoch without a new best
    assert stopping_point(log, patience=2, max_epoch=60).finished  # epochs 3 and 4: 2 without a new best
    assert (stopping_point(log, patience=3, max_epoch=4).cap, stopping_point(log, 3, 4).finished) == (4, True)
    assert stopping_point(log, patience=3, max_epoch=60, metric="loss").cap == 7  # best epoch 4 by loss
    assert stopping_point(log, patience=0, max_epoch=60).cap == 60  # fairseq's patience <= 0: no early stop
    assert stopping_point(log, patience=-1, max_epoch=9).cap == 9


def test_stopping_point_of_a_run_not_validated_yet_is_max_epoch(tmp_path: Path) -> None:
    missing = stopping_point(tmp_path / "none" / "train.log", patience=3, max_epoch=60)
    assert (missing.cap, missing.last_epoch, missing.finished) == (60, 0, False)
    started = tmp_path / "train.log"
    started.write_text(f"{T}fairseq_cli.train | task: KnowledgeDialogTask\n")  # stopped during epoch 1
    assert stopping_point(started, 3, 60) == missing
    with pytest.raises(NoValidationError):
        read_training_log(started)
    started.write_text(valid(1, 9.0, 8.0, 100).replace(" nll_loss 8.0 |", ""))
    with pytest.raises(ValueError, match="validation line without 'nll_loss'"):
        stopping_point(started, 3, 60)  # a malformed log is not taken for an unstarted run
    with pytest.raises(ValueError, match="max_epoch must be at least 1"):
        stopping_point(started, 3, 0)


def test_cli_stopping_point_prints_cap_and_last_epoch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main([str(write_log(tmp_path)), "--stopping-point", "3", "60"])
    assert capsys.readouterr().out == "5 4\n"
    main([str(tmp_path / "missing.log"), "--metric", "loss", "--stopping-point", "3", "60"])
    assert capsys.readouterr().out == "60 0\n"
