"""The effect-size tools of KID: the sweep's run specs and baselines
(examples/rocstories/kid_sweep.py) and the scoring against the baseline (analysis/kid_effect.py)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from analysis.kid_effect import changed_share, effect_table, kid_step_stats, main as effect_main, run_effect
from dialogue_metrics.readers import InputError

ROOT = Path(__file__).resolve().parents[1]


def _sweep_module():
    spec = importlib.util.spec_from_file_location("kid_sweep", ROOT / "examples" / "rocstories" / "kid_sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kid_sweep"] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


def test_changed_share_counts_differing_outputs() -> None:
    assert changed_share(["a b", "c ", "d"], ["a b", "c", "e"]) == pytest.approx(1 / 3)
    with pytest.raises(InputError):
        changed_share(["a"], ["a", "b"])


def test_run_effect_hand_values() -> None:
    refs = ["the cat sat down", "a dog ran"]
    know = ["cats sit on mats", "dog ran far"]
    base = ["the cat", "a dog"]
    hyp = ["the cat", "dog ran far"]
    r = run_effect(hyp, refs, know, baseline=base, resamples=500)
    # kF1 (ParlAI normalisation drops articles): ex 0 'cat' vs 'cats sit on mats' -> 0; ex 1 exact -> 1
    assert r["kf1"] == pytest.approx(50.0)
    # baseline kF1: ex 1 'dog' vs 'dog ran far': P 1, R 1/3 -> 0.5
    assert r["delta"]["kf1"]["diff"] == pytest.approx((0 + 1.0 - 0 - 0.5) / 2 * 100)
    assert r["changed"] == pytest.approx(50.0)
    low, high = r["delta"]["kf1"]["ci_low"], r["delta"]["kf1"]["ci_high"]
    assert low <= r["delta"]["kf1"]["diff"] <= high
    # F1 with the reference, ex 1: 'dog ran far' vs 'a dog ran' -> P 2/3, R 1 -> 0.8; ex 0: 'cat' vs 'cat sat down' -> 0.5
    assert r["f1"] == pytest.approx((0.5 + 0.8) / 2 * 100)
    assert "delta" not in run_effect(base, refs, know)


def test_effect_table_rows_and_cells() -> None:
    refs, know = ["x y"], ["x"]
    res = {"plain": run_effect(["x"], refs, know), "kid": run_effect(["y"], refs, know, baseline=["x"], resamples=50)}
    table = effect_table(res, {"kid": {"kid": {"kl_mean_updated": 0.125, "argmax_changed_share": 0.5}}})
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| plain | 100.00 |")
    assert "| 100.0 | 0.1250 | 50.00 |" in lines[3]
    assert lines[3].count("|") == lines[0].count("|")


def test_effect_cli_reads_a_sweep(tmp_path: Path) -> None:
    (tmp_path / "plain.hyp").write_text("a dog\nthe cat\n")
    (tmp_path / "kid.hyp").write_text("a dog ran\nthe cat\n")
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": {
        "plain": {"hyp": "plain.hyp", "baseline": None},
        "kid": {"hyp": "kid.hyp", "baseline": "plain", "stats": {"kid": {"kl_mean_updated": 0.5}}}}}))
    (tmp_path / "ref").write_text("a dog ran\nthe cat sat\n")
    (tmp_path / "know").write_text("dogs ran\ncats\n")
    assert effect_main(["--sweep", str(tmp_path / "sweep.json"), "--ref", str(tmp_path / "ref"), "--knowledge",
                        str(tmp_path / "know"), "--json", str(tmp_path / "e.json"), "--resamples", "50"]) == 0
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["kid"]["changed"] == pytest.approx(50.0) and "changed" not in out["plain"]
    (tmp_path / "kid.hyp").write_text("only one line\n")
    with pytest.raises(ValueError, match="kid.hyp: 1 lines, expected 2"):
        effect_main(["--sweep", str(tmp_path / "sweep.json"), "--ref", str(tmp_path / "ref"), "--knowledge",
                     str(tmp_path / "know")])


def test_kid_step_stats_from_debug_lines() -> None:
    lines = ["2026-12-07 | DEBUG | informative_dialogue.kid.memory | KID step: 2/4 rows updated, mean KL 0.0300, mean beta 1",
             "H-0\t-1.0\tx",
             "... | KID step: 0/4 rows updated, mean KL 0.0000, mean beta 1",
             "... | KID step: 6/8 rows updated, mean KL 0.0100, mean beta 1"]
    kid = kid_step_stats(lines)["kid"]
    assert (kid["rows"], kid["updated"]) == (16, 8) and kid["updated_share"] == pytest.approx(0.5)
    assert kid["kl_mean_updated"] == pytest.approx((2 * 0.03 + 6 * 0.01) / 8)   # weighted by rows updated
    kv = kid_step_stats(["x | KID kv step: 3/4 rows updated, mean demonstration mass 0.1000"])["kid"]
    assert kv == {"rows": 4, "updated": 3, "updated_share": 0.75}   # an older log: no KL
    kv = kid_step_stats(["x | KID kv step: 3/4 rows updated, mean KL 0.0400, mean demonstration mass 0.1000",
                         "x | KID kv step: 1/4 rows updated, mean KL 0.0800, mean demonstration mass 0.1000"])["kid"]
    assert kv["kl_mean_updated"] == pytest.approx((3 * 0.04 + 0.08) / 4)
    assert kid_step_stats(["H-0\t-1.0\tx"]) == {}


def test_effect_cli_reads_fairseq_outputs(tmp_path: Path) -> None:
    """--gen-out: fairseq-generate outputs matched by id (any order in the file), word pieces
    joined, the knowledge separator dropped, the first run the baseline, KID stats from debug lines."""
    (tmp_path / "plain.out").write_text("H-1\t-1.0\tthe cat\nH-0\t-1.0\ta dog\n")
    (tmp_path / "kid.out").write_text("H-0\t-1.0\ta dog ran\nH-1\t-1.0\tthe cat\n")
    (tmp_path / "kid.out.log").write_text("x | KID step: 1/2 rows updated, mean KL 0.2000, mean beta 1\n")
    (tmp_path / "ref").write_text("a dog ran\nthe cat sat\n")
    (tmp_path / "know").write_text("do ##gs ran __knowledge__\ncats\n")
    args = ["--ref", str(tmp_path / "ref"), "--knowledge", str(tmp_path / "know"), "--resamples", "50",
            "--wordpiece-detok", "--knowledge-drop-token", "__knowledge__", "--json", str(tmp_path / "e.json"),
            "--markdown", str(tmp_path / "e.md")]
    assert effect_main(["--gen-out", f"plain={tmp_path / 'plain.out'}", "--gen-out", f"kid={tmp_path / 'kid.out'}",
                        *args]) == 0
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["kid"]["changed"] == pytest.approx(50.0) and "changed" not in out["plain"]
    # kF1 of "a dog ran" with "dogs ran": P 1/2, R 1/2 -> 0.5 on example 0 (0 on example 1): mean 25
    assert out["kid"]["kf1"] == pytest.approx(25.0)
    assert out["kid"]["delta"]["kf1"]["diff"] == pytest.approx(25.0)
    kid_row = next(ln for ln in (tmp_path / "e.md").read_text().splitlines() if ln.startswith("| kid |"))
    assert kid_row.split(" | ")[-2] == "0.2000"   # mean KL from the log next to the output
    (tmp_path / "short.out").write_text("H-0\t-1.0\ta dog\n")
    with pytest.raises(InputError, match="first missing id 1"):
        effect_main(["--gen-out", f"plain={tmp_path / 'plain.out'}", "--gen-out", f"s={tmp_path / 'short.out'}", *args])
    with pytest.raises(InputError, match="either --sweep or --gen-out"):
        effect_main(args)


def test_sweep_runs_parse_and_find_their_plain_baseline() -> None:
    sweep = _sweep_module()
    runs = [sweep.parse_run(s) for s in (
        "plain=sample", "plain_rel=sample,top_k=20,top_p=0.92", "adam=kid_sample",
        "sig=kid_sample,solver=sigma,sigma=0.5", "kv=kid_sample,solver=adam,top_p=0.92,top_k=20")]
    assert dict(runs[3].kid) == {"solver": "sigma", "sigma": 0.5}
    assert dict(runs[1].decode) == {"top_k": 20, "top_p": 0.92}
    assert sweep.baselines(runs) == {"plain": None, "plain_rel": None, "adam": "plain", "sig": "plain",
                                     "kv": "plain_rel"}
    with pytest.raises(ValueError, match=r"no plain run \(without prompt_knowledge\) with decoding 'greedy'"):
        sweep.baselines(runs + [sweep.parse_run("g=kid_greedy")])
    # the knowledge-in-prompt alternative is compared with plain decoding, never a baseline itself
    in_prompt = sweep.parse_run("in_prompt=sample,prompt_knowledge=true")
    assert in_prompt.prompt_knowledge and not runs[0].prompt_knowledge
    assert sweep.baselines(runs + [in_prompt])["in_prompt"] == "plain"
    with pytest.raises(ValueError, match="no plain run"):
        sweep.baselines([in_prompt, sweep.parse_run("k=kid_sample")])
    with pytest.raises(ValueError, match="use a plain method"):
        sweep.parse_run("x=kid_sample,prompt_knowledge=true")
    with pytest.raises(ValueError, match="true or false"):
        sweep.parse_run("x=sample,prompt_knowledge=2")
    assert sweep.knowledge_prompts(["s1", "s2"], ["k1", " "], "chat") == ["Knowledge: k1\n\ns1", "s2"]
    assert sweep.knowledge_prompts(["s1"], ["k1"], "continuation") == ["k1\n\ns1"]
    with pytest.raises(ValueError, match="1 lines for 2 examples"):
        sweep.knowledge_prompts(["s1", "s2"], ["k1"], "chat")
    # a record written before a setting existed resumes when that setting is at its default
    import dataclasses
    settings = {"method": "sample", "decode": dataclasses.asdict(sweep.DecodeConfig())}
    old = json.loads(json.dumps(settings))
    del old["decode"]["no_repeat_ngram_size"], old["decode"]["kid"]["kv_mix"]
    assert sweep.same_settings(old, settings)
    changed = {"method": "sample", "decode": dataclasses.asdict(sweep.DecodeConfig(no_repeat_ngram_size=2))}
    assert not sweep.same_settings(old, changed) and not sweep.same_settings(None, settings)
    # the sampling seed is part of a run's settings; records from before take the legacy values
    seeded = dict(settings, seed=1, seed_scope="batch", batch_size=10)
    legacy = {"seed": 1, "seed_scope": "run", "batch_size": 10}
    assert sweep.same_settings(seeded, seeded, legacy)
    assert not sweep.same_settings(old, seeded, legacy)  # old runs shared one stream: not the same draws
    assert sweep.same_settings(old, dict(seeded, seed_scope="run"), legacy)
    assert not sweep.same_settings(dict(seeded, seed=2), seeded, legacy)
    with pytest.raises(ValueError, match="names repeat"):
        sweep.baselines(runs + [sweep.parse_run("adam=kid_sample")])
    for bad, message in (("x", "expected NAME=METHOD"), ("x=kid_sample,bogus=1", "unknown key 'bogus'"),
                         ("x=sample,sigma=1", "KID option 'sigma' on a plain method"),
                         ("x=kid_sample,top_k", "is not KEY=VALUE")):
        with pytest.raises(ValueError, match=message):
            sweep.parse_run(bad)
