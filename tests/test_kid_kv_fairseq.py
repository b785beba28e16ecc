"""``--kid-solver kv`` inside fairseq's SequenceGenerator: the KID release's key/value update
through a second, perturbed incremental state (fairseq_plugins/generation/kv_state.py).

In-process on the tiny random transformers of tests/test_kid_generator.py: zero step size and
K = 0 are plain decoding; each step's output is the geometric mixture of the kept cache's
distribution and the plain one, the kept cache is cache + Δ plus the newest token, fed once; a
batch decodes as its examples alone (beam reordering and pruning of the perturbed state); the
demonstrations' mass rises; the model is untouched. Then the flags through fairseq-generate
and the recipe."""
from __future__ import annotations

import logging

import argparse
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from fairseq.models.transformer_lm import TransformerLanguageModel, base_lm_architecture
from fairseq.sequence_generator import SequenceGenerator

import fairseq_plugins.generation.kv_state as kv_state
from fairseq_plugins.generation.kid_generator import KIDEnsembleModel, KIDSequenceGenerator
from fairseq_plugins.tasks.kid_language_modeling import KIDLanguageModelingConfig, KIDLanguageModelingTask
from informative_dialogue.kid.hf_processor import KIDLogitsProcessor
from informative_dialogue.kid.kv_update import demo_log_mass, geometric_mix
from informative_dialogue.kid.options import KIDOptions
from tests.test_kid_generator import (SENTS, batch, dictionary, hyps, make_core, norm,  # noqa: F401
                                      tiny_translation_model, toy_tries)
from tests.test_kid_options import stand_in_decode
from tests.test_kid_options_fairseq import run_generate, work  # noqa: F401

MAX_LEN = 6
BIG_STEP = dict(kv_step=2.0, hops=2)  # large enough to change outputs of the tiny model


def same_hyps(a, b, tol: float = 1e-5) -> bool:
    """Same hypotheses (tokens, in order) and scores within ``tol``."""
    if [[h["tokens"].tolist() for h in s] for s in a] != [[h["tokens"].tolist() for h in s] for s in b]:
        return False
    return all(abs(float(x["score"]) - float(y["score"])) <= tol for s, t in zip(a, b) for x, y in zip(s, t))


def self_attn_cache(model, state: dict, layer: int) -> torch.Tensor:
    """(N, heads, T, head_dim) cached self-attention keys of ``layer`` in a fairseq incremental state."""
    return model.decoder.layers[layer].self_attn._get_input_buffer(state)["prev_key"]


class Recording(KIDEnsembleModel):
    """Records every step of a kv decode (``self.log``) and forces EOS for the example of trie 0
    from step 3 on (``self.force_eos``), so that it finishes first and is pruned from the batch."""

    log: List[Dict] = []
    force_eos = True
    eos = 2

    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature=1.0):
        kv = self.kid_batch.kv
        before = [(k.clone(), v.clone()) for k, v in kv.past()] if kv.cache_len() else None
        n_calls = len(CALLS)
        lprobs, attn = super().forward_decoder(tokens, encoder_outs, incremental_states, temperature)
        model = self.single_model
        entry = {"tokens": tokens.clone(), "out": lprobs.clone(), "before": before, "after": kv.past(),
                 "plain_T": [self_attn_cache(model, incremental_states[0], i).shape
                             for i in range(len(model.decoder.layers))],
                 "sentence": [self.kid_batch.trie_indices[s] for s in self.kid_batch.memory.sentence],
                 "call": CALLS[n_calls] if len(CALLS) > n_calls else None}
        self.log.append(entry)
        if self.force_eos and tokens.size(1) >= 3:
            lprobs = lprobs.clone()
            lprobs[torch.tensor([s == 0 for s in entry["sentence"]]), self.eos] = 0.0
        return lprobs, attn


CALLS: List[Dict] = []  # kv_perturbation's inputs and result, one per call (filled by the fixture's wrapper)


def recorded_decode(model, d, sample, core, beam: int = 3, force_eos: bool = True):
    """A kv decode through :class:`Recording`: (output, per-step log)."""
    gen = KIDSequenceGenerator([model], d, beam_size=beam, max_len_b=MAX_LEN, kid_core=core)
    gen.model.__class__ = Recording
    gen.model.log = []
    gen.model.force_eos = force_eos
    gen.model.eos = d.eos()
    out = gen.generate([model], sample)
    return out, gen.model.log


