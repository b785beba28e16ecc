"""KID inside fairseq: the generator in-process on tiny random transformers, then
fairseq-preprocess -> fairseq-train (a few updates) -> fairseq-generate --kid as subprocesses."""
from __future__ import annotations

import argparse
import json
import logging
import random
import re
import subprocess
from pathlib import Path
from typing import List

import pytest
import torch

from fairseq.data import Dictionary
from fairseq.models.transformer import TransformerModel, base_architecture
from fairseq.models.transformer_lm import TransformerLanguageModel, base_lm_architecture
from fairseq.sequence_generator import SequenceGenerator

from informative_dialogue.kid.memory import KIDCore
from informative_dialogue.kid.options import KIDOptions
from fairseq_plugins.generation.kid_generator import KIDEnsembleModel, KIDSequenceGenerator
from informative_dialogue.kid.trie import KnowledgeTrie, WordNormalizer
from informative_dialogue.kid.trie_files import InMemoryTries, TrieExample
from informative_dialogue.kid.token_mapping import TokenMapper
from fairseq_plugins.tasks.kid_language_modeling import KIDLanguageModelingConfig, KIDLanguageModelingTask
from fairseq_plugins.tasks.knowledge_dialog import KnowledgeDialogConfig, KnowledgeDialogTask
from tests.test_end_to_end import TINY_ARCH, USER_DIR, run

WORDS = ("the car ##s engine road trip piston fuel gas ##oline dog loyal pet bark is good i like my "
         "hello how are you ? . weather sunny rain cold").split()
CAR_TRIE = {"car": ["engine", "road trip"], "engin": ["the piston", "fuel"], "fuel": ["gasoline", "car"],
            "piston": ["cylinder"], "gasolin": ["refinery"]}
DOG_TRIE = {"dog": ["loyal pet", "bark"], "bark": ["noise"]}


@pytest.fixture(scope="module")
def norm() -> WordNormalizer:
    return WordNormalizer()


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d = Dictionary()
    for w in WORDS:
        d.add_symbol(w)
    return d


def tiny_translation_model(d: Dictionary, seed: int = 1) -> tuple:
    torch.manual_seed(seed)
    task = KnowledgeDialogTask(KnowledgeDialogConfig(), d, d)
    args = argparse.Namespace(
        encoder_layers=1, decoder_layers=1, encoder_embed_dim=16, decoder_embed_dim=16,
        encoder_ffn_embed_dim=32, decoder_ffn_embed_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, share_all_embeddings=True, dropout=0.0,
    )
    base_architecture(args)
    return task, TransformerModel.build_model(args, task).eval()


def batch(d: Dictionary, sentences: List[str]) -> dict:
    rows = [torch.tensor([d.index(w) for w in s.split()] + [d.eos()]) for s in sentences]
    n = max(len(r) for r in rows)
    src = torch.full((len(rows), n), d.pad(), dtype=torch.long)
    for i, r in enumerate(rows):  # left-padded source, as fairseq's translation task
        src[i, n - len(r):] = r
    return {"id": torch.arange(len(rows)), "net_input": {"src_tokens": src, "src_lengths": torch.tensor([len(r) for r in rows])}}


def make_core(d: Dictionary, norm: WordNormalizer, tries, **opts) -> KIDCore:
    return KIDCore(InMemoryTries(tries), TokenMapper.from_fairseq_dictionary(d), KIDOptions(**opts))


def toy_tries(norm: WordNormalizer) -> list:
    return [
        TrieExample(KnowledgeTrie(CAR_TRIE, normalizer=norm), ["car"]),
        TrieExample(KnowledgeTrie(DOG_TRIE, normalizer=norm), None),
        TrieExample(KnowledgeTrie({}, normalizer=norm), ["weather"]),
    ]


SENTS = ["i like my car", "the dog is loyal", "how are you ?"]


def hyps(out) -> list:
    return [[(h["tokens"].tolist(), round(float(h["score"]), 5)) for h in sent] for sent in out]


