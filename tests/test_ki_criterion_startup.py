"""Knowledge internalization's start-up check: knowledge ids of a loaded split beyond the
knowledge table are an error naming the alignment file and its first offending line, raised
before the first step (``knowledge_dialog`` hands the criterion each loaded split), not an
index error in the middle of an epoch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import tasks

from informative_dialogue.ki import loss as ki
from informative_dialogue.ki.alignments import KnowledgeAlignments, write_knowledge_alignments
from tests import nd_helpers as H

SOURCES = ["a b c d", "e f g", "h i", "k l m n o"]
TARGETS = ["e f", "g h i", "j k", "l m"]
GOOD = [[1, 0, 2, 2], [3, 0, 4], [5, 6], [0, 1, 0, 2, 3]]
TABLE_ROWS = 7


class _Backward:
    def backward(self, loss):
        loss.backward()


@pytest.fixture()
def data_bin(tmp_path: Path) -> Path:
    text = tmp_path / "text"
    text.mkdir()
    for split in ("train", "valid"):
        (text / f"{split}.src").write_text("\n".join(SOURCES) + "\n")
        (text / f"{split}.tgt").write_text("\n".join(TARGETS) + "\n")
    bin_dir = H.binarize(text, tmp_path / "bin")
    table = np.random.default_rng(0).normal(size=(TABLE_ROWS, 4)).astype(np.float32)
    table[0] = 0
    np.save(tmp_path / "table.npy", table)
    return bin_dir


def build(data_bin: Path, train_rows, valid_rows=GOOD):
    write_knowledge_alignments(data_bin / "train.align", train_rows)
    write_knowledge_alignments(data_bin / "valid.align", valid_rows)
    cfg = H.make_cfg(data_bin, ["--knowledge-alignments", "--criterion", "knowledge_internalization",
                                "--ki-knowledge-table", str(data_bin.parent / "table.npy"),
                                "--ki-encoder-dim", "16", "--ki-projection-dim", "8"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")  # fairseq-train: the validation split first, then the model and criterion
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    crit = task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    return task, model, crit


def first_line_batch(task, split: str) -> dict:
    ds = task.dataset(split)
    return ds.collater([ds[0]])


def test_id_beyond_the_table_is_refused_before_the_first_step(data_bin: Path) -> None:
    bad = [list(r) for r in GOOD]
    bad[2] = [5, 9]  # line 3: id 9, the table has rows 0..6
    bad[3][1] = 7  # line 4 as well: the first offending line is named
    task, model, crit = build(data_bin, bad)
    sample = first_line_batch(task, "train")  # a batch of line 1 only: the per-batch check would pass
    with pytest.raises(ValueError, match=r"train\.align\.ids\.npy:3: knowledge id 9 is beyond the knowledge "
                                         r"table .*table\.npy \(7 rows, valid ids 0\.\.6; 2 id\(s\)"):
        task.train_step(sample, model, crit, _Backward(), update_num=0)


def test_validation_split_is_checked_too(data_bin: Path) -> None:
    bad = [list(r) for r in GOOD]
    bad[0][0] = 100
    task, model, crit = build(data_bin, GOOD, valid_rows=bad)
    with pytest.raises(ValueError, match=r"valid\.align\.ids\.npy:1: knowledge id 100"):
        task.valid_step(first_line_batch(task, "valid"), model, crit)


def test_good_alignments_train(data_bin: Path) -> None:
    task, model, crit = build(data_bin, GOOD)
    sample = first_line_batch(task, "train")
    _, _, log = task.train_step(sample, model, crit, _Backward(), update_num=0)
    assert log["ki_labelled"] == 3 and torch.isfinite(log["loss"])
    # each split is checked once: a later step does not re-read the alignments
    calls = []
    crit.check_dataset = lambda split, dataset: calls.append(split)
    task.train_step(sample, model, crit, _Backward(), update_num=1)
    assert calls == []
    task.load_dataset("train")  # a new dataset object (fairseq reloads per epoch with several shards)
    task.train_step(sample, model, crit, _Backward(), update_num=2)
    assert calls == ["train"]


def test_check_alignment_ids_hand_made() -> None:
    alignments = KnowledgeAlignments.from_rows([[0, 1], [], [2, 3, 4], [5]], path="x.align.ids.npy")
    ki.check_alignment_ids(alignments, 6, "t.npy")  # max id 5 < 6 rows
    with pytest.raises(ValueError, match=r"x\.align\.ids\.npy:3: knowledge id 4 is beyond .* t\.npy \(4 rows"):
        ki.check_alignment_ids(alignments, 4, "t.npy")
    with pytest.raises(ValueError, match=r"x\.align\.ids\.npy:4: knowledge id 5"):
        ki.check_alignment_ids(alignments, 5, "t.npy")
    ki.check_alignment_ids(KnowledgeAlignments.from_rows([[], []]), 1, "t.npy")  # no ids at all