@pytest.fixture(scope="module")
def recorder():
    """Wraps kv_state.kv_perturbation to record its inputs and result in CALLS."""
    original = kv_state.kv_perturbation

    def wrapped(step_fn, past, plain_log_probs, demo_index, demo_valid, **kw):
        upd = original(step_fn, past, plain_log_probs, demo_index, demo_valid, **kw)
        CALLS.append({"plain": plain_log_probs.clone(), "index": demo_index, "valid": demo_valid, "upd": upd,
                      "past": [(k.clone(), v.clone()) for k, v in past]})
        return upd

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kv_state, "kv_perturbation", wrapped)
        yield CALLS
    CALLS.clear()


@pytest.fixture(scope="module")
def setup(dictionary, norm):  # noqa: F811
    _, model = tiny_translation_model(dictionary, seed=5)
    return model, batch(dictionary, SENTS)


@pytest.fixture(scope="module")
def plain_beam(dictionary, setup):  # noqa: F811
    model, sample = setup
    return SequenceGenerator([model], dictionary, beam_size=3, max_len_b=MAX_LEN).generate([model], sample)


@pytest.fixture(scope="module")
def big_run(dictionary, norm, setup, recorder):  # noqa: F811
    """Beam 3, batch of 3, large step, EOS forced for example 0 from step 3 (pruned)."""
    model, sample = setup
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    core = make_core(dictionary, norm, toy_tries(norm), solver="kv", **BIG_STEP)
    recorder.clear()
    out, log = recorded_decode(model, dictionary, sample, core)
    return out, log, snapshot, core


# -- plain decoding when the update is off ---------------------------------------------------------
def test_zero_step_and_zero_steps_equal_plain(dictionary, norm, setup, plain_beam) -> None:  # noqa: F811
    model, sample = setup
    kv0 = make_core(dictionary, norm, toy_tries(norm), solver="kv", kv_step=0.0, hops=2)
    out = KIDSequenceGenerator([model], dictionary, beam_size=3, max_len_b=MAX_LEN, kid_core=kv0).generate([model], sample)
    assert same_hyps(out, plain_beam)
    # greedy with a temperature: the perturbed steps divide by it as fairseq's EnsembleModel does
    plain = SequenceGenerator([model], dictionary, beam_size=1, max_len_b=MAX_LEN, temperature=0.7)
    kid = KIDSequenceGenerator([model], dictionary, beam_size=1, max_len_b=MAX_LEN, temperature=0.7, kid_core=kv0)
    assert same_hyps(kid.generate([model], sample), plain.generate([model], sample))
    k0 = make_core(dictionary, norm, toy_tries(norm), solver="kv", steps=0, **BIG_STEP)
    out = KIDSequenceGenerator([model], dictionary, beam_size=3, max_len_b=MAX_LEN, kid_core=k0).generate([model], sample)
    assert hyps(out) == hyps(plain_beam)


# -- one recorded decode with a large step ---------------------------------------------------------
def test_each_token_enters_each_cache_once(big_run) -> None:
    _, log, _, _ = big_run
    rows = set()
    for entry in log:
        n, t = entry["tokens"].shape
        rows.add(n)
        for shape, (key, value) in zip(entry["plain_T"], entry["after"]):
            assert shape == key.shape == value.shape and shape[0] == n and shape[2] == t, (shape, key.shape, t)
    assert {9, 6} <= rows  # 3 sentences x 3 beams, then example 0 pruned