def test_kid_steps_0_and_empty_tries_equal_plain_in_process(dictionary: Dictionary, norm: WordNormalizer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    _, model = tiny_translation_model(dictionary)
    sample = batch(dictionary, SENTS)
    plain = SequenceGenerator([model], dictionary, beam_size=3, max_len_b=8)
    ref = hyps(plain.generate([model], sample))
    k0 = KIDSequenceGenerator([model], dictionary, beam_size=3, max_len_b=8,
                              kid_core=make_core(dictionary, norm, toy_tries(norm), steps=0))
    assert hyps(k0.generate([model], sample)) == ref
    empty = [TrieExample(KnowledgeTrie({}, normalizer=norm), ["car"])] * 3
    with caplog.at_level(logging.WARNING):
        core = make_core(dictionary, norm, empty, steps=3, allow_empty_tries=True)
    assert sum("no knowledge" in r.message for r in caplog.records) == 1
    ke = KIDSequenceGenerator([model], dictionary, beam_size=3, max_len_b=8, kid_core=core)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert hyps(ke.generate([model], sample)) == ref
    assert not caplog.records  # no per-step warnings


def test_memory_follows_beam_reordering_and_pruning(dictionary: Dictionary, norm: WordNormalizer) -> None:
    """At every step each hypothesis' memory equals the memory rebuilt from its own tokens,
    while beams are reordered and a finished sentence is pruned from the batch."""
    _, model = tiny_translation_model(dictionary, seed=3)
    everything = {norm.stem(w): ["engine fuel"] for w in WORDS if norm.is_content(norm.clean(w))}
    tries = [TrieExample(KnowledgeTrie(everything, normalizer=norm), None)] * 3
    core = make_core(dictionary, norm, tries, hops=2, memory=3, entity="content", lr=0.5)
    gen = KIDSequenceGenerator([model], dictionary, beam_size=3, max_len_b=10, kid_core=core)
    sample = batch(dictionary, SENTS)
    src_words = [core.mapper.decode_words(r.tolist()) for r in sample["net_input"]["src_tokens"]]
    seen = {"steps": 0, "rows": set(), "changed": 0}

    class Checking(KIDEnsembleModel):
        def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature=1.0):
            lprobs, attn = super().forward_decoder(tokens, encoder_outs, incremental_states, temperature)
            b = self.kid_batch
            for row in range(tokens.size(0)):
                sent = b.memory.sentence[row]
                fresh = core.new_memory([b.trie_indices[sent]], [src_words[sent]], 1, torch.device("cpu"))
                fresh.sentence = [sent]
                initial = fresh.memory[0]
                for t in tokens[row, 1:]:
                    core.observe(fresh, t.view(1), b.trie_indices)
                assert fresh.memory[0] == b.memory.memory[row], (row, tokens[row])
                assert fresh.partial[0] == b.memory.partial[row]
                seen["changed"] += int(fresh.memory[0] != initial)  # generated entities entered
            seen["steps"] += 1
            seen["rows"].add(tokens.size(0))
            if tokens.size(1) >= 3:  # force sentence 0 to finish so it is pruned from the batch
                lprobs = lprobs.clone()
                rows0 = torch.tensor([s == 0 for s in b.memory.sentence])
                lprobs[rows0, dictionary.eos()] = 0.0
            return lprobs, attn

    gen.model.__class__ = Checking
    out = gen.generate([model], sample)
    assert len(out) == 3 and all(len(h) == 3 for h in out)
    assert seen["steps"] > 4 and {9, 6} <= seen["rows"]  # 3 sentences x 3 beams, then 2 x 3
    assert seen["changed"] > 0


