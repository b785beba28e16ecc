"""``--kid-solver``: the closed-form sigma-solver as KID's second policy update, next to Algorithm 1's
Adam steps (``adam``, the default). The option reaches every front end (fairseq flags, the Hugging
Face processor, the argparse scripts), ``KIDCore.update_result`` dispatches on it (KL(pi || pi*) =
sigma on rows with demonstrations, the rest bit-identical, beta unchanged), ``--kid-steps 0`` stays
plain decoding, and at the paper's settings the sigma-solver moves the distribution by sigma where
the Adam steps barely move it."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch

from fairseq.sequence_generator import SequenceGenerator

from fairseq_plugins.generation.kid_generator import KIDSequenceGenerator
from informative_dialogue.kid.memory import KIDCore
from informative_dialogue.kid.options import KIDOptions, add_kid_arguments, options_from_args
from tests.test_kid_generator import SENTS, batch, dictionary, hyps, make_core, norm, tiny_translation_model, toy_tries  # noqa: F401
from tests.test_kid_options import stand_in_decode
from tests.test_kid_options_fairseq import SOURCES, build_generator, parse, run_generate, work  # noqa: F401


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, in float64."""
    p, q = log_p.double().log_softmax(-1), log_q.double().log_softmax(-1)
    return torch.where(p > float("-inf"), p.exp() * (p - q), torch.zeros_like(p)).sum(-1)


# -- the option ---------------------------------------------------------------------------------
def test_solver_option_default_choices_and_argparse() -> None:
    assert KIDOptions().solver == "adam" and KIDOptions(solver="sigma").solver == "sigma"
    with pytest.raises(ValueError, match=r"^--kid-solver / solver must be one of adam, sigma, kv, got 'newton'$"):
        KIDOptions(solver="newton")
    p = argparse.ArgumentParser()
    add_kid_arguments(p)
    assert options_from_args(p.parse_args([])).solver == "adam"
    assert options_from_args(p.parse_args(["--kid-solver", "sigma"])).solver == "sigma"
    # the ROCStories script and the benchmark take the flag from KIDOptions too
    import benchmarks.kid_decoding_speed as bench
    assert "solver" in bench.KID_FLAGS
    src = (Path(__file__).resolve().parents[1] / "examples" / "rocstories" / "generate_endings.py").read_text()
    flags = src.split("KID_FLAGS = ", 1)[1].split(")", 1)[0]
    assert all(f'"{name}"' in flags for name in ("solver", "kv_step", "kv_kl", "kv_gamma", "kv_mix"))


def test_fairseq_flag_reaches_the_generators_options(work: Path) -> None:  # noqa: F811
    trie = ["--kid", "--kid-trie", str(work / "test.trie.jsonl")]
    assert build_generator(work, *trie).kid_core.options.solver == "adam"
    gen = build_generator(work, *trie, "--kid-solver", "sigma", "--kid-sigma", "0.3")
    assert isinstance(gen, KIDSequenceGenerator)
    assert (gen.kid_core.options.solver, gen.kid_core.options.sigma) == ("sigma", 0.3)


def test_fairseq_refuses_an_invalid_solver_naming_the_flag(work: Path, capsys) -> None:  # noqa: F811
    with pytest.raises(SystemExit):
        parse(work, "--kid", "--kid-trie", str(work / "test.trie.jsonl"), "--kid-solver", "newton")
    assert "--kid-solver" in capsys.readouterr().err


def test_unused_lr_and_beta_warn_once(dictionary, norm, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    with caplog.at_level(logging.WARNING, logger="informative_dialogue.kid.memory"):
        make_core(dictionary, norm, toy_tries(norm), solver="sigma")
        make_core(dictionary, norm, toy_tries(norm), solver="adam", lr=0.5)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="informative_dialogue.kid.memory"):
        make_core(dictionary, norm, toy_tries(norm), solver="sigma", lr=0.5, beta=2.0)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "--kid-lr and --kid-beta unused" in msgs[0]


