"""Pinned outputs of a tiny seeded training with each criterion: plain label-smoothed
cross-entropy, knowledge internalization, negative distillation (fused t = 1 path, unfused
t = 2 path with --sentence-avg and both attentions, hard targets) and the UL baseline.

Each case runs fairseq's own ``Trainer`` in-process for three updates on fixed batches of a
tiny Transformer (``--task knowledge_dialog``), and pins every number the criterion logs at
each update (raw logging outputs, before fairseq's rounding), the validation logs after the
updates, and the first greedy hypotheses of the trained model (fairseq's generator, beam 1).
ND also resumes from a checkpoint of those three updates and trains one more (the step s and
alpha after a resume). The values were recorded from the code before the criteria were
thinned (issue #15); a refactor that changes any of them changes behaviour.

Re-record (only for a deliberate change of behaviour, say which in the commit):
``python3 -m tests.test_pinned_training`` prints the ``PINNED`` dict.
"""
from __future__ import annotations

import math
import pprint
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from fairseq import tasks
from fairseq.data import LanguagePairDataset, data_utils

from tests import nd_helpers as H

REL = 1e-6
UPDATES = 3
DK = 4
TABLE_ROWS = 7
# (source, target, knowledge id per source word); 3 batches of 3 dialogue pairs
BATCHES = [
    [("a b c d", "e f g", [1, 0, 2, 2]), ("h i", "j k l m n", [3, 4]), ("o p q r s t", "a", [0, 5, 1, 0, 6, 3])],
    [("b d f", "h j", [2, 0, 4]), ("k m o q s", "a c e", [5, 5, 0, 1, 2]), ("t", "b c d e f", [6])],
    [("g h i j", "k l", [0, 3, 3, 1]), ("l n p r", "t s r q", [4, 0, 6, 2]), ("a a b", "c c d", [1, 1, 0])],
]
VALID = [("c d e", "f g h", [2, 0, 4]), ("q r", "s t a b", [6, 5])]
TIGHT = ["--lr", "0.02", "--clip-norm", "0"]


def case_args(name: str, tmp: Path) -> List[str]:
    teacher = str(tmp / "teacher" / "checkpoint.pt")
    nd = ["--criterion", "negative_distillation", "--teacher-path", teacher]
    return {
        "lsce": ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
        "ki": ["--criterion", "knowledge_internalization", "--ki-knowledge-table", str(tmp / "table.npy"),
               "--ki-encoder-dim", "16", "--ki-projection-dim", "8", "--ki-negatives", "2"],
        # progressive alpha with gamma 2: alpha moves at every update (s = 0, 1, 2, then 3 after resume)
        "nd": [*nd, "--nd-gamma", "2"],
        "nd_t2": [*nd, "--nd-temperature", "2", "--nd-attention", "both", "--nd-alpha-schedule", "fixed",
                  "--nd-alpha", "0.4", "--sentence-avg"],
        "nd_hard": [*nd, "--nd-target", "hard", "--nd-alpha-schedule", "fixed", "--nd-alpha", "0.5"],
        "ul": ["--criterion", "unlikelihood", "--ul-window", "1", "--ul-alpha", "10", "--ul-max-len", "8"],
    }[name]


CASES = ["lsce", "ki", "nd", "nd_t2", "nd_hard", "ul"]


def make_batch(task, items) -> dict:
    d = task.source_dictionary
    src = [d.encode_line(s, add_if_not_exist=False).long() for s, _, _ in items]
    tgt = [task.target_dictionary.encode_line(t, add_if_not_exist=False).long() for _, t, _ in items]
    ds = LanguagePairDataset(src, [len(x) for x in src], d, tgt, [len(x) for x in tgt], task.target_dictionary)
    sample = ds.collater([ds[i] for i in range(len(items))])
    labels = [torch.tensor(items[i][2] + [0]) for i in sample["id"].tolist()]
    sample["knowledge"] = data_utils.collate_tokens(labels, 0, left_pad=True)
    return sample