def test_kept_cache_is_cache_plus_delta_and_output_the_mixture(big_run) -> None:
    _, log, _, core = big_run
    assert log[0]["call"] is None and log[0]["before"] is None  # step 0: nothing cached, nothing perturbed
    checked = 0
    for entry in log[1:]:
        call = entry["call"]
        assert call is not None
        upd, before, after = call["upd"], entry["before"], entry["after"]
        t = before[0][0].size(2)
        for (k0, v0), (dk, dv), (k1, v1) in zip(before, upd.deltas, after):
            assert torch.equal(k1[:, :, :t], k0 + dk) and torch.equal(v1[:, :, :t], v0 + dv)
        assert torch.equal(call["past"][0][0], before[0][0])  # the update saw the kept cache
        if bool(upd.updated.any()):
            expected = geometric_mix(upd.log_probs, call["plain"], core.options.kv_mix, upd.updated)
            assert torch.equal(entry["out"], expected)
            assert bool((upd.deltas[0][0][upd.updated] != 0).any())
            checked += 1
        else:
            assert torch.equal(entry["out"], call["plain"])
        no_demo = ~upd.updated
        assert torch.equal(entry["out"][no_demo], call["plain"][no_demo])
        for dk, dv in upd.deltas:
            assert not dk[no_demo].any() and not dv[no_demo].any()
    assert checked >= 3


def test_debug_line_reports_the_kl_of_the_mixture(dictionary, norm, setup, recorder, caplog) -> None:  # noqa: F811
    """The KID kv step debug line (read by kid-effect): rows updated and the mean KL(p || mixture)
    over them, the KL recomputed here from the step's plain and returned distributions."""
    model, sample = setup
    core = make_core(dictionary, norm, toy_tries(norm), solver="kv", **BIG_STEP)
    recorder.clear()
    with caplog.at_level(logging.DEBUG, logger="fairseq_plugins.generation.kv_state"):
        _, log = recorded_decode(model, dictionary, sample, core)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("KID kv step:")]
    entries = [e for e in log[1:] if e["call"] is not None and bool(e["call"]["upd"].updated.any())]
    assert len(lines) == len(entries) >= 3
    for line, entry in zip(lines, entries):
        up, plain = entry["call"]["upd"].updated, entry["call"]["plain"]
        kl = (plain[up].exp() * (plain[up] - entry["out"][up])).sum(-1).mean()
        assert line.startswith(f"KID kv step: {int(up.sum())}/{up.numel()} rows updated, mean KL {float(kl):.4f},")


def test_the_update_raises_the_demonstrations_mass(big_run, plain_beam) -> None:
    out, log, _, _ = big_run
    gains = []
    for entry in log[1:]:
        call = entry["call"]
        up = call["upd"].updated
        if bool(up.any()):
            index, valid = call["index"][up], call["valid"][up]
            after = demo_log_mass(entry["out"][up], index, valid).exp()
            plain = demo_log_mass(call["plain"][up], index, valid).exp()
            gains.append(after - plain)
    gains = torch.cat(gains)
    assert gains.numel() > 10 and float(gains.mean()) > 0.1 and float((gains > 0).float().mean()) > 0.8, gains
    # the example whose trie is empty is never updated: it decodes as plain decoding (no EOS forced there)
    assert hyps(out)[2] == hyps(plain_beam)[2]
    assert hyps(out)[1] != hyps(plain_beam)[1]  # the dog example changed


def test_batch_decodes_as_each_example_alone(dictionary, setup, big_run) -> None:  # noqa: F811
    """Beam reordering and pruning of the perturbed state: the batch of 3 against 3 batches of one
    (ids kept, so each uses its own trie; example 0 has its EOS forced in both)."""
    model, sample = setup
    out, _, _, core = big_run
    src, lengths = sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"]
    for i in range(3):
        row = src[i, src.size(1) - int(lengths[i]):].unsqueeze(0)
        alone = {"id": torch.tensor([i]), "net_input": {"src_tokens": row, "src_lengths": lengths[i:i + 1]}}
        single, _ = recorded_decode(model, dictionary, alone, core)
        assert same_hyps(single, out[i:i + 1]), (i, hyps(single), hyps(out[i:i + 1]))


def test_model_untouched(setup, big_run) -> None:
    model, _ = setup
    _, _, snapshot, _ = big_run
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


