"""KID as a Hugging Face LogitsProcessor, through ``model.generate`` of a tiny random GPT-2."""
from __future__ import annotations

import pytest
import torch

from informative_dialogue.kid.memory import EntityMemory
from informative_dialogue.kid.options import KIDOptions
from informative_dialogue.kid.trie import KnowledgeTrie, WordNormalizer
from informative_dialogue.kid.trie_files import TrieExample
from informative_dialogue.kid.token_mapping import TokenMapper

transformers = pytest.importorskip("transformers")
from informative_dialogue.kid.hf_processor import KIDLogitsProcessor  # noqa: E402

G = "\u0120"
VOCAB = ["<|endoftext|>"] + [G + w for w in "the car engine road trip piston fuel gas dog loyal pet bark is good i like my weather".split()] + ["s", "oline", ".", ","]
ID = {s: i for i, s in enumerate(VOCAB)}
CAR_TRIE = {"car": ["engine", "road trip"], "engin": ["the piston", "fuel"], "fuel": ["gasoline", "car"]}
DOG_TRIE = {"dog": ["loyal pet", "bark"]}


@pytest.fixture(scope="module")
def norm() -> WordNormalizer:
    return WordNormalizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(VOCAB), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def mapper() -> TokenMapper:
    return TokenMapper(VOCAB, special_ids=[0])


def tries(norm: WordNormalizer) -> list:
    return [TrieExample(KnowledgeTrie(CAR_TRIE, normalizer=norm), ["car"]),
            TrieExample(KnowledgeTrie(DOG_TRIE, normalizer=norm), None),
            TrieExample(KnowledgeTrie({}, normalizer=norm), ["weather"])]


def prompts() -> torch.Tensor:
    return torch.tensor([[ID[G + w] for w in s.split()] for s in ["i like my car", "the dog is good", "i like the weather"]])


def gen(model, proc=None, **kw) -> torch.Tensor:
    procs = transformers.LogitsProcessorList([proc] if proc is not None else [])
    kw.setdefault("max_new_tokens", 6)
    return model.generate(prompts(), attention_mask=torch.ones_like(prompts()), logits_processor=procs,
                          pad_token_id=0, eos_token_id=0, **kw)


def test_steps_0_and_empty_tries_equal_plain(model, norm: WordNormalizer) -> None:
    for kw in (dict(do_sample=False), dict(do_sample=False, num_beams=2)):
        plain = gen(model, **kw)
        rows = kw.get("num_beams", 1)
        assert torch.equal(gen(model, KIDLogitsProcessor(tries(norm), mapper(), rows_per_input=rows, steps=0), **kw), plain)
        empty = [KnowledgeTrie({}, normalizer=norm)] * 3
        assert torch.equal(gen(model, KIDLogitsProcessor(empty, mapper(), rows_per_input=rows, allow_empty_tries=True),
                               **kw), plain)
        with pytest.raises(ValueError, match="no knowledge.*--kid-allow-empty-tries"):  # only when asked for
            KIDLogitsProcessor(empty, mapper(), rows_per_input=rows)


def test_call_reweights_rows_with_knowledge_only(norm: WordNormalizer) -> None:
    proc = KIDLogitsProcessor(tries(norm), mapper(), hops=2, lr=0.5)
    torch.manual_seed(1)
    scores = torch.randn(3, len(VOCAB))
    keep = scores.clone()
    out = proc(prompts(), scores)
    assert torch.equal(scores, keep) and out is not scores
    assert torch.equal(out[2], scores[2])  # empty trie: untouched
    demo0 = [ID[G + w] for w in ("engine", "road", "trip", "piston", "fuel")]
    demo1 = [ID[G + w] for w in ("loyal", "pet", "bark")]
    for row, demo in ((0, demo0), (1, demo1)):
        assert out[row].softmax(-1)[demo].sum() > scores[row].softmax(-1)[demo].sum()
    # the updated rows keep the scale of the input (log pi* + logsumexp(scores))
    assert torch.allclose(torch.logsumexp(out[:2], -1), torch.logsumexp(scores[:2], -1), atol=1e-4)


