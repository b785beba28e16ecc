"""Per-example random draws (``--sampling-seed-scope example``): the core draw, and fairseq's
generator decoding each example the same whatever else is in its batch."""
from __future__ import annotations

import argparse
import math
from typing import List

import pytest
import torch

from fairseq import search
from fairseq.sequence_generator import SequenceGenerator

from informative_dialogue.kid.trie import KnowledgeTrie, WordNormalizer
from informative_dialogue.kid.trie_files import TrieExample
from informative_dialogue.paired_sampling import example_uniforms, gumbel_max_sample
from fairseq_plugins.generation.kid_generator import KIDSequenceGenerator
from fairseq_plugins.generation.paired_sampling import ExampleSeededSampling, apply_sampling_seed_scope
from fairseq_plugins.tasks.knowledge_dialog import KnowledgeDialogConfig
from tests.test_kid_generator import CAR_TRIE, DOG_TRIE, WORDS, batch, make_core, tiny_translation_model
from fairseq.data import Dictionary


# --- the core draw ---------------------------------------------------------------------------
def test_uniforms_depend_on_seed_example_and_step_only() -> None:
    a = example_uniforms(7, [3, 5, 3], step=2, shape=(4,))
    assert a.shape == (3, 4) and a.dtype == torch.float32
    assert bool(((a >= 0) & (a < 1)).all())
    assert torch.equal(a[0], a[2])                       # same example, same numbers
    assert not torch.equal(a[0], a[1])                   # another example
    assert torch.equal(example_uniforms(7, [5], 2, (4,))[0], a[1])   # row position does not matter
    assert not torch.equal(example_uniforms(7, [3], 3, (4,))[0], a[0])   # another step
    assert not torch.equal(example_uniforms(8, [3], 2, (4,))[0], a[0])   # another seed
    assert torch.equal(example_uniforms(7, [3], 2, (2, 2))[0].reshape(-1), a[0])   # C order of one stream
    with pytest.raises(ValueError, match="negative"):
        example_uniforms(7, [-1], 0, (1,))


def test_gumbel_max_by_hand() -> None:
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]])
    even = torch.full((1, 1, 4), 0.5)
    assert gumbel_max_sample(probs, even).tolist() == [[2]]              # equal noise: the most probable
    g = lambda u: -math.log(-math.log(u))  # noqa: E731
    # token 0 wins when its noise beats token 2's by more than log(0.5 / 0.2)
    u = torch.tensor([[[0.999, 0.5, 0.5, 0.5], [0.7, 0.5, 0.5, 0.5], [0.5, 0.999999, 0.5, 0.5]]])
    assert g(0.999) - g(0.5) > math.log(2.5) > g(0.7) - g(0.5)
    assert gumbel_max_sample(probs, u).tolist() == [[0, 2, 2]]          # a zero-mass token never wins
    assert gumbel_max_sample(probs * 4, u).tolist() == [[0, 2, 2]]      # unnormalised masses
    with pytest.raises(ValueError, match="no probability mass"):
        gumbel_max_sample(torch.zeros(1, 3), torch.full((1, 1, 3), 0.5))


def test_gumbel_max_draws_follow_the_distribution() -> None:
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    u = example_uniforms(1, list(range(20000)), 0, (1, 4))                  # (20000, 1, 4)
    draws = gumbel_max_sample(probs.expand(20000, 4), u).view(-1)
    freq = torch.bincount(draws, minlength=4).double() / 20000
    assert freq[1] == 0
    assert torch.allclose(freq, probs.double(), atol=0.012)


# --- the fairseq search ----------------------------------------------------------------------
SENTS = ["i like my car", "the dog is loyal", "how are you ?", "hello weather is cold"]


@pytest.fixture(scope="module")
def model_and_dict():
    d = Dictionary()
    for w in WORDS:
        d.add_symbol(w)
    _, model = tiny_translation_model(d)
    return model, d


def outputs(gen: SequenceGenerator, model, d: Dictionary, sentences: List[str], ids: List[int]) -> dict:
    sample = batch(d, sentences)
    sample["id"] = torch.tensor(ids)
    torch.manual_seed(123)  # the run-wide stream: must not matter under scope example
    return {i: [h["tokens"].tolist() for h in hyps] for i, hyps in zip(ids, gen.generate([model], sample))}


def seeded(d: Dictionary, topp: float = -1.0, seed: int = 5) -> ExampleSeededSampling:
    """topp -2: top-k 5 instead."""
    if topp == -2.0:
        return ExampleSeededSampling(d, sampling_topk=5, sampling_topp=-1.0, seed=seed)
    return ExampleSeededSampling(d, sampling_topk=-1, sampling_topp=topp, seed=seed)