# -- KIDCore.update_result -------------------------------------------------------------------------
def test_sigma_update_spends_sigma_on_rows_with_demonstrations(dictionary, norm, monkeypatch) -> None:  # noqa: F811
    sigma = 0.05
    core = make_core(dictionary, norm, toy_tries(norm), solver="sigma", sigma=sigma, lr=0.1)
    state = core.new_memory([0, 1, 2], [["car"], ["dog"], ["weather"]], 2, torch.device("cpu"))
    torch.manual_seed(3)
    log_probs = torch.randn(len(state), len(dictionary)).log_softmax(-1)
    keep = log_probs.clone()
    beta0 = state.beta.clone()
    # the sigma path takes the demonstrations as token ids, never as a dense (N, V) mask
    monkeypatch.setattr(KIDCore, "demo_mask", lambda *a, **k: pytest.fail("dense mask built under sigma"))
    res = core.update_result(log_probs, state, [0, 1, 2])
    assert torch.equal(log_probs, keep)  # input untouched
    has_demo = torch.tensor([bool(core.demo_ids(t, m)) for t, m in zip([0, 0, 1, 1, 2, 2], state.memory)])
    assert has_demo.tolist() == [True, True, True, True, False, False]
    assert torch.equal(res.updated, has_demo)
    kl = kl_rows(log_probs, res.log_probs)
    assert torch.allclose(kl[has_demo], torch.full((4,), sigma, dtype=torch.float64), rtol=1e-4, atol=0)
    assert torch.allclose(res.kl[has_demo].double(), kl[has_demo], rtol=1e-4)
    assert torch.equal(res.log_probs[~has_demo], log_probs[~has_demo])  # bit-identical elsewhere
    assert torch.equal(res.kl[~has_demo], torch.zeros(2))
    assert torch.equal(res.beta, beta0) and torch.equal(state.beta, beta0)  # beta unchanged
    # the mass moved onto the demonstrations
    for row in (0, 2):
        ids = core.demo_ids([0, 0, 1, 1][row], state.memory[row])
        assert res.log_probs[row, ids].exp().sum() > log_probs[row, ids].exp().sum()
    # inactive rows are left alone as well
    res2 = core.update_result(log_probs, state, [0, 1, 2], active=[False, True, True, True, True, True])
    assert torch.equal(res2.log_probs[0], log_probs[0]) and not bool(res2.updated[0])
    assert torch.equal(res2.log_probs[1:4], res.log_probs[1:4])


def test_adam_path_differs_from_sigma_path(dictionary, norm) -> None:  # noqa: F811
    """The dispatch: same inputs, the two solvers give different updates (sigma's KL is sigma)."""
    out = {}
    for solver in ("adam", "sigma"):
        core = make_core(dictionary, norm, toy_tries(norm), solver=solver)
        state = core.new_memory([0, 1, 2], [["car"], ["dog"], ["weather"]], 2, torch.device("cpu"))
        torch.manual_seed(3)
        log_probs = torch.randn(len(state), len(dictionary)).log_softmax(-1)
        out[solver] = (core.update_result(log_probs, state, [0, 1, 2]), log_probs)
    (ra, lp), (rs, _) = out["adam"], out["sigma"]
    assert torch.equal(ra.updated, rs.updated)
    kl_a, kl_s = kl_rows(lp, ra.log_probs)[ra.updated], kl_rows(lp, rs.log_probs)[rs.updated]
    assert torch.allclose(kl_s, torch.full_like(kl_s, KIDOptions.sigma), rtol=1e-4)
    assert not torch.allclose(kl_a, kl_s)


def test_steps_0_is_no_update_for_the_sigma_solver(dictionary, norm) -> None:  # noqa: F811
    core = make_core(dictionary, norm, toy_tries(norm), solver="sigma", steps=0)
    assert core.disabled
    state = core.new_memory([0, 1, 2], [["car"], ["dog"], ["weather"]], 2, torch.device("cpu"))
    log_probs = torch.randn(len(state), len(dictionary)).log_softmax(-1)
    res = core.update_result(log_probs, state, [0, 1, 2])
    assert torch.equal(res.log_probs, log_probs) and not bool(res.updated.any())