def test_kid_shifts_generation_towards_knowledge(dictionary: Dictionary, norm: WordNormalizer) -> None:
    _, model = tiny_translation_model(dictionary, seed=5)
    sample = batch(dictionary, SENTS)
    tries = toy_tries(norm)
    core = make_core(dictionary, norm, tries, hops=2, lr=1.0)
    demo = [set(core.demo_ids(0, ("car",))), set(core.demo_ids(1, ("dog",)))]
    plain = SequenceGenerator([model], dictionary, beam_size=1, max_len_b=8).generate([model], sample)
    kid = KIDSequenceGenerator([model], dictionary, beam_size=1, max_len_b=8, kid_core=core).generate([model], sample)
    count = lambda out, s: sum(int(t) in demo[s] for t in out[s][0]["tokens"])  # noqa: E731
    assert count(kid, 0) + count(kid, 1) > count(plain, 0) + count(plain, 1)
    # the sentence whose trie is empty decodes exactly as plain decoding
    assert kid[2][0]["tokens"].tolist() == plain[2][0]["tokens"].tolist()


def test_decoder_only_lm_with_prompt(dictionary: Dictionary, norm: WordNormalizer, tmp_path: Path) -> None:
    torch.manual_seed(0)
    trie_file = tmp_path / "shared.jsonl"
    trie_file.write_text(json.dumps({"id": 0, "entities": None, "trie": DOG_TRIE}) + "\n")
    cfg = KIDLanguageModelingConfig(kid=True, kid_trie=str(trie_file), kid_shared_trie=True, kid_lr=1.0)
    task = KIDLanguageModelingTask(cfg, dictionary, dictionary)
    a = argparse.Namespace(decoder_layers=1, decoder_embed_dim=16, decoder_ffn_embed_dim=32, decoder_attention_heads=2)
    base_lm_architecture(a)
    lm = TransformerLanguageModel.build_model(a, task).eval()
    gen_args = argparse.Namespace(beam=2, max_len_b=6, sampling=False)
    gen = task.build_generator([lm], gen_args)
    assert isinstance(gen, KIDSequenceGenerator)
    prompt = torch.tensor([[dictionary.index(w) for w in "the dog is".split()]])
    sample = {"id": torch.tensor([0]), "net_input": {"src_tokens": prompt, "src_lengths": torch.tensor([3])}}
    calls = record_updates(gen.kid_core)
    out = task.inference_step(gen, [lm], sample)
    assert out[0][0]["tokens"][:3].tolist() == prompt[0].tolist()  # the prompt is kept as prefix
    # the prompt's steps keep the LM's distribution bit for bit; KID acts from the first free step
    assert len(calls) > 3
    for step, (before, after, _, _, _) in enumerate(calls[:4]):
        assert torch.equal(after, before) == (step < 3), step
    # the memory was initialised from the prompt's words ("dog" is a key of the shared trie)
    core = gen.kid_core
    mem = core.new_memory([0], [core.mapper.decode_words(prompt[0].tolist())], 1, torch.device("cpu"))
    assert mem.memory == [("dog",)]
    # K = 0: identical to fairseq's plain generator
    task.args.kid_steps = 0
    plain = SequenceGenerator([lm], dictionary, beam_size=2, max_len_b=6)
    k0 = task.build_generator([lm], gen_args)
    assert hyps(task.inference_step(k0, [lm], sample)) == hyps(task.inference_step(plain, [lm], sample))


def record_updates(core: KIDCore) -> list:
    """Wrap ``core.update`` (one call per decoding step): each call appends (input lprobs,
    output lprobs, row -> sentence, row -> memory, active)."""
    calls: list = []
    update = core.update

    def recording(log_probs, state, trie_indices, active=None):
        out = update(log_probs, state, trie_indices, active)
        calls.append((log_probs.clone(), out.clone(), list(state.sentence), list(state.memory), active))
        return out

    core.update = recording  # type: ignore[method-assign]
    return calls