@pytest.mark.parametrize("beam,topp", [(1, -1.0), (1, 0.9), (2, -1.0), (1, -2.0)])
def test_an_example_decodes_the_same_alone_or_in_any_batch(model_and_dict, beam: int, topp: float) -> None:
    model, d = model_and_dict
    gen = SequenceGenerator([model], d, beam_size=beam, max_len_b=10, search_strategy=seeded(d, topp))
    together = outputs(gen, model, d, SENTS, [0, 1, 2, 3])
    reordered = outputs(gen, model, d, SENTS[::-1], [3, 2, 1, 0])
    alone = {}
    for i, s in enumerate(SENTS):
        alone.update(outputs(gen, model, d, [s], [i]))
    assert together == reordered == alone
    other_seed = SequenceGenerator([model], d, beam_size=beam, max_len_b=10, search_strategy=seeded(d, topp, seed=6))
    assert outputs(other_seed, model, d, SENTS, [0, 1, 2, 3]) != together


@pytest.mark.parametrize("topp", [0.9, -1.0])
def test_a_small_change_of_a_flat_distribution_rarely_moves_the_draw(topp: float) -> None:
    """The coupling the comparison relies on: with a flat distribution (many near-ties, a top-p
    nucleus whose edge moves) and a small perturbation, the draw of an example changes about as
    often as the total variation distance says (~1 %), not whenever the tail or the sort order
    moves (an inverse-CDF draw changed 94 % of them here)."""
    from fairseq.data import Dictionary as D

    d = D()
    for i in range(400):
        d.add_symbol(f"w{i}")
    gen = torch.Generator().manual_seed(0)
    logits = 0.01 * torch.randn(1, 1, len(d), generator=gen)
    perturbed = logits + 0.02 * torch.randn(1, 1, len(d), generator=gen)
    p, q = torch.log_softmax(logits, -1), torch.log_softmax(perturbed, -1)
    tv = 0.5 * float((p.exp() - q.exp()).abs().sum())
    search_ = seeded(d, topp)
    n = 1000
    ids = torch.arange(n)
    draw_p = search_.step(0, p.expand(n, 1, -1).clone(), torch.zeros(n, 1, 0), None, ids)[1]
    draw_q = search_.step(0, q.expand(n, 1, -1).clone(), torch.zeros(n, 1, 0), None, ids)[1]
    changed = float((draw_p != draw_q).float().mean())
    moved = 0.0  # the mass of the tokens that enter or leave the nucleus: a draw may follow them
    if topp > 0:
        def nucleus(lp: torch.Tensor) -> set:
            sorted_p, order = lp.exp().view(-1).sort(descending=True)
            keep = int((sorted_p.cumsum(0) < topp).sum()) + 1
            return set(order[:keep].tolist())
        moved = float(p.exp().view(-1)[sorted(nucleus(p) ^ nucleus(q))].sum()) / topp
    assert tv < 0.01 and changed < tv + moved + 0.03, (tv, moved, changed)


def test_kid_changes_only_the_examples_with_knowledge(model_and_dict) -> None:
    """The pairing the scope exists for: in one batch KID changes the examples whose trie the
    memory reaches; an example with an empty trie keeps plain sampling's output exactly, although
    the outputs around it changed (fairseq's run-wide stream would shift its draws)."""
    model, d = model_and_dict
    norm = WordNormalizer()
    tries = [TrieExample(KnowledgeTrie(CAR_TRIE, normalizer=norm), ["car"]),
             TrieExample(KnowledgeTrie(DOG_TRIE, normalizer=norm), None),
             TrieExample(KnowledgeTrie({}, normalizer=norm), ["weather"]),
             TrieExample(KnowledgeTrie({}, normalizer=norm), ["weather"])]
    ids = [0, 1, 2, 3]
    plain = outputs(SequenceGenerator([model], d, beam_size=1, max_len_b=10, search_strategy=seeded(d)),
                    model, d, SENTS, ids)
    kid = outputs(KIDSequenceGenerator([model], d, beam_size=1, max_len_b=10, search_strategy=seeded(d),
                                       kid_core=make_core(d, norm, tries, steps=3, lr=3.0, hops=2)),
                  model, d, SENTS, ids)
    assert kid[0] != plain[0] or kid[1] != plain[1]
    assert kid[2] == plain[2] and kid[3] == plain[3]
    k0 = outputs(KIDSequenceGenerator([model], d, beam_size=1, max_len_b=10, search_strategy=seeded(d),
                                      kid_core=make_core(d, norm, tries, steps=0)), model, d, SENTS, ids)
    assert k0 == plain


def test_apply_scope(model_and_dict) -> None:
    model, d = model_and_dict
    gen = SequenceGenerator([model], d, beam_size=1, search_strategy=search.Sampling(d, -1, 0.9))
    cfg = KnowledgeDialogConfig()
    assert cfg.sampling_seed_scope == "run"
    assert apply_sampling_seed_scope(gen, cfg, argparse.Namespace(sampling=True), d).search.__class__ is search.Sampling
    cfg.sampling_seed_scope = "example"
    torch.manual_seed(42)
    args = argparse.Namespace(sampling=True, sampling_topk=-1, sampling_topp=0.9)
    replaced = apply_sampling_seed_scope(gen, cfg, args, d).search
    assert isinstance(replaced, ExampleSeededSampling)
    assert (replaced.seed, replaced.sampling_topp, replaced.sampling_topk) == (42, 0.9, -1)
    with pytest.raises(ValueError, match="needs --sampling"):
        apply_sampling_seed_scope(gen, cfg, argparse.Namespace(sampling=False), d)