def test_options_object_replaces_the_keyword_hyper_parameters(norm: WordNormalizer) -> None:
    torch.manual_seed(1)
    scores = torch.randn(3, len(VOCAB))
    by_keywords = KIDLogitsProcessor(tries(norm), mapper(), hops=2, lr=0.5, sigma=0.05, steps=2)(prompts(), scores)
    by_options = KIDLogitsProcessor(tries(norm), mapper(),
                                    options=KIDOptions(hops=2, lr=0.5, sigma=0.05, steps=2))(prompts(), scores)
    assert torch.equal(by_keywords, by_options)
    assert not torch.equal(by_options, KIDLogitsProcessor(tries(norm), mapper())(prompts(), scores))
    # both at once is an error, not a silent choice (even when the keyword equals the default)
    for kw in (dict(hops=4), dict(lr=0.1, sigma=0.02)):
        with pytest.raises(ValueError, match="not both"):
            KIDLogitsProcessor(tries(norm), mapper(), options=KIDOptions(hops=2), **kw)
    with pytest.raises(TypeError):
        KIDLogitsProcessor(tries(norm), mapper(), window=3)  # the memory is called memory


def test_generate_beam_and_sampling_memory_follows_rows(model, norm: WordNormalizer) -> None:
    """Through model.generate (beam search and sampling), every row's memory equals the one
    rebuilt from its own tokens, and KID puts more knowledge tokens in the output."""
    demo_ids = {ID[G + w] for w in ("engine", "road", "trip", "piston", "fuel", "loyal", "pet", "bark")}

    class Checked(transformers.LogitsProcessor):
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __call__(self, input_ids, scores):
            out = self.inner(input_ids, scores)
            st = self.inner.state
            core = self.inner.core
            for row in range(input_ids.size(0)):
                sent = st.memory.sentence[row]
                fresh = core.new_memory([st.trie_indices[sent]], [core.mapper.decode_words(prompts()[sent].tolist())],
                                        1, torch.device("cpu"))
                fresh.sentence = [sent]
                for t in input_ids[row, prompts().size(1):]:
                    core.observe(fresh, t.view(1), st.trie_indices)
                assert fresh.memory[0] == st.memory.memory[row]
            self.calls += 1
            return out

    for kw, rows in ((dict(num_beams=3, num_return_sequences=3, do_sample=False), 3),
                     (dict(do_sample=True, num_return_sequences=2, top_k=10), 2)):
        proc = Checked(KIDLogitsProcessor(tries(norm), mapper(), rows_per_input=rows, hops=2, lr=1.0,
                                          entity="content", memory=3))
        torch.manual_seed(3)
        out = gen(model, proc, **kw)
        assert proc.calls >= 2 and out.size(0) == 3 * rows
        torch.manual_seed(3)
        plain = gen(model, **kw)
        new = lambda o: sum(int(t) in demo_ids for t in o[:, prompts().size(1):].flatten())  # noqa: E731
        assert new(out) > new(plain)


def test_init_validates_arguments(norm: WordNormalizer) -> None:
    t = tries(norm)
    for bad in (dict(hops=0), dict(steps=-1), dict(lr=0.0), dict(sigma=-1.0), dict(mode="big"),
                dict(rows_per_input=0), dict(subwords="some")):
        with pytest.raises(ValueError):
            KIDLogitsProcessor(t, mapper(), **bad)
    with pytest.raises(ValueError):
        KIDLogitsProcessor([], mapper())
    with pytest.raises(TypeError):
        KIDLogitsProcessor(t, object())
    with pytest.raises(ValueError):  # 3 tries, 2 inputs
        KIDLogitsProcessor(t, mapper())(prompts()[:2], torch.zeros(2, len(VOCAB)))
    shared = KIDLogitsProcessor(t[0], mapper())  # a single trie is shared by every input
    assert shared(prompts()[:2], torch.zeros(2, len(VOCAB))).shape == (2, len(VOCAB))
    assert isinstance(shared.state.memory, EntityMemory)
