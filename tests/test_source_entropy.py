"""Source entropy (Eq. 4) and the D_N / bottom split: hand-made corpora, the command, and the
real DailyDialog training pairs against the authors' entropy_score_train.txt."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import require_shared_data

from data_prep.corpora import dailydialog
from data_prep.nd import source_entropy as se
from informative_dialogue.errors import CorpusError

HAND = [  # (query, response)
    ("how do i get to the airport ?", "i don't know ."),
    ("what is her name ?", "i don't know ."),
    ("would you like a car wash ?", "i don't know ."),
    ("is she pretty ?", "i don't know ."),
    ("hello !", "hi ."),
    ("good morning .", "hi ."),
    ("see you .", "bye ."),
    ("see you .", "bye ."),  # the same pair twice: one query, entropy 0
    ("what time is it ?", "it is ten o'clock ."),
]


def test_one_response_four_queries_is_two_bits() -> None:
    queries, responses = zip(*HAND)
    scores = se.pair_scores(queries, responses, log_base=2)
    assert scores[:4] == [2.0] * 4
    assert scores[4:6] == [1.0, 1.0]
    assert scores[6:] == [0.0, 0.0, 0.0]
    assert all(math.copysign(1, s) == 1 for s in scores)  # no -0.0
    nats = se.pair_scores(queries, responses, log_base=math.e)
    assert nats[0] == pytest.approx(math.log(4))


def test_relative_frequencies_count_duplicates() -> None:
    # p(q|r) = (2/3, 1/3): H = 0.918 bits, the authors' second most common non-zero value
    h = se.response_entropies(["a", "a", "b"], ["r", "r", "r"])["r"]
    assert h == pytest.approx(-(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3))
    assert h == pytest.approx(0.9182958340544896)


def test_normalisation_groups_responses() -> None:
    queries = ["q1", "q2", "q3", "q4"]
    responses = ["I don't know.", "i don't know .", "I  don't know!", "no"]
    assert se.pair_scores(queries, responses, normalize="none")[:3] == [0.0, 0.0, 0.0]
    assert se.pair_scores(queries, responses, normalize="lower,punct,ws")[:3] == [pytest.approx(math.log2(3))] * 3
    assert se.make_normalizer("punct")("it’s ok , isn't it ?") == "it s ok isn t it"
    with pytest.raises(ValueError, match="unknown normalisation"):
        se.make_normalizer("stem")


def test_select_top_breaks_ties_by_input_order() -> None:
    scores = [1.0, 0.0, 1.0, 0.0, 2.0, 1.0]
    top, bottom = se.select_top(scores, 0.5)
    assert top == [0, 2, 4] and bottom == [1, 3, 5]  # the tied 1.0 at index 5 goes to the bottom
    top, bottom = se.select_top(scores, 0.3)  # floor(1.8) = 1
    assert top == [4]
    stats = se.summarize(scores, *se.select_top(scores, 0.5))
    assert stats["cut_value"] == 1.0 and stats["ties_at_cut_in_top"] == 2 and stats["ties_at_cut_in_bottom"] == 1
    assert stats["zeros_share"] == pytest.approx(2 / 6)


def _write_corpus(folder: Path, pairs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.src").write_text("".join(q + "\n" for q, _ in pairs))
    (folder / "train.tgt").write_text("".join(r + "\n" for _, r in pairs))
    for split in ("valid", "test"):
        (folder / f"{split}.src").write_text("x\n")
        (folder / f"{split}.tgt").write_text("y\n")


def test_command_writes_scores_subsets_and_stats(tmp_path: Path) -> None:
    _write_corpus(tmp_path / "in", HAND)
    stats = se.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    out = tmp_path / "out"
    scores = [float(x) for x in (out / "train.scores").read_text().split()]
    assert scores == [2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # log2 of the queries per response
    top_ids = [int(x) for x in (out / "negative/train.ids").read_text().split()]
    bottom_ids = [int(x) for x in (out / "bottom/train.ids").read_text().split()]
    assert top_ids == [0, 1, 2, 3] and bottom_ids == [4, 5, 6, 7, 8]  # floor(9 / 2) = 4
    assert (out / "negative/train.tgt").read_text().splitlines() == ["i don't know ."] * 4
    assert (out / "bottom/train.src").read_text().splitlines()[0] == "hello !"
    for sub in ("negative", "bottom"):
        assert (out / sub / "valid.src").read_text() == "x\n" and (out / sub / "test.tgt").read_text() == "y\n"
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["cut_value"] == stats["cut_value"] == 2.0
    assert on_disk["most_many_to_one"][0] == {"response": "i don't know .", "pairs": 4, "entropy": 2.0}


def test_misaligned_input_is_a_corpus_error(tmp_path: Path) -> None:
    _write_corpus(tmp_path, HAND)
    (tmp_path / "train.tgt").write_text("only one\n")
    with pytest.raises(CorpusError, match="train.tgt: 1 lines"):
        se.read_pairs(str(tmp_path))


def test_real_dailydialog_against_the_authors_scores(shared_data: Path) -> None:
    """Eq. 4 on the rebuilt single-turn, lower-cased, de-duplicated DailyDialog train pairs,
    pinned, next to the distribution of the authors' entropy_score_train.txt (see the report in
    examples/dailydialog/train_nd.sh for why they differ)."""
    examples, _ = dailydialog.prepare_split(str(shared_data / "dailydialog"), "train", lowercase=True, dedup=True)
    queries = [ex.src for ex in examples]
    responses = [ex.tgt for ex in examples]
    scores = se.pair_scores(queries, responses)
    top, bottom = se.select_top(scores, 0.5)
    ours = se.summarize(scores, top, bottom)
    assert ours["pairs"] == 68104
    assert ours["zeros_share"] == pytest.approx(0.8719, abs=0.002)
    assert ours["cut_value"] == 0.0  # more than half the pairs score 0: the cut falls among zeros
    assert ours["max"] == pytest.approx(7.9715, abs=1e-3)  # "thank you ." answers 251 distinct queries
    assert ours["quantiles"]["0.9"] == pytest.approx(1.0, abs=1e-9)
    assert ours["mean"] == pytest.approx(0.344, abs=0.005)

    ref_path = require_shared_data("dailydialog", "nd_reference", "entropy_score_train.txt")
    ref = [float(x) for x in ref_path.read_text().split()]
    ref_stats = se.summarize(ref, *se.select_top(ref, 0.5))
    assert ref_stats["pairs"] == 68066  # 38 fewer than our rebuilt pairs
    assert ref_stats["zeros_share"] == pytest.approx(0.4478, abs=0.001)
    assert ref_stats["quantiles"]["0.5"] == pytest.approx(0.9183, abs=1e-3)  # the paper's "median 0.92"
    assert ref_stats["cut_value"] == pytest.approx(0.9183, abs=1e-3)
    assert ref_stats["max"] == pytest.approx(38.87, abs=0.01)  # > log2(68066) = 16.05: not one distribution


def test_tie_break_shorter_prefers_short_responses() -> None:
    scores = [1.0, 0.0, 0.0, 0.0]
    top, _ = se.select_top(scores, 0.5, tie_lengths=[9, 7, 2, 5])
    assert top == [0, 2]
    top, _ = se.select_top(scores, 0.5)
    assert top == [0, 1]