# -- refusals ---------------------------------------------------------------------------------------
def test_ensembles_logits_processors_and_core_update_refuse_kv(dictionary, norm, setup) -> None:  # noqa: F811
    model, _ = setup
    core = make_core(dictionary, norm, toy_tries(norm), solver="kv")
    with pytest.raises(ValueError, match="one model, got an ensemble of 2"):
        KIDSequenceGenerator([model, model], dictionary, beam_size=2, kid_core=core)
    mem = core.new_memory([0], [["car"]], 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs the model.*KIDSequenceGenerator.*kid_kv_generate"):
        core.update(torch.zeros(1, len(dictionary)).log_softmax(-1), mem, [0])
    with pytest.raises(ValueError, match="kid_kv_generate"):
        KIDLogitsProcessor(toy_tries(norm), core.mapper, solver="kv")


# -- a decoder-only LM with a prompt (no encoder; the prompt is a forced prefix) --------------------
def test_language_model_prompt_steps_keep_the_plain_distribution(dictionary, tmp_path: Path) -> None:  # noqa: F811
    trie = tmp_path / "shared.jsonl"
    trie.write_text('{"id": 0, "entities": null, "trie": {"dog": ["loyal pet", "bark"], "bark": ["noise"]}}\n')
    cfg = KIDLanguageModelingConfig(kid=True, kid_trie=str(trie), kid_shared_trie=True, kid_solver="kv",
                                    kid_kv_step=2.0)
    task = KIDLanguageModelingTask(cfg, dictionary, dictionary)
    a = argparse.Namespace(decoder_layers=2, decoder_embed_dim=16, decoder_ffn_embed_dim=32, decoder_attention_heads=2)
    base_lm_architecture(a)
    torch.manual_seed(0)
    lm = TransformerLanguageModel.build_model(a, task).eval()
    gen = task.build_generator([lm], argparse.Namespace(beam=2, max_len_b=5, sampling=False))
    assert isinstance(gen, KIDSequenceGenerator) and gen.kid_core.options.kv_step == 2.0
    prompt = torch.tensor([[dictionary.index(w) for w in "the dog is".split()]])
    sample = {"id": torch.tensor([0]), "net_input": {"src_tokens": prompt, "src_lengths": torch.tensor([3])}}
    out = task.inference_step(gen, [lm], sample)
    plain = task.inference_step(SequenceGenerator([lm], dictionary, beam_size=2, max_len_b=5), [lm], sample)
    for kid_h, plain_h in zip(out[0], plain[0]):
        assert kid_h["tokens"][:3].tolist() == prompt[0].tolist()
        assert torch.equal(kid_h["positional_scores"][:3], plain_h["positional_scores"][:3])  # forced: plain
    assert hyps(out) != hyps(plain)  # KID acts after the prompt


# -- flags: fairseq-generate and the recipe --------------------------------------------------------
def test_fairseq_generate_kv_zero_step_is_plain(work: Path, tmp_path: Path) -> None:  # noqa: F811
    kid = ["--kid", "--kid-trie", str(work / "test.trie.jsonl"), "--kid-solver", "kv"]
    plain = run_generate(work, tmp_path / "plain", "--beam", "2")
    zero = run_generate(work, tmp_path / "zero", "--beam", "2", *kid, "--kid-kv-step", "0")
    strip = lambda lines: [ln.split("\t")[0] + ln.split("\t")[-1] for ln in lines if ln[:2] in ("H-", "D-")]  # noqa: E731
    assert strip(zero) == strip(plain) and len(strip(plain)) == 12  # same ids and texts (scores: rounding)
    big = run_generate(work, tmp_path / "big", "--beam", "2", *kid, "--kid-kv-step", "5")
    assert strip(big) != strip(plain)


def test_recipe_passes_kv_flags_only_when_set(tmp_path: Path) -> None:
    decode = stand_in_decode(tmp_path, "kid")
    ((name, args),) = decode().items()
    assert not any(a.startswith("--kid-kv") for a in args)
    ((name, args),) = decode(KID_SOLVER="kv", KID_KV_STEP="0.03", KID_KV_KL="0.02", KID_KV_GAMMA="1", KID_KV_MIX="0.9").items()
    assert name == f"test.kid.sparse.k5.h{KIDOptions.hops}.kv.out"
    pairs = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--kid-")}
    assert {k: pairs[k] for k in ("--kid-solver", "--kid-kv-step", "--kid-kv-kl", "--kid-kv-gamma", "--kid-kv-mix")} == {
        "--kid-solver": "kv", "--kid-kv-step": "0.03", "--kid-kv-kl": "0.02", "--kid-kv-gamma": "1", "--kid-kv-mix": "0.9"}