def test_kid_acts_after_the_forced_prefix_only(dictionary: Dictionary, norm: WordNormalizer) -> None:
    """fairseq-generate --prefix-size: steps inside a sentence's forced prefix keep the model's
    distribution bit for bit (their scores are the plain ones); KID acts from the first free step."""
    _, model = tiny_translation_model(dictionary, seed=5)
    sample = batch(dictionary, SENTS)
    car, dog = toy_tries(norm)[:2]
    core = make_core(dictionary, norm, [car, dog, car], mode="little", lr=1.0)  # demonstrations at every step
    calls = record_updates(core)
    words = [["the", "car"], ["the"], ["i", "like", "my"]]  # prefix lengths 2, 1, 3 (padded)
    prefix = torch.full((3, 3), dictionary.pad(), dtype=torch.long)
    for i, w in enumerate(words):
        prefix[i, : len(w)] = torch.tensor([dictionary.index(x) for x in w])
    kid = KIDSequenceGenerator([model], dictionary, beam_size=2, max_len_b=8, kid_core=core)
    out = kid.generate([model], sample, prefix_tokens=prefix)
    plain_gen = SequenceGenerator([model], dictionary, beam_size=2, max_len_b=8)
    plain = plain_gen.generate([model], sample, prefix_tokens=prefix)
    seen_forced = seen_free = 0
    for step, (before, after, sentence, _, _) in enumerate(calls):
        for row, sent in enumerate(sentence):
            if step < len(words[sent]):
                assert torch.equal(after[row], before[row]), (step, sent)  # forced: untouched
                seen_forced += 1
            else:
                assert not torch.equal(after[row], before[row]), (step, sent)  # free: KID acts
                seen_free += 1
    assert seen_forced == 2 * (2 + 1 + 3) and seen_free > 0
    for s, w in enumerate(words):
        top, ref = out[s][0], plain[s][0]
        assert top["tokens"][: len(w)].tolist() == ref["tokens"][: len(w)].tolist() == prefix[s, : len(w)].tolist()
        assert torch.equal(top["positional_scores"][: len(w)], ref["positional_scores"][: len(w)])
    assert hyps(out) != hyps(plain)


def test_separate_source_and_target_dictionaries(norm: WordNormalizer, tmp_path: Path) -> None:
    """Source words are read with the source dictionary (memory), knowledge words are mapped
    with the target dictionary (demonstrations), through the task's build_generator."""
    src = Dictionary()
    for w in WORDS:
        src.add_symbol(w)
    tgt = Dictionary()
    for w in ["xx", "yy"] + list(reversed(WORDS)):  # same words, other ids, other size
        tgt.add_symbol(w)
    assert src.index("car") != tgt.index("car") and len(src) != len(tgt)
    trie_file = tmp_path / "test.trie.jsonl"
    trie_file.write_text("".join(json.dumps({"id": i, "entities": None, "trie": t}) + "\n"
                                 for i, t in enumerate([CAR_TRIE, DOG_TRIE])))
    torch.manual_seed(2)
    cfg = KnowledgeDialogConfig(kid=True, kid_trie=str(trie_file), kid_hops=2, kid_lr=1.0)
    task = KnowledgeDialogTask(cfg, src, tgt)
    args = argparse.Namespace(
        encoder_layers=1, decoder_layers=1, encoder_embed_dim=16, decoder_embed_dim=16,
        encoder_ffn_embed_dim=32, decoder_ffn_embed_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, dropout=0.0,
    )
    base_architecture(args)
    model = TransformerModel.build_model(args, task).eval()
    gen = task.build_generator([model], argparse.Namespace(beam=2, max_len_b=6, sampling=False))
    assert isinstance(gen, KIDSequenceGenerator)
    calls = record_updates(gen.kid_core)
    sample = batch(src, SENTS[:2])
    out = task.inference_step(gen, [model], sample)
    assert len(out) == 2 and all(int(t) < len(tgt) for h in out for t in h[0]["tokens"])
    before, after, sentence, memory, _ = calls[0]
    assert before.size(1) == len(tgt)
    expected = {0: ({"car"}, {"engine", "road", "trip", "piston", "fuel"}), 1: ({"dog"}, {"loyal", "pet", "bark"})}
    for row, sent in enumerate(sentence):
        keys, knowledge = expected[sent]
        assert set(memory[row]) == keys  # the source words, read with the source dictionary
        raised = (after[row] - before[row].log_softmax(-1)) > 0
        assert {tgt[i] for i in raised.nonzero().flatten().tolist()} == knowledge  # target ids


