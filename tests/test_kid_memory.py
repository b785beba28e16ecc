"""KID local memory (memory.py): FIFO, subword-aware updates, reordering, batched demos."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from informative_dialogue.kid.memory import EntityMemory, KIDCore, push_fifo
from informative_dialogue.kid.options import KIDOptions
from informative_dialogue.kid.trie import WordNormalizer
from informative_dialogue.kid.trie_files import TrieStore
from informative_dialogue.kid.token_mapping import TokenMapper

TOY = Path(__file__).parent / "data" / "kid_toy_trie.jsonl"
# WordPiece vocabulary: 0-3 special, then words and continuation pieces
VOCAB = ["<s>", "<pad>", "</s>", "<unk>", "the", "car", "##s", "engine", "road", "trip", "piston",
         "fuel", "gas", "##oline", "dog", "loyal", "pet", "bark", ".", "is", "cylinder", "refinery", "weather"]
ID = {s: i for i, s in enumerate(VOCAB)}


@pytest.fixture(scope="module")
def core() -> KIDCore:
    store = TrieStore(TOY, normalizer=WordNormalizer())
    mapper = TokenMapper(VOCAB, special_ids=range(4))
    return KIDCore(store, mapper, KIDOptions(hops=1, memory=2))


def test_push_fifo_order_and_window() -> None:
    m: tuple = ()
    for k in ["a", "b", "c"]:
        m = push_fifo(m, k, 2)
    assert m == ("b", "c")  # oldest dropped
    assert push_fifo(m, "b", 2) == ("c", "b")  # re-mention moves to the newest end
    assert push_fifo(("x",), "y", 0) == ()


def test_memory_updates_on_completed_entity_words_only(core: KIDCore) -> None:
    mem = core.new_memory([0], [[]], beam_size=1, device=torch.device("cpu"))
    assert mem.memory == [("car",)]  # from the line's "entities"
    changed = []
    # "the engine ..." : "engine" completes when "." arrives (a boundary)
    for w in ["the", "engine", "."]:
        changed.append(mem.observe(torch.tensor([ID[w]]), core.mapper, lambda r, w: core.entity_key(0, w)))
    assert mem.memory == [("car", "engin")] and changed == [[], [], [0]]
    # "gas ##oline": no update on the partial "gas"; "gasoline" completes at the next word
    mem.observe(torch.tensor([ID["gas"]]), core.mapper, lambda r, w: core.entity_key(0, w))
    mem.observe(torch.tensor([ID["##oline"]]), core.mapper, lambda r, w: core.entity_key(0, w))
    assert mem.memory == [("car", "engin")] and mem.partial == ["gasoline"]
    mem.observe(torch.tensor([ID["is"]]), core.mapper, lambda r, w: core.entity_key(0, w))
    assert mem.memory == [("engin", "gasolin")]  # window 2: "car" left
    # "road" is no key of the trie: not an entity under the default "key" rule
    for w in ["road", "</s>"]:
        mem.observe(torch.tensor([ID[w]]), core.mapper, lambda r, w: core.entity_key(0, w))
    assert mem.memory == [("engin", "gasolin")]


def test_content_rule_and_initial_entities_from_source() -> None:
    store = TrieStore(TOY, normalizer=WordNormalizer())
    mapper = TokenMapper(VOCAB, special_ids=range(4))
    c = KIDCore(store, mapper, KIDOptions(hops=1, memory=3, entity="content"))
    assert c.entity_key(0, "road") == "road" and c.entity_key(0, "the") is None
    # line 1 has "entities": null -> entity words of the source
    k = KIDCore(store, mapper, KIDOptions(hops=1))
    assert k.initial_keys(1, ["the", "dogs", "is", "loyal"]) == ["dog"]
    assert k.initial_keys(0, ["the", "dogs"]) == ["car"]  # the line's entities win


def test_reorder_follows_beam(core: KIDCore) -> None:
    mem = EntityMemory([0, 0, 1, 1], [("a",), ("b",), ("c",), ()], window=2, beta=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    mem.partial = ["p0", "p1", "p2", "p3"]
    mem.reorder(torch.tensor([1, 1, 3, 2]))
    assert mem.memory == [("b",), ("b",), (), ("c",)]
    assert mem.partial == ["p1", "p1", "p3", "p2"]
    assert mem.beta.tolist() == [2.0, 2.0, 4.0, 3.0]
    assert mem.sentence == [0, 0, 1, 1]
    mem.reorder(torch.tensor([2, 3]))  # sentence 0 finished and pruned
    assert mem.memory == [(), ("c",)] and mem.sentence == [1, 1]


def test_batch_rows_with_different_memories_and_one_without(core: KIDCore) -> None:
    """Sentence 0 (car trie), sentence 1 (dog trie, memory from source), sentence 2 (empty trie)."""
    mem = core.new_memory([0, 1, 2], [[], ["dog"], ["weather"]], beam_size=2, device=torch.device("cpu"))
    assert mem.memory == [("car",), ("car",), ("dog",), ("dog",), (), ()]  # empty trie: no memory
    mem.memory[1] = ("engin",)  # the second hypothesis of sentence 0 moved on
    mask = core.demo_mask(mem, [0, 1, 2], len(VOCAB), torch.device("cpu"))
    on = lambda r: sorted(VOCAB[i] for i in mask[r].nonzero().flatten().tolist())  # noqa: E731
    assert on(0) == ["engine", "road", "trip"]
    assert on(1) == ["fuel", "piston"]
    assert on(2) == on(3) == ["bark", "loyal", "pet"]
    assert on(4) == on(5) == []
    torch.manual_seed(0)
    lp = torch.randn(6, len(VOCAB)).log_softmax(-1)
    keep = lp.clone()
    out = core.update(lp, mem, [0, 1, 2])
    assert torch.equal(lp, keep)
    assert torch.equal(out[4:], lp[4:])  # the row without knowledge: bit-identical
    for r in range(4):
        assert out[r][mask[r]].exp().sum() > lp[r][mask[r]].exp().sum()


def test_little_kid_uses_flat_list_without_memory() -> None:
    store = TrieStore(TOY, normalizer=WordNormalizer())
    c = KIDCore(store, TokenMapper(VOCAB, special_ids=range(4)), KIDOptions(mode="little"))
    mem = c.new_memory([0], [[]], beam_size=1, device=torch.device("cpu"))
    assert mem.memory == [()]
    ids = set(c.demo_ids(0, ()))
    assert {ID["car"], ID["engine"], ID["refinery"], ID["cylinder"], ID["fuel"]} <= ids
    c.observe(mem, torch.tensor([ID["engine"]]), [0])
    assert mem.memory == [()]


def test_options_validation() -> None:
    for bad in [dict(hops=0), dict(steps=-1), dict(lr=0), dict(mode="x"), dict(entity="y"), dict(memory=0)]:
        with pytest.raises(ValueError):
            KIDOptions(**bad)
    assert KIDOptions(hops=3).memory == 3
