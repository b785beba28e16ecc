"""KID's key/value mode for Hugging Face causal LMs end to end: ``kid_kv_generate``
(informative_dialogue/kid/hf_kv_decoding.py) on tiny random Llama and GPT-2 models built offline.

Plain decoding when off (``steps`` 0, ``kv_step`` 0, ``kv_mix`` 0, rows without knowledge), the
same tokens as ``model.generate`` (greedy and seeded sampling), left padding (a batch decodes
as each prompt alone), a reference loop written from the module doc, the effect when on, the
entity memory following the generated words, finished rows, cache lengths, the model left
untouched, and bad input. Llama (rotary positions: only relative positions matter) and GPT-2
(learned absolute positions: a wrong ``position_ids`` shows) both run the padding-sensitive
tests."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import pytest
import torch

from informative_dialogue.kid.kv_update import demo_log_mass, kl_divergence, kv_perturbation
from informative_dialogue.kid.memory import KIDCore
from informative_dialogue.kid.options import KIDOptions
from informative_dialogue.kid.token_mapping import TokenMapper
from informative_dialogue.kid.trie import KnowledgeTrie, WordNormalizer
from informative_dialogue.kid.trie_files import InMemoryTries, TrieExample

transformers = pytest.importorskip("transformers")
from informative_dialogue.kid.hf_kv_decoding import kid_kv_generate  # noqa: E402

G = "\u0120"
WORDS = ("the a car engine road trip piston fuel gas dog loyal pet bark is good i like my weather sun rain cold "
         "warm house door window tree green blue red fast slow big small we you they went saw had was and but "
         "very old new day night city river music song play cat bird fly sky").split()
VOCAB = ["<|endoftext|>"] + [G + w for w in WORDS] + ["s", "oline", ".", ","]  # 62 symbols, id 0 = EOS
ID = {s: i for i, s in enumerate(VOCAB)}
PROMPTS = ["i like my car", "the dog is very good", "we like the weather and the sun"]  # 4, 5, 7 tokens
PAD = 0
MAX_NEW = 8
STRONG = dict(steps=3, kv_step=1.0)  # a large step: the update visibly acts on these tiny models


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: no thread hand-offs for these tiny tensors (on a busy 2-core machine they cost
    the file 100 s instead of 25 s), and the same sums in the same order everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def norm() -> WordNormalizer:
    return WordNormalizer()


def tiny(family: str):
    """A 2-layer random model; weights drawn with std 0.3 (not the default 0.02, under which every
    next-token distribution is near uniform and greedy choices are near ties), so the plain
    distributions have ~2.6-3.4 nats of entropy, as a small trained model's."""
    if family == "llama":
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       initializer_range=0.3, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        return transformers.LlamaForCausalLM(cfg).eval()
    torch.manual_seed(2)
    cfg = transformers.GPT2Config(vocab_size=len(VOCAB), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                  initializer_range=0.3, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def models() -> Dict[str, object]:
    return {family: tiny(family) for family in ("llama", "gpt2")}


@pytest.fixture(params=["llama", "gpt2"])
def model(request, models):
    return models[request.param]


@pytest.fixture(scope="module")
def llama(models):
    return models["llama"]


def mapper() -> TokenMapper:
    return TokenMapper(VOCAB, special_ids=[0])


def tries(norm: WordNormalizer) -> List[TrieExample]:
    """Row 0: a car trie (initial entity ``car``); row 1: a dog trie (entities from the prompt);
    row 2: no knowledge at all."""
    return [TrieExample(KnowledgeTrie({"car": ["engine", "road trip"], "engin": ["the piston", "fuel"],
                                       "fuel": ["gasoline", "car"]}, normalizer=norm), ["car"]),
            TrieExample(KnowledgeTrie({"dog": ["loyal pet", "bark"], "pet": ["cat", "bird"]}, normalizer=norm), None),
            TrieExample(KnowledgeTrie({}, normalizer=norm), ["weather"])]


def core(norm: WordNormalizer, **kw) -> KIDCore:
    return KIDCore(InMemoryTries(tries(norm)), mapper(), KIDOptions(solver="kv", entity="content", **kw))


def encode(texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, L) left-padded ids and attention mask, as a tokenizer with padding_side="left"."""
    rows = [[ID[G + w] for w in t.split()] for t in texts]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r)
        mask[i, length - len(r):] = 1
    return ids, mask


def kid(model, kid_core: KIDCore, texts: Sequence[str] = PROMPTS, **kw) -> torch.Tensor:
    ids, mask = encode(texts)
    kw = dict(dict(max_new_tokens=MAX_NEW, eos_token_id=0, pad_token_id=PAD), **kw)
    return kid_kv_generate(model, ids, mask, kid_core, **kw)


def hf(model, texts: Sequence[str] = PROMPTS, **kw) -> torch.Tensor:
    ids, mask = encode(texts)
    kw = dict(dict(max_new_tokens=MAX_NEW, eos_token_id=0, pad_token_id=PAD, do_sample=False), **kw)
    return model.generate(ids, attention_mask=mask, **kw)


def new_tokens(out: torch.Tensor, texts: Sequence[str]) -> List[List[int]]:
    """Each row's new tokens, up to and including its first EOS (padding after it dropped)."""
    length = encode(texts)[0].size(1)
    rows = []
    for row in out[:, length:].tolist():
        rows.append(row[:row.index(0) + 1] if 0 in row else row)
    return rows


# ------------------------------------------------------------------------------ plain when off
def test_steps_0_equals_model_generate_greedy(model, norm: WordNormalizer) -> None:
    """Left padding, an EOS that ends one row early (its later tokens: the pad id), the
    min-new-tokens and no-repeat-n-gram processors: the tokens of ``model.generate``."""
    off = core(norm, steps=0)
    stats: Dict[str, float] = {}
    assert torch.equal(kid(model, off, stats=stats), hf(model))
    assert "steps" not in stats and stats["cache_length_perturbed"] == 0  # no perturbed cache kept at all
    first = hf(model, eos_token_id=None)[0, encode(PROMPTS)[0].size(1) + 2]  # row 0's third token ends it
    kw = dict(eos_token_id=int(first), pad_token_id=ID[G + "sky"])
    ended = hf(model, **kw)
    assert (ended[0, -1] == ID[G + "sky"]) and torch.equal(kid(model, off, **kw), ended)
    for kw in (dict(no_repeat_ngram_size=2, min_new_tokens=3), dict(eos_token_id=None)):
        assert torch.equal(kid(model, off, **kw), hf(model, **kw))
    one = PROMPTS[2:]  # no padding at all: no mask is passed, as generate does
    assert torch.equal(kid(model, off, one), hf(model, one))


def test_zero_step_size_and_zero_mix_decode_as_plain_with_the_update_running(model, norm: WordNormalizer) -> None:
    """``kv_step`` 0: the perturbed cache (the prompt without its last position, then each
    token fed once) gives the plain distribution again, so KL(p || mixture) is ~0 on every
    updated row; ``kv_mix`` 0 with a strong update: the mixture is the plain distribution."""
    plain = kid(model, core(norm, steps=0))
    for kw in (dict(steps=3, kv_step=0.0), dict(STRONG, kv_mix=0.0)):
        stats: Dict[str, float] = {}
        assert torch.equal(kid(model, core(norm, **kw), stats=stats), plain), kw
        assert stats["updated"] > 0 and stats["argmax_changed"] == 0
        assert stats["kl"] < 1e-6 * stats["updated"], (kw, stats["kl"])
    stats = {}
    kid(model, core(norm, steps=3, kv_step=0.0), stats=stats)
    assert abs(stats["demo_mass_perturbed"] - stats["demo_mass"]) < 1e-5


def test_rows_without_knowledge_decode_as_plain(model, norm: WordNormalizer) -> None:
    """Row 2's trie is empty: with a strong update on rows 0 and 1 it keeps the plain tokens;
    tries without any knowledge (allowed explicitly) give plain decoding for every row."""
    plain = new_tokens(kid(model, core(norm, steps=0)), PROMPTS)
    out = new_tokens(kid(model, core(norm, **STRONG)), PROMPTS)
    assert out[2] == plain[2] and out[:2] != plain[:2]
    empty = KIDCore(InMemoryTries([KnowledgeTrie({}, normalizer=norm)] * 3), mapper(),
                    KIDOptions(solver="kv", allow_empty_tries=True, **STRONG))
    stats: Dict[str, float] = {}
    assert new_tokens(kid(model, empty, stats=stats), PROMPTS) == plain
    assert stats.get("updated", 0) == 0


# ------------------------------------------------------------------------------ batching
def test_batch_with_left_padding_equals_each_prompt_alone(model, norm: WordNormalizer) -> None:
    """KID on (rows 0 and 1 updated): the batch of 3 prompts of 4, 5 and 7 tokens, left-padded,
    decodes each row as the prompt alone (no padding, its own trie); and in another row order."""
    kid_core = core(norm, **STRONG)
    batch = kid(model, kid_core)
    alone = [new_tokens(kid(model, kid_core, [t], trie_indices=[i]), [t])[0] for i, t in enumerate(PROMPTS)]
    assert new_tokens(batch, PROMPTS) == alone
    order = [2, 0, 1]
    swapped = kid(model, kid_core, [PROMPTS[i] for i in order], trie_indices=order)
    assert new_tokens(swapped, [PROMPTS[i] for i in order]) == [alone[i] for i in order]
    assert new_tokens(batch, PROMPTS)[:2] != new_tokens(kid(model, core(norm, steps=0)), PROMPTS)[:2]


def test_one_token_prompt_and_no_new_tokens(model, norm: WordNormalizer) -> None:
    """A one-token prompt (its perturbed cache starts empty) beside a longer one decodes as
    alone; ``max_new_tokens`` 0 returns the prompts."""
    kid_core = core(norm, **STRONG)
    texts = ["car", PROMPTS[1]]
    stats: Dict[str, float] = {}
    both = new_tokens(kid(model, kid_core, texts, trie_indices=[0, 1], stats=stats), texts)
    assert both[0] == new_tokens(kid(model, kid_core, texts[:1], trie_indices=[0]), texts[:1])[0]
    assert stats["updated"] > 0
    ids, _ = encode(PROMPTS)
    assert torch.equal(kid(model, kid_core, max_new_tokens=0), ids)


# ------------------------------------------------------------------------------ sampling
def test_sampling_reproducible_and_steps_0_equals_generate(llama, norm: WordNormalizer) -> None:
    """``generate`` draws with ``torch.multinomial`` on torch's global generator, once per step
    over all rows, after the same processors (min-new-tokens, no-repeat-n-gram, temperature,
    top-k, top-p); ``kid_kv_generate`` does the same on its ``generator`` (global by default)
    and the model forward draws nothing in eval mode, so with ``steps`` 0 the draws coincide
    exactly, whether the seed is set globally or on a ``torch.Generator``. The scores differ
    only by the log-softmax ``kid_kv_generate`` applies first (a shift per row), which neither
    the filters nor the softmax see."""
    kw = dict(do_sample=True, top_k=20, top_p=0.92, temperature=0.8, no_repeat_ngram_size=2, max_new_tokens=12)
    off, on = core(norm, steps=0), core(norm, **STRONG)
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        want = hf(llama, **kw)
        torch.manual_seed(seed)
        assert torch.equal(kid(llama, off, **kw), want)
        assert torch.equal(kid(llama, off, generator=torch.Generator().manual_seed(seed), **kw), want)
        # kv_step 0 draws as steps 0
        zero = core(norm, steps=3, kv_step=0.0)
        assert torch.equal(kid(llama, zero, generator=torch.Generator().manual_seed(seed), **kw), want)
    draws = [kid(llama, on, generator=torch.Generator().manual_seed(7), **kw) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(kid(llama, on, generator=torch.Generator().manual_seed(8), **kw), draws[0])
    torch.manual_seed(7)
    assert not torch.equal(hf(llama, **kw), draws[0])  # the update changes what is drawn


# ------------------------------------------------------------------------------ the mode acts
def reference(model, kid_core: KIDCore, text: str, max_new_tokens: int) -> Tuple[List[int], Dict[str, float]]:
    """The module doc's loop for one prompt (no padding, greedy), written from the doc with
    ``DynamicCache`` and :func:`kv_perturbation` directly: the new tokens, and over the updated
    steps their count and the sums of KL(p || mixture), KL(mixture || p) and the demonstrations'
    mass under p and under the mixture."""
    ids = encode([text])[0]
    cfg = model.config.get_text_config(decoder=True)
    o = kid_core.options
    sums = dict.fromkeys(("updated", "kl", "kl_reverse", "demo_mass", "demo_mass_kid"), 0.0)

    def logp(tokens, cache) -> torch.Tensor:
        pos = torch.arange(cache.get_seq_length(), cache.get_seq_length() + tokens.size(1))[None]
        out = model(input_ids=tokens, past_key_values=cache, position_ids=pos, use_cache=True)
        return out.logits[:, -1].float().log_softmax(-1)

    with torch.no_grad():
        plain_cache = transformers.DynamicCache(config=cfg)
        p = logp(ids, plain_cache)
        perturbed = [(layer.keys[..., :-1, :].clone(), layer.values[..., :-1, :].clone())
                     for layer in plain_cache.layers]
        memory = kid_core.new_memory([0], [kid_core.mapper.decode_words(ids[0].tolist())], 1, torch.device("cpu"))
        seq = ids
        for t in range(max_new_tokens):
            if t > 0:
                p = logp(seq[:, -1:], plain_cache)
                kid_core.observe(memory, seq[:, -1], [0])
            index, valid = kid_core.demo_index(memory, [0], len(VOCAB), torch.device("cpu"))
            kept = []

            def step_fn(past):
                kept[:] = [transformers.DynamicCache(ddp_cache_data=list(past), config=cfg)]
                return logp(seq[:, -1:], kept[0])

            upd = kv_perturbation(step_fn, perturbed, p, index, valid, steps=o.steps, step_size=o.kv_step,
                                  kl_scale=o.kv_kl, gamma=o.kv_gamma)
            if upd.log_probs is None:
                step_fn(perturbed)
                scores = p
            else:
                scores = (o.kv_mix * upd.log_probs + (1 - o.kv_mix) * p).log_softmax(-1)
                sums["updated"] += 1
                sums["kl"] += float(kl_divergence(p, scores))
                sums["kl_reverse"] += float(kl_divergence(scores, p))
                sums["demo_mass"] += float(demo_log_mass(p, index, valid).exp())
                sums["demo_mass_kid"] += float(demo_log_mass(scores, index, valid).exp())
            perturbed = [(layer.keys, layer.values) for layer in kept[0].layers]
            seq = torch.cat([seq, scores.argmax(-1)[:, None]], dim=1)
    return seq[0, ids.size(1):].tolist(), sums


def test_matches_the_reference_loop(model, norm: WordNormalizer) -> None:
    """Prompt 0 (car knowledge) with a strong update, and other settings with a smaller step: the
    tokens of :func:`reference` (perturbation carried in the cache, mixture, memory) and its
    sums of the stats (the KL directions, the masses)."""
    for kw in (STRONG, dict(steps=2, kv_step=0.2, kv_mix=0.7, kv_kl=0.5)):
        kid_core = core(norm, **kw)
        stats: Dict[str, float] = {}
        got = kid(model, kid_core, PROMPTS[:1], eos_token_id=None, stats=stats)[0, 4:].tolist()
        want, sums = reference(model, kid_core, PROMPTS[0], MAX_NEW)
        assert got == want, kw
        assert stats["updated"] >= MAX_NEW // 2
        for key, value in sums.items():
            assert stats[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (kw, key)
        assert abs(sums["kl"] - sums["kl_reverse"]) > 1e-3 * sums["kl"]  # the two directions differ here


def test_large_step_raises_demo_mass_and_changes_tokens(model, norm: WordNormalizer) -> None:
    """``kv_step`` 1.0, 3 steps: the demonstrations' mass under the mixture exceeds the plain
    one, at least one token differs from plain greedy, and the stats are consistent."""
    stats: Dict[str, float] = {}
    out = kid(model, core(norm, **STRONG), stats=stats)
    plain = kid(model, core(norm, steps=0))
    assert not torch.equal(out, plain)
    keys = {"steps", "rows", "updated", "argmax_changed", "kl", "kl_reverse", "demo_mass", "demo_mass_kid",
            "demo_mass_perturbed", "seconds_plain", "seconds_kv", "seconds_total", "cache_length_plain",
            "cache_length_perturbed"}
    assert keys <= set(stats), keys - set(stats)
    new = out.size(1) - encode(PROMPTS)[0].size(1)
    assert stats["steps"] == new and stats["rows"] == 3 * new
    assert 0 < stats["updated"] <= 2 * new  # row 2 has no knowledge
    assert 0 < stats["argmax_changed"] <= stats["updated"]  # a row not updated keeps p exactly
    assert stats["kl"] > 1e-3 and stats["kl_reverse"] > 1e-3
    assert stats["demo_mass_kid"] > stats["demo_mass"] + 0.05
    # the mixture (weight 0.99) lies near the perturbed distribution, not the plain one
    gain = stats["demo_mass_kid"] - stats["demo_mass"]
    assert abs(stats["demo_mass_kid"] - stats["demo_mass_perturbed"]) < 0.2 * gain
    assert stats["demo_mass"] <= stats["updated"] and stats["demo_mass_kid"] <= stats["updated"]
    assert 0 <= stats["seconds_plain"] <= stats["seconds_total"] and 0 <= stats["seconds_kv"] <= stats["seconds_total"]
    # kv_mix 1: the mixture is the perturbed distribution
    full: Dict[str, float] = {}
    kid(model, core(norm, kv_mix=1.0, **STRONG), stats=full)
    assert abs(full["demo_mass_kid"] - full["demo_mass_perturbed"]) < 1e-4 * full["updated"]
    # stats add up over calls
    kid(model, core(norm, **STRONG), stats=stats)
    assert stats["steps"] == 2 * new


def test_generated_entities_enter_the_memory(model, norm: WordNormalizer) -> None:
    """A trie keyed by the first content word that plain decoding generates, with no initial
    entity: no row has demonstrations until that word completes (when the next word's token is
    observed, at step j + 2 for the word at new position j), then every step is updated."""
    text = PROMPTS[2]
    plain = new_tokens(kid(model, core(norm, steps=0), [text], eos_token_id=None), [text])[0]
    assert len(plain) == MAX_NEW
    word = lambda t: VOCAB[t][1:] if VOCAB[t].startswith(G) else None  # noqa: E731
    j = next(i for i in range(MAX_NEW - 3) if word(plain[i]) and norm.is_content(word(plain[i])) and word(plain[i + 1]))
    trie = KnowledgeTrie({norm.stem(word(plain[j])): ["loyal pet bark"]}, normalizer=norm)
    kid_core = KIDCore(InMemoryTries([TrieExample(trie, [])]), mapper(), KIDOptions(solver="kv", **STRONG))
    stats: Dict[str, float] = {}
    out = new_tokens(kid(model, kid_core, [text], eos_token_id=None, stats=stats), [text])[0]
    assert out[:j + 2] == plain[:j + 2]
    assert stats["updated"] == MAX_NEW - (j + 2) and stats["demo_mass_kid"] > stats["demo_mass"]


def test_finished_rows_get_the_pad_id_and_no_update(llama, norm: WordNormalizer) -> None:
    """Little KID (the same demonstrations at every step): a row is updated at every step up to
    the one that draws its EOS, and none after; later tokens of a finished row are the pad id."""
    kid_core = core(norm, mode="little", **STRONG)
    texts = PROMPTS[:2]
    length = encode(texts)[0].size(1)
    free = kid(llama, kid_core, texts, eos_token_id=None)
    eos = int(free[0, length + 1])  # row 0 ends at its second new token
    stats: Dict[str, float] = {}
    out = kid(llama, kid_core, texts, eos_token_id=eos, pad_token_id=ID[G + "sky"], stats=stats)
    ends = [row.index(eos) + 1 if eos in row else len(row) for row in out[:, length:].tolist()]
    assert ends[0] <= 2 < out.size(1) - length  # row 0 finished while row 1 went on
    assert stats["updated"] == sum(ends) and stats["rows"] == 2 * (out.size(1) - length)
    assert out[0, length + ends[0]:].tolist() == [ID[G + "sky"]] * (out.size(1) - length - ends[0])


# ------------------------------------------------------------------------------ caches, model
@pytest.mark.parametrize("texts", [PROMPTS, PROMPTS[:1]], ids=["padded", "one"])
def test_each_token_enters_each_cache_once(llama, norm: WordNormalizer, texts) -> None:
    """After decoding both caches hold the (padded) prompt plus the new tokens but the last,
    also when the loop ends early (every row drew EOS)."""
    kid_core = core(norm, **STRONG)
    length = encode(texts)[0].size(1)
    stats: Dict[str, float] = {}
    out = kid(llama, kid_core, texts, stats=stats, eos_token_id=None)
    assert out.size(1) == length + MAX_NEW
    assert stats["cache_length_plain"] == stats["cache_length_perturbed"] == length + MAX_NEW - 1
    eos = out[:, length + 2].tolist()  # every row's third new token ends it (if not drawn before)
    stats = {}
    short = kid(llama, kid_core, texts, stats=stats, eos_token_id=eos)
    new = short.size(1) - length
    assert 1 <= new <= 3
    for row, full in zip(short[:, length:].tolist(), out[:, length:].tolist()):
        end = next(i for i, tok in enumerate(full) if tok in eos)  # tokens up to the row's EOS: as before
        assert row[:end + 1] == full[:end + 1] and all(tok == PAD for tok in row[end + 1:])
    assert stats["cache_length_plain"] == stats["cache_length_perturbed"] == length + new - 1
    assert stats["steps"] == new


def test_model_parameters_untouched(llama, norm: WordNormalizer) -> None:
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    assert all(p.requires_grad for p in llama.parameters())
    kid(llama, core(norm, **STRONG))
    kid(llama, core(norm, **STRONG), do_sample=True, top_k=10, generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in llama.parameters())
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())
    assert torch.is_grad_enabled() and not llama.training


# ------------------------------------------------------------------------------ bad input
def test_bad_input_is_a_value_error(llama, norm: WordNormalizer) -> None:
    kid_core = core(norm, **STRONG)
    ids, mask = encode(PROMPTS)
    cases = [
        ("attention_mask", dict(attention_mask=mask[:, 1:])),
        ("attention_mask", dict(attention_mask=mask[:2])),
        ("input_ids", dict(input_ids=ids[0], attention_mask=mask[0])),
        ("input_ids", dict(input_ids=ids[:, :0], attention_mask=mask[:, :0])),
        ("trie indices", dict(trie_indices=[0, 1])),
        ("top_p", dict(top_p=0.0)),
        ("top_p", dict(top_p=1.5)),
        ("top_p", dict(top_p=float("nan"))),
        ("top_k", dict(top_k=-1)),
        ("temperature", dict(temperature=0.0)),
        ("max_new_tokens", dict(max_new_tokens=-1)),
        ("no_repeat_ngram_size", dict(no_repeat_ngram_size=-2)),
        ("min_new_tokens", dict(min_new_tokens=-1)),
    ]
    for match, bad in cases:
        kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=2)
        kw.update(bad)
        with pytest.raises(ValueError, match=match):
            kid_kv_generate(llama, kw.pop("input_ids"), kw.pop("attention_mask"), kid_core, **kw)