# --- CLI: fairseq-preprocess / fairseq-train / fairseq-generate ------------------------------
def toy_corpus(n: int, rng: random.Random) -> tuple:
    topics = [("car", "engine road trip piston fuel gas ##oline"), ("dog", "loyal pet bark"),
              ("weather", "sunny rain cold")]
    src, tgt = [], []
    for i in range(n):
        key, rel = topics[i % 3]
        rel = rel.split()
        src.append(f"i like my {key} {rng.choice(['.', '?'])}")
        tgt.append(" ".join(["the", key, "is"] + rng.sample(rel, 2) + ["."]))
    return src, tgt


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("kid_cli")
    rng = random.Random(0)
    for split, n in (("train", 48), ("valid", 6), ("test", 6)):
        s, t = toy_corpus(n, rng)
        (work / f"{split}.src").write_text("\n".join(s) + "\n")
        (work / f"{split}.tgt").write_text("\n".join(t) + "\n")
    run(["fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", str(work / "train"),
         "--validpref", str(work / "valid"), "--testpref", str(work / "test"), "--destdir", str(work / "bin"),
         "--joined-dictionary", "--workers", "1"])
    run(["fairseq-train", str(work / "bin"), "--user-dir", USER_DIR, "--task", "knowledge_dialog",
         "--source-lang", "src", "--target-lang", "tgt", *TINY_ARCH, "--criterion", "cross_entropy",
         "--optimizer", "adam", "--lr", "0.01", "--max-tokens", "512", "--max-update", "5",
         "--save-dir", str(work / "ckpt"), "--no-epoch-checkpoints",
         "--num-workers", "0", "--seed", "1", "--disable-validation", "--no-progress-bar"], cwd=work)
    assert (work / "ckpt" / "checkpoint_last.pt").is_file()
    lines = []
    for i, src in enumerate((work / "test.src").read_text().splitlines()):
        trie = CAR_TRIE if "car" in src else DOG_TRIE if "dog" in src else {}
        lines.append(json.dumps({"id": i, "entities": src.split()[3:4], "trie": trie}))
    (work / "test.trie.jsonl").write_text("\n".join(lines) + "\n")
    return work


def generate(work: Path, *extra: str) -> List[str]:
    proc = run(["fairseq-generate", str(work / "bin"), "--user-dir", USER_DIR, "--task", "knowledge_dialog",
                "--source-lang", "src", "--target-lang", "tgt", "--path", str(work / "ckpt" / "checkpoint_last.pt"),
                "--gen-subset", "test", "--max-len-b", "8", "--batch-size", "4",
                # (stock fairseq-generate can drop the final partial batch; keep the test independent of it)
                "--required-batch-size-multiple", "1", *extra])
    return [ln for ln in proc.stdout.splitlines() if re.match(r"^[HP]-\d+", ln)]


def knowledge_words(lines: List[str]) -> int:
    words = {"engine", "road", "trip", "piston", "fuel", "gas", "loyal", "pet", "bark"}
    return sum(w in words for ln in lines if ln.startswith("H-") for w in ln.split("\t")[-1].split())