def make_files(tmp: Path) -> Path:
    """Student data folder, KI table and ND teacher (a seeded random tiny Transformer)."""
    data = H.make_data_dir(tmp / "data")
    rng = np.random.default_rng(0)
    table = rng.normal(size=(TABLE_ROWS, DK)).astype(np.float32)
    table[0] = 0
    np.save(tmp / "table.npy", table)
    cfg = H.make_cfg(data)
    torch.manual_seed(7)
    _, teacher = H.build(cfg)
    H.save_checkpoint(teacher, cfg, tmp / "teacher" / "checkpoint.pt")
    return data


def as_number(v):
    return float(v.item()) if torch.is_tensor(v) else float(v)


class Recorder:
    """Keeps the raw logging outputs the task's train_step / valid_step return."""

    def __init__(self, task):
        self.train: List[Dict[str, float]] = []
        self.valid: List[Dict[str, float]] = []
        train_step, valid_step = task.train_step, task.valid_step

        def recorded_train(*args, **kwargs):
            out = train_step(*args, **kwargs)
            self.train.append({k: as_number(v) for k, v in sorted(out[2].items())})
            return out

        def recorded_valid(*args, **kwargs):
            out = valid_step(*args, **kwargs)
            self.valid.append({k: as_number(v) for k, v in sorted(out[2].items())})
            return out

        task.train_step, task.valid_step = recorded_train, recorded_valid


def trainer_for(cfg, seed: int = 1):
    from fairseq.trainer import Trainer

    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    recorder = Recorder(task)
    return task, Trainer(cfg, task, model, criterion), recorder


def greedy(task, trainer, sample) -> Tuple[List[List[int]], List[List[float]]]:
    """Greedy hypotheses (fairseq's generator, beam 1, 4 to 6 tokens) and their positional
    log-probabilities, in example order."""
    from argparse import Namespace

    model = trainer.get_model()
    model.eval()
    gen = task.build_generator([model], Namespace(beam=1, max_len_b=6, max_len_a=0, min_len=4))
    with torch.no_grad():
        hyps = task.inference_step(gen, [model], sample)
    order = sample["id"].tolist()
    by_id = {i: (h[0]["tokens"].tolist(), h[0]["positional_scores"].tolist()) for i, h in zip(order, hyps)}
    return [by_id[i][0] for i in sorted(by_id)], [by_id[i][1] for i in sorted(by_id)]


def run_case(name: str, tmp: Path, data: Path) -> dict:
    from fairseq.logging import metrics

    metrics.reset()  # fairseq's meters are process-wide: each case starts as a fresh fairseq-train
    save_dir = tmp / f"ckpt_{name}"
    cfg = H.make_cfg(data, ["--task", "knowledge_dialog", *TIGHT, *case_args(name, tmp),
                            "--save-dir", str(save_dir), "--max-update", "10"])
    task, trainer, rec = trainer_for(cfg)
    batches = [make_batch(task, b) for b in BATCHES]
    for b in batches:
        assert trainer.train_step([b]) is not None
    assert trainer.get_num_updates() == UPDATES
    valid = make_batch(task, VALID)
    trainer.valid_step(valid)
    tokens, scores = greedy(task, trainer, make_batch(task, BATCHES[0]))
    out = {"train": rec.train, "valid": rec.valid, "greedy": tokens, "greedy_scores": scores}
    if name == "nd":
        save_dir.mkdir(parents=True, exist_ok=True)
        path = save_dir / "checkpoint_last.pt"
        trainer.consolidate_optimizer()
        trainer.save_checkpoint(str(path), {"train_iterator": {"epoch": 1}, "previous_epoch_iterator": None})
        metrics.reset()  # a fresh process: no meter from the first run
        task2, trainer2, rec2 = trainer_for(cfg, seed=99)  # other initial weights: the checkpoint's must win
        trainer2.load_checkpoint(str(path))
        assert trainer2.get_num_updates() == UPDATES
        trainer2.train_step([batches[0]])
        out["resumed"] = rec2.train
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory):
    # one thread: the same sums in the same order on any machine, and no thread hand-offs for
    # these tiny tensors (which cost more than the arithmetic on a busy machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("pinned")
    yield tmp, make_files(tmp)
    torch.set_num_threads(threads)