# -- the fairseq generator -------------------------------------------------------------------------
def test_generator_sigma_steps_0_equals_plain_and_sigma_changes_it(dictionary, norm) -> None:  # noqa: F811
    _, model = tiny_translation_model(dictionary)
    sample = batch(dictionary, SENTS)
    ref = hyps(SequenceGenerator([model], dictionary, beam_size=3, max_len_b=8).generate([model], sample))
    k0 = KIDSequenceGenerator([model], dictionary, beam_size=3, max_len_b=8,
                              kid_core=make_core(dictionary, norm, toy_tries(norm), steps=0, solver="sigma"))
    assert hyps(k0.generate([model], sample)) == ref  # hypotheses and scores
    ks = KIDSequenceGenerator([model], dictionary, beam_size=3, max_len_b=8,
                              kid_core=make_core(dictionary, norm, toy_tries(norm), solver="sigma", sigma=0.5))
    assert hyps(ks.generate([model], sample)) != ref


def test_fairseq_generate_with_the_sigma_solver(work: Path, tmp_path: Path) -> None:  # noqa: F811
    trie = ["--beam", "2", "--kid", "--kid-trie", str(work / "test.trie.jsonl")]
    plain = run_generate(work, tmp_path / "plain", "--beam", "2")
    k0 = run_generate(work, tmp_path / "k0", *trie, "--kid-solver", "sigma", "--kid-steps", "0")
    assert k0 == plain
    sig = run_generate(work, tmp_path / "sigma", *trie, "--kid-solver", "sigma", "--kid-sigma", "0.5")
    assert len([ln for ln in sig if ln.startswith("H-")]) == len(SOURCES)


# -- the Hugging Face processor --------------------------------------------------------------------
def test_hf_processor_sigma_moves_the_distribution_by_sigma_adam_much_less(norm) -> None:  # noqa: F811
    """At K = 3, lr = 0.1 the Adam steps stay far below a KL budget of 0.25 that the sigma-solver
    spends in full. (On this 22-token random model, whose demonstrations hold a large share of the
    mass, Adam's KL is 0.02-0.04: the default sigma = 0.02 would not separate the two; on a real
    LM's vocabulary the demonstrations' mass is small and Adam's KL far below 0.02.)"""
    transformers = pytest.importorskip("transformers")
    from informative_dialogue.kid.hf_processor import KIDLogitsProcessor
    from tests.test_kid_hf import mapper, prompts
    from tests.test_kid_hf import tries as hf_tries

    torch.manual_seed(0)
    from tests.test_kid_hf import VOCAB
    cfg = transformers.GPT2Config(vocab_size=len(VOCAB), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        scores = model(prompts()).logits[:, -1, :]
    kl = {}
    sigma = 0.25
    for solver in ("adam", "sigma"):
        proc = KIDLogitsProcessor(hf_tries(norm), mapper(), solver=solver, sigma=sigma)  # K, lr: the paper's
        assert proc.options.solver == solver
        out = proc(prompts(), scores.clone())
        kl[solver] = kl_rows(scores, out)
        assert torch.equal(out[2], scores[2])  # no knowledge: untouched
    assert torch.allclose(kl["sigma"][:2], torch.full((2,), sigma, dtype=torch.float64), rtol=1e-4)
    assert bool((kl["adam"][:2] < 0.5 * sigma).all()), kl["adam"]
    assert bool((kl["adam"][:2] > 0).all())


# -- the recipe ------------------------------------------------------------------------------------
def test_recipe_passes_kid_solver_only_when_set(tmp_path: Path) -> None:
    """examples/common/generate_kid.sh with a stand-in fairseq-generate that prints its arguments."""
    decode = stand_in_decode(tmp_path, "kid little")
    plain = decode()
    assert sorted(plain) == [f"test.kid.sparse.k5.h{KIDOptions.hops}.out", "test.little.sparse.k5.out"]
    assert all("--kid-solver" not in args for args in plain.values())
    sigma = decode(KID_SOLVER="sigma")
    assert sorted(sigma) == [f"test.kid.sparse.k5.h{KIDOptions.hops}.sigma.out", "test.little.sparse.k5.sigma.out"]
    for args in sigma.values():
        assert args[args.index("--kid-solver") + 1] == "sigma"