def test_cli_kid_beam_and_sampling_and_steps_0_equals_plain(trained: Path) -> None:
    n_test = len((trained / "test.src").read_text().splitlines())
    kid = ["--kid", "--kid-trie", str(trained / "test.trie.jsonl"), "--kid-hops", "2", "--kid-lr", "1.0"]
    kid_beam = generate(trained, "--beam", "2", *kid)
    assert sum(ln.startswith("H-") for ln in kid_beam) == n_test
    sampling = ["--sampling", "--beam", "2", "--nbest", "2", "--seed", "11", "--sampling-topk", "5"]
    plain = generate(trained, *sampling)
    k0 = generate(trained, *sampling, *kid, "--kid-steps", "0")
    assert sum(ln.startswith("H-") for ln in plain) == 2 * n_test
    assert plain == k0  # token for token (and score for score) the same
    kid_sampling = generate(trained, *sampling, *kid)
    assert sum(ln.startswith("H-") for ln in kid_sampling) == 2 * n_test
    assert knowledge_words(kid_sampling) > knowledge_words(plain)


def test_cli_sampling_seed_scope_example_pairs_examples(trained: Path) -> None:
    """--sampling-seed-scope example: every example's sample is the same at batch size 4 and 1 (the
    run-wide stream is not), --kid-steps 0 still gives plain sampling, and the flag needs --sampling."""
    kid = ["--kid", "--kid-trie", str(trained / "test.trie.jsonl"), "--kid-hops", "2", "--kid-lr", "1.0"]
    scope = ["--sampling", "--beam", "1", "--seed", "11", "--sampling-topp", "0.9", "--sampling-seed-scope", "example"]

    def by_id(lines: List[str]) -> List[tuple]:  # (id, tokens): padding moves scores in the last digits
        return sorted((ln.split("\t")[0], ln.split("\t")[2]) for ln in lines if ln.startswith("H-"))

    batched = by_id(generate(trained, *scope))
    assert len(batched) == len((trained / "test.src").read_text().splitlines())
    assert by_id(generate(trained, *scope, "--batch-size", "1")) == batched
    assert by_id(generate(trained, *scope, *kid, "--kid-steps", "0")) == batched
    proc = subprocess.run(["fairseq-generate", str(trained / "bin"), "--user-dir", USER_DIR, "--task",
                           "knowledge_dialog", "--path", str(trained / "ckpt" / "checkpoint_last.pt"),
                           "--gen-subset", "test", "--sampling-seed-scope", "example"], capture_output=True, text=True)
    assert proc.returncode != 0 and "--sampling-seed-scope example needs --sampling" in proc.stderr


def test_cli_interactive_kid_shared_trie(trained: Path) -> None:
    """README: fairseq-interactive --kid --kid-trie FILE --kid-shared-trie (line 0 for every
    input, memory from the input's words), against plain fairseq-interactive."""
    shared = trained / "shared.trie.jsonl"
    shared.write_text(json.dumps({"id": 0, "entities": None, "trie": {**CAR_TRIE, **DOG_TRIE}}) + "\n")
    inputs = "i like my car .\ni like my dog ?\ni like my car ?\n"

    def interactive(*extra: str) -> List[str]:
        proc = run(["fairseq-interactive", str(trained / "bin"), "--user-dir", USER_DIR, "--task", "knowledge_dialog",
                    "--source-lang", "src", "--target-lang", "tgt",
                    "--path", str(trained / "ckpt" / "checkpoint_last.pt"),
                    "--beam", "2", "--max-len-b", "8", "--buffer-size", "2", "--batch-size", "2", *extra], input=inputs)
        return [ln for ln in proc.stdout.splitlines() if ln.startswith("H-")]

    plain = interactive()
    kid = interactive("--kid", "--kid-trie", str(shared), "--kid-shared-trie", "--kid-hops", "2", "--kid-lr", "1.0")
    assert len(plain) == len(kid) == 3
    assert knowledge_words(kid) > knowledge_words(plain)  # here 6 against 0
    # each input's memory comes from its own words: knowledge of its own topic only
    car, dog = {"engine", "road", "trip", "piston", "fuel", "gas"}, {"loyal", "pet", "bark"}
    for line, other in ((kid[0], dog), (kid[1], car), (kid[2], dog)):
        assert not set(line.split("\t")[-1].split()) & other, line
