"""paired-bootstrap: per-example scores and the paired bootstrap of two systems."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.paired_bootstrap import main, paired_bootstrap, per_example_scores
from dialogue_metrics.readers import InputError


def test_per_example_scores_by_hand() -> None:
    # ParlAI normalisation drops "a"/"the": [cat, sat] vs [cat, sat, down] -> P 1, R 2/3, F1 0.8
    assert per_example_scores("f1", ["a cat sat", "xyz"], ["the cat sat down", "abc"]) == pytest.approx([0.8, 0.0])
    # ROUGE-L: LCS of [cat, sat] and [the, cat, sat, down] is 2 -> P 1, R 0.5, F 2/3
    assert per_example_scores("rougeL", ["cat sat"], ["the cat sat down"]) == pytest.approx([2 / 3])
    with pytest.raises(ValueError, match="unknown metric"):
        per_example_scores("bleu", ["a"], ["a"])


def test_identical_systems_and_uniformly_better_system() -> None:
    same = paired_bootstrap([0.1, 0.5, 0.3], [0.1, 0.5, 0.3], resamples=200)
    assert (same.diff, same.ci_low, same.ci_high, same.p_b_not_better) == (0.0, 0.0, 0.0, 1.0)
    better = paired_bootstrap([0.1, 0.5, 0.3], [0.2, 0.6, 0.4], resamples=200)
    assert better.diff == pytest.approx(0.1) and better.ci_low == pytest.approx(0.1)
    assert better.p_b_not_better == 0.0 and better.mean_b == pytest.approx(0.4)


def test_two_examples_bootstrap_distribution() -> None:
    # differences [1, 0]: resample means are 0 (p 1/4), 0.5 (1/2), 1 (1/4)
    result = paired_bootstrap([0.0, 0.0], [1.0, 0.0], resamples=4000, seed=3)
    assert result.diff == 0.5 and result.ci_low == 0.0 and result.ci_high == 1.0
    assert result.p_b_not_better == pytest.approx(0.25, abs=0.03)


def gen_out(path: Path, hyps: dict[int, str]) -> Path:
    # fairseq prints examples out of order; D- lines hold the (word-piece) hypothesis
    path.write_text("".join(f"S-{i}\tsrc {i}\nD-{i}\t-0.5\t{h}\n" for i, h in sorted(hyps.items(), reverse=True)),
                    encoding="utf-8")
    return path


def test_cli_on_generate_outputs_with_knowledge(tmp_path: Path) -> None:
    a = gen_out(tmp_path / "a.out", {0: "i like it", 1: "no"})
    b = gen_out(tmp_path / "b.out", {0: "i like the fro ##zen songs", 1: "the queen el ##sa"})
    ref = tmp_path / "ref.txt"
    ref.write_text("i like frozen\nyes\n", encoding="utf-8")
    knowledge = tmp_path / "k.txt"
    knowledge.write_text("frozen songs __knowledge__ music\nqueen elsa of arendelle\n", encoding="utf-8")
    out = tmp_path / "r.json"
    results = main(["--a", str(a), "--b", str(b), "--ref", str(ref), "--knowledge", str(knowledge),
                    "--metrics", "kf1,f1", "--wordpiece-detok", "--drop-token", "__knowledge__",
                    "--resamples", "100", "--json-out", str(out)])
    assert json.loads(out.read_text()) == results
    kf1, f1 = results
    # B, example 0: [i, like, frozen, songs] vs [frozen, songs, music] -> P 1/2, R 2/3, F1 4/7;
    # example 1: [queen, elsa] vs [queen, elsa, of, arendelle] -> 2/3; A shares nothing
    assert kf1["mean_a"] == 0.0 and kf1["mean_b"] == pytest.approx((4 / 7 + 2 / 3) / 2)
    # f1, example 0: B [i, like, frozen, songs] vs [i, like, frozen] -> P 3/4, R 1, F1 6/7;
    # A [i, like, it] -> P 2/3, R 2/3, F1 2/3; example 1 ("yes") scores 0 for both
    assert f1["mean_b"] == pytest.approx(6 / 7 / 2) and f1["mean_a"] == pytest.approx(2 / 3 / 2)


def test_cli_errors(tmp_path: Path) -> None:
    # input errors are InputError (a ValueError: the console script prints one line, exit 2)
    a = gen_out(tmp_path / "a.out", {0: "x", 1: "y"})
    b = gen_out(tmp_path / "b.out", {0: "x"})
    ref = tmp_path / "ref.txt"
    ref.write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(InputError, match="do not hold the same examples"):
        main(["--a", str(a), "--b", str(b), "--ref", str(ref)])
    with pytest.raises(InputError, match="needs --knowledge"):
        main(["--a", str(a), "--b", str(a), "--ref", str(ref), "--metrics", "kf1"])


def test_rouge_l_uses_rouge_score_tokenisation_by_default() -> None:
    # rouge-score's tokenizer drops "'" and "?": [don, t] vs [don, t, go] -> P 1, R 2/3, F 0.8;
    # the whitespace tokens [don, ', t, ?] vs [don, ', t, go] give LCS 3, P 3/4, R 3/4, F 3/4
    hyp, ref = ["don ' t ?"], ["don ' t go"]
    assert per_example_scores("rougeL", hyp, ref) == pytest.approx([0.8])
    assert per_example_scores("rougeL", hyp, ref, "whitespace") == pytest.approx([0.75])


def test_partial_generate_output_is_refused_unless_allowed(tmp_path: Path) -> None:
    # 2 of the 3 reference examples: exit status 2 (InputError) unless --allow-partial
    a = gen_out(tmp_path / "a.out", {0: "i like it", 2: "no"})
    b = gen_out(tmp_path / "b.out", {0: "i like frozen", 2: "yes"})
    ref = tmp_path / "ref.txt"
    ref.write_text("i like frozen\nmissing\nyes\n", encoding="utf-8")
    args = ["--a", str(a), "--b", str(b), "--ref", str(ref), "--metrics", "f1,rougeL", "--resamples", "50"]
    with pytest.raises(InputError, match=r"a\.out holds 2 examples .*ref\.txt \(3 lines\).*1 of the 3 expected "
                       r"examples are missing \(ids 1\).*--allow-partial"):
        main(args)
    out = tmp_path / "r.json"
    f1, rouge = main([*args, "--allow-partial", "--json-out", str(out)])
    assert (f1["n_examples"], f1["n_expected"]) == (2, 3)
    assert f1["mean_b"] == pytest.approx(1.0) and rouge["rouge_tokenizer"] == "rouge_score"
    assert json.loads(out.read_text()) == [f1, rouge]
    # an id past the end of the references is refused too
    c = gen_out(tmp_path / "c.out", {0: "x", 1: "y", 2: "z", 3: "w"})
    with pytest.raises(InputError, match="1 ids have no reference"):
        main(["--a", str(c), "--b", str(c), "--ref", str(ref), "--metrics", "f1"])