def assert_logs_equal(got: List[Dict[str, float]], want: List[Dict[str, float]], where: str) -> None:
    assert len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
        assert sorted(g) == sorted(w), f"{where}[{i}] keys"
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=REL, abs=1e-9), f"{where}[{i}] {key}: {g[key]!r} != {w[key]!r}"


@pytest.mark.parametrize("name", CASES)
def test_pinned_training(files, name: str) -> None:
    tmp, data = files
    got = run_case(name, tmp, data)
    want = PINNED[name]
    assert_logs_equal(got["train"], want["train"], f"{name} train")
    assert_logs_equal(got["valid"], want["valid"], f"{name} valid")
    assert got["greedy"] == want["greedy"], f"{name} greedy hypotheses"
    for g, w in zip(got["greedy_scores"], want["greedy_scores"]):
        assert g == pytest.approx(w, rel=1e-5, abs=1e-6), f"{name} greedy scores"
    if "resumed" in want:
        assert_logs_equal(got["resumed"], want["resumed"], f"{name} resumed")


def test_pins_check_what_they_claim() -> None:
    """The pins themselves: ND's step s and alpha at each update (progressive, gamma 2), the
    validation step takes the last training update, a resume continues at s = 3."""
    from informative_dialogue.nd.losses import progressive_alpha

    nd = PINNED["nd"]
    assert [log["nd_step"] for log in nd["train"]] == [0, 1, 2]
    for log in nd["train"] + nd["valid"] + nd["resumed"]:
        assert log["nd_alpha"] == pytest.approx(progressive_alpha(log["nd_step"], 4.0, 2.0), rel=1e-12)
    assert nd["valid"][0]["nd_step"] == 2 and nd["resumed"][0]["nd_step"] == 3
    for name in CASES:
        assert all(math.isfinite(v) for log in PINNED[name]["train"] for v in log.values())


# recorded by `python3 -m tests.test_pinned_training` from the code before issue #15's refactor
PINNED: Dict[str, dict] = {
    "ki": {
        "greedy": [[6, 6, 6, 6, 2], [6, 6, 6, 6, 2], [6, 6, 6, 6, 2]],
        "greedy_scores": [
            [-1.833892822265625, -1.8023087978363037, -1.8033525943756104, -1.8035469055175781,
             -1.5579452514648438],
            [-1.872228741645813, -1.8395026922225952, -1.8405647277832031, -1.8408093452453613,
             -1.5738296508789062],
            [-1.8361095190048218, -1.8034971952438354, -1.8047773838043213, -1.805457592010498, -1.567068099975586],
        ],
        "train": [
            {"ki_absent": 0.0, "ki_labelled": 9.0, "ki_loss": 4.39547061920166, "ki_no_negative": 0.0,
             "ki_tokens": 9.0, "loss": 47.40148162841797, "nll_loss": 42.64799880981445, "nsentences": 3.0,
             "ntokens": 12.0, "sample_size": 12.0, "src_tokens": 12.0},
            {"ki_absent": 0.0, "ki_labelled": 7.0, "ki_loss": 2.4352893829345703, "ki_no_negative": 0.0,
             "ki_tokens": 7.0, "loss": 44.73486328125, "nll_loss": 41.58224105834961, "nsentences": 3.0,
             "ntokens": 13.0, "sample_size": 13.0, "src_tokens": 9.0},
            {"ki_absent": 0.0, "ki_labelled": 8.0, "ki_loss": 4.370517253875732, "ki_no_negative": 0.0,
             "ki_tokens": 8.0, "loss": 43.97700500488281, "nll_loss": 39.15399169921875, "nsentences": 3.0,
             "ntokens": 12.0, "sample_size": 12.0, "src_tokens": 11.0},
        ],
        "valid": [
            {"ki_absent": 0.0, "ki_labelled": 4.0, "ki_loss": 1.7453289031982422, "ki_no_negative": 0.0,
             "ki_tokens": 4.0, "loss": 29.706279754638672, "nll_loss": 27.39423179626465, "nsentences": 2.0,
             "ntokens": 9.0, "sample_size": 9.0, "src_tokens": 5.0},
        ],
    },
    "lsce": {
        "greedy": [[6, 6, 6, 6, 2], [6, 6, 6, 6, 2], [6, 6, 6, 6, 2]],
        "greedy_scores": [
            [-1.7928110361099243, -1.7572354078292847, -1.7591900825500488, -1.7606124877929688,
             -1.618851661682129],
            [-1.8130327463150024, -1.7765344381332397, -1.7784724235534668, -1.7798256874084473,
             -1.6257953643798828],
            [-1.7916898727416992, -1.756105661392212, -1.7580339908599854, -1.7594923973083496,
             -1.6040582656860352],
        ],
        "train": [
            {"loss": 43.006011962890625, "nll_loss": 42.64799880981445, "nsentences": 3.0, "ntokens": 12.0,
             "sample_size": 12.0},
            {"loss": 41.8426513671875, "nll_loss": 41.04985809326172, "nsentences": 3.0, "ntokens": 13.0,
             "sample_size": 13.0},
            {"loss": 39.77452087402344, "nll_loss": 39.32265853881836, "nsentences": 3.0, "ntokens": 12.0,
             "sample_size": 12.0},
        ],
        "valid": [
            {"loss": 27.86530876159668, "nll_loss": 27.27654266357422, "nsentences": 2.0, "ntokens": 9.0,
             "sample_size": 9.0},
        ],
    },
    "nd": {
        "greedy": [[6, 6, 6, 6, 6, 6, 2], [6, 6, 6, 6, 6, 6, 2], [6, 6, 6, 6, 6, 6, 2]],
        "greedy_scores": [
            [-1.7125964164733887, -1.6840991973876953, -1.6835074424743652, -1.6827011108398438,
             -1.6812400817871094, -1.6794376373291016, -2.2654190063476562],
            [-1.7322442531585693, -1.702397108078003, -1.701733112335205, -1.7009410858154297, -1.6995353698730469,
             -1.6974782943725586, -2.2785911560058594],
            [-1.7090845108032227, -1.6803815364837646, -1.6797163486480713, -1.6789331436157227,
             -1.6775474548339844, -1.6757917404174805, -2.243435859680176],
        ],
        "resumed": [
            {"loss": 34.06552505493164, "mle_loss": 38.50552749633789, "nd_alpha": 0.18070663892364858,
             "nd_batches": 1.0, "nd_att": 3.1396725177764893, "nd_hid": 10.286874771118164, "nd_pred": 0.508743405342102,
             "nd_step": 3.0, "nll_loss": 37.840476989746094, "nsentences": 3.0, "ntokens": 12.0,
             "sample_size": 12.0},
        ],
        "train": [
            {"loss": 42.831565856933594, "mle_loss": 43.006011962890625, "nd_alpha": 0.009866037165440194,
             "nd_batches": 1.0, "nd_att": 14.006356239318848, "nd_hid": 10.443984985351562, "nd_pred": 0.8745279908180237,
             "nd_step": 0.0, "nll_loss": 42.64799880981445, "nsentences": 3.0, "ntokens": 12.0,
             "sample_size": 12.0},
            {"loss": 39.253753662109375, "mle_loss": 41.80175018310547, "nd_alpha": 0.18070663892364858,
             "nd_batches": 1.0, "nd_att": 15.536375045776367, "nd_hid": 11.553231239318848, "nd_pred": 0.611956000328064,
             "nd_step": 1.0, "nll_loss": 41.00367736816406, "nsentences": 3.0, "ntokens": 13.0,
             "sample_size": 13.0},
            {"loss": 18.01205062866211, "mle_loss": 39.77090072631836, "nd_alpha": 1.0,
             "nd_batches": 1.0, "nd_att": 7.0144548416137695, "nd_hid": 10.474708557128906, "nd_pred": 0.5228888988494873,
             "nd_step": 2.0, "nll_loss": 39.33763885498047, "nsentences": 3.0, "ntokens": 12.0,
             "sample_size": 12.0},
        ],
        "valid": [
            {"loss": 10.455684661865234, "mle_loss": 28.697227478027344, "nd_alpha": 1.0,
             "nd_batches": 1.0, "nd_att": 2.5805981159210205, "nd_hid": 7.476832389831543, "nd_pred": 0.39825472235679626,
             "nd_step": 2.0, "nll_loss": 28.169986724853516, "nsentences": 2.0, "ntokens": 9.0, "sample_size": 9.0},
        ],
    },
    "nd_hard": {
        "greedy": [[6, 6, 6, 6, 2], [6, 6, 6, 6, 2], [6, 6, 6, 6, 2]],
        "greedy_scores": [
            [-1.9766714572906494, -1.9375603199005127, -1.9392542839050293, -1.938779354095459, -1.621192455291748],
            [-1.990304946899414, -1.9514727592468262, -1.953354835510254, -1.9529261589050293, -1.6267890930175781],
            [-1.9805104732513428, -1.9415857791900635, -1.9433856010437012, -1.942936897277832,
             -1.6082873344421387],
        ],
        "train": [
            {"loss": 33.80162048339844, "mle_loss": 43.006011962890625, "nd_alpha": 0.5,
             "nd_batches": 1.0, "nd_att": 14.006356239318848, "nd_hid": 10.443984985351562, "nd_pred": 0.14688873291015625,
             "nd_step": 0.0, "nll_loss": 42.64799880981445, "nsentences": 3.0, "ntokens": 12.0,
             "sample_size": 12.0},
            {"loss": 32.85744857788086, "mle_loss": 41.95307922363281, "nd_alpha": 0.5,
             "nd_batches": 1.0, "nd_att": 12.491181373596191, "nd_hid": 11.161094665527344, "nd_pred": 0.10954507440328598,
             "nd_step": 1.0, "nll_loss": 41.12519836425781, "nsentences": 3.0, "ntokens": 13.0,
             "sample_size": 13.0},
            {"loss": 26.904159545898438, "mle_loss": 40.31413650512695, "nd_alpha": 0.5,
             "nd_batches": 1.0, "nd_att": 3.445073127746582, "nd_hid": 9.76701545715332, "nd_pred": 0.2820938229560852, "nd_step": 2.0,
             "nll_loss": 39.889644622802734, "nsentences": 3.0, "ntokens": 12.0, "sample_size": 12.0},
        ],
        "valid": [
            {"loss": 18.300769805908203, "mle_loss": 27.5936222076416, "nd_alpha": 0.5,
             "nd_batches": 1.0, "nd_att": 1.4405953884124756, "nd_hid": 7.242431163787842, "nd_pred": 0.32488855719566345,
             "nd_step": 2.0, "nll_loss": 26.933063507080078, "nsentences": 2.0, "ntokens": 9.0, "sample_size": 9.0},
        ],
    },
    "nd_t2": {
        "greedy": [[6, 6, 6, 6, 2], [6, 6, 6, 6, 2], [6, 6, 6, 6, 2]],
        "greedy_scores": [
            [-1.783361554145813, -1.744470477104187, -1.7474088668823242, -1.7493958473205566, -1.6758208274841309],
            [-1.8027307987213135, -1.762908935546875, -1.7660272121429443, -1.7680282592773438, -1.682419776916504],
            [-1.785211443901062, -1.746151089668274, -1.749131679534912, -1.7511329650878906, -1.6606926918029785],
        ],
        "train": [
            {"loss": 30.090085983276367, "mle_loss": 43.006011962890625, "nd_alpha": 0.4,
             "nd_batches": 1.0, "nd_att": 7.538847923278809, "nd_hid": 2.6109962463378906, "nd_pred": 0.5663490295410156,
             "nd_step": 0.0, "nll_loss": 42.64799880981445, "nsentences": 3.0, "ntokens": 12.0, "sample_size": 3.0},
            {"loss": 28.3050594329834, "mle_loss": 41.64698791503906, "nd_alpha": 0.4, "nd_batches": 1.0, "nd_att": 5.060201168060303,
             "nd_hid": 2.659895181655884, "nd_pred": 0.5720701813697815, "nd_step": 1.0,
             "nll_loss": 40.84783935546875, "nsentences": 3.0, "ntokens": 13.0, "sample_size": 3.0},
            {"loss": 26.099449157714844, "mle_loss": 39.91986846923828, "nd_alpha": 0.4,
             "nd_batches": 1.0, "nd_att": 2.2632908821105957, "nd_hid": 2.58939528465271, "nd_pred": 0.5161336660385132,
             "nd_step": 2.0, "nll_loss": 39.496185302734375, "nsentences": 3.0, "ntokens": 12.0,
             "sample_size": 3.0},
        ],
        "valid": [
            {"loss": 17.743070602416992, "mle_loss": 27.77568817138672, "nd_alpha": 0.4,
             "nd_batches": 1.0, "nd_att": 0.589483916759491, "nd_hid": 1.7185499668121338, "nd_pred": 0.38611161708831787,
             "nd_step": 2.0, "nll_loss": 27.178482055664062, "nsentences": 2.0, "ntokens": 9.0, "sample_size": 2.0},
        ],
    },
    "ul": {
        "greedy": [[6, 6, 6, 6, 2], [6, 6, 6, 6, 2], [6, 6, 6, 6, 2]],
        "greedy_scores": [
            [-1.7928110361099243, -1.7572354078292847, -1.7591900825500488, -1.7606124877929688,
             -1.618851661682129],
            [-1.8130327463150024, -1.7765344381332397, -1.7784724235534668, -1.7798256874084473,
             -1.6257953643798828],
            [-1.7916898727416992, -1.756105661392212, -1.7580339908599854, -1.7594923973083496,
             -1.6040582656860352],
        ],
        "train": [
            {"loss": 43.006011962890625, "mle_loss": 43.006011962890625, "nll_loss": 42.64799880981445,
             "nsentences": 3.0, "ntokens": 12.0, "sample_size": 12.0, "ul_batches": 1.0, "ul_candidates": 0.0, "ul_loss": 0.0,
             "ul_tokens": 0.0},
            {"loss": 41.8426513671875, "mle_loss": 41.8426513671875, "nll_loss": 41.04985809326172,
             "nsentences": 3.0, "ntokens": 13.0, "sample_size": 13.0, "ul_batches": 1.0, "ul_candidates": 0.0, "ul_loss": 0.0,
             "ul_tokens": 0.0},
            {"loss": 39.77452087402344, "mle_loss": 39.77452087402344, "nll_loss": 39.32265853881836,
             "nsentences": 3.0, "ntokens": 12.0, "sample_size": 12.0, "ul_batches": 1.0, "ul_candidates": 0.0, "ul_loss": 0.0,
             "ul_tokens": 0.0},
        ],
        "valid": [
            {"loss": 27.86530876159668, "mle_loss": 27.86530876159668, "nll_loss": 27.27654266357422,
             "nsentences": 2.0, "ntokens": 9.0, "sample_size": 9.0, "ul_batches": 1.0, "ul_candidates": 0.0, "ul_loss": 0.0,
             "ul_tokens": 0.0},
        ],
    },
}


if __name__ == "__main__":
    import tempfile

    import fairseq_plugins  # noqa: F401

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = make_files(tmp)
        pprint.pprint({name: run_case(name, tmp, data) for name in CASES}, width=110, sort_dicts=True)
