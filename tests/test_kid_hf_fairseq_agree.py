"""The Hugging Face entry points and the fairseq generator agree on one model.

KID has two adapters over one core: ``KIDSequenceGenerator`` (fairseq; the logit solvers inside
``forward_decoder``, ``--kid-solver kv`` through a second incremental state, kv_state.py) and,
for Hugging Face causal LMs, ``KIDLogitsProcessor`` (logit solvers) and ``kid_kv_generate``
(key/value update). Their own tests check each against the core; this file checks them
against each other: one tiny random fairseq ``transformer_lm`` decodes greedily a prompt with
KID in fairseq (beam 1) and through the Hugging Face entry points, the latter seeing the same
network through :class:`FairseqLMAsCausalLM` -- the interface of a ``transformers`` causal LM
(``past_key_values`` as a ``DynamicCache``, ``.logits``) whose every position is one step of
fairseq's own incremental decoder, so the weights and the arithmetic are the same on both
sides. Same trie, token mapper and options (the fairseq generator's own core). The step sizes
are large enough that KID changes the tokens, so the agreement is not plain decoding's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional, Tuple

import pytest
import torch

from fairseq.models.transformer_lm import TransformerLanguageModel, base_lm_architecture
from fairseq.sequence_generator import SequenceGenerator

from fairseq_plugins.generation.kid_generator import KIDSequenceGenerator
from fairseq_plugins.tasks.kid_language_modeling import KIDLanguageModelingConfig, KIDLanguageModelingTask
from informative_dialogue.kid import hf_kv_decoding
from informative_dialogue.kid.hf_kv_decoding import kid_kv_generate
from informative_dialogue.kid.hf_processor import KIDLogitsProcessor
from informative_dialogue.kid.kv_update import geometric_mix
from informative_dialogue.kid.memory import KIDCore
from informative_dialogue.kid.trie import KnowledgeTrie, WordNormalizer
from tests.test_kid_generator import CAR_TRIE, dictionary  # noqa: F401

transformers = pytest.importorskip("transformers")

PROMPTS = ["i like my car", "the car is", "my car engine", "hello how are you ?"]
NEW_TOKENS = 8


class FairseqLMAsCausalLM(torch.nn.Module):
    """A fairseq ``TransformerLanguageModel`` behind the part of the ``transformers`` causal-LM
    interface that ``informative_dialogue.kid`` uses: ``config.get_text_config``, and
    ``forward(input_ids, attention_mask, position_ids, past_key_values, use_cache)`` returning
    ``.logits`` (N, S, V) and appending the S positions to the ``DynamicCache``. Each position is
    one call of the fairseq decoder in incremental mode, on an incremental state built from the
    cache's keys/values ((N, heads, T, head_dim) in both libraries); gradients flow from the
    logits to the cache tensors, as in a ``transformers`` model. No padding (the prompts here
    are decoded one at a time): positions are fairseq's, 1.. from the first token."""

    def __init__(self, lm: TransformerLanguageModel) -> None:
        super().__init__()
        self.lm = lm
        self.config = transformers.PretrainedConfig(num_hidden_layers=len(lm.decoder.layers))
        self.filler = lm.decoder.dictionary.eos()  # any non-pad id: fairseq's step reads only the length

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, past_key_values=None, use_cache: bool = True):
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("FairseqLMAsCausalLM takes no padding")
        cache = past_key_values
        attns = [layer.self_attn for layer in self.lm.decoder.layers]
        logits = []
        for j in range(input_ids.size(1)):
            cached = cache.get_seq_length()
            state: dict = {}
            if cached:
                for attn, layer in zip(attns, cache.layers):
                    attn._set_input_buffer(state, {"prev_key": layer.keys, "prev_value": layer.values,
                                                   "prev_key_padding_mask": None})
            tokens = input_ids.new_full((input_ids.size(0), cached + 1), self.filler)
            tokens[:, -1] = input_ids[:, j]
            out, _ = self.lm.decoder(tokens, incremental_state=state)
            for i, attn in enumerate(attns):
                buf = attn._get_input_buffer(state)
                cache.update(buf["prev_key"][..., -1:, :], buf["prev_value"][..., -1:, :], i)
            logits.append(out[:, -1])
        return SimpleNamespace(logits=torch.stack(logits, dim=1))


def fairseq_setup(d, tmp_path: Path, **kid) -> tuple:
    """(task, lm, greedy KID generator) for a 2-layer random LM with the car trie shared by every prompt."""
    trie = tmp_path / "shared.jsonl"
    trie.write_text(json.dumps({"id": 0, "entities": None, "trie": CAR_TRIE}) + "\n")
    cfg = KIDLanguageModelingConfig(kid=True, kid_trie=str(trie), kid_shared_trie=True, **kid)
    task = KIDLanguageModelingTask(cfg, d, d)
    a = argparse.Namespace(decoder_layers=2, decoder_embed_dim=16, decoder_ffn_embed_dim=32, decoder_attention_heads=2)
    base_lm_architecture(a)
    torch.manual_seed(1)
    lm = TransformerLanguageModel.build_model(a, task).eval()
    never_predicted = torch.tensor([d.pad(), d.bos()])

    def like_a_trained_model(module, inputs, logits):  # pad and bos get ~e^-100 of the mass
        return logits.index_add(-1, never_predicted, torch.full((len(never_predicted),), -100.0).expand(
            *logits.shape[:-1], -1))

    # fairseq's generator bans pad (-inf after KID's update); argmax on the Hugging Face side has
    # no ban: a random model that puts mass on pad would make the two differ outside KID
    lm.decoder.output_projection.register_forward_hook(like_a_trained_model)
    gen = task.build_generator([lm], argparse.Namespace(beam=1, max_len_b=64, sampling=False))
    assert isinstance(gen, KIDSequenceGenerator)
    return task, lm, gen


def prompt_ids(d, text: str) -> torch.Tensor:
    return torch.tensor([[d.index(w) for w in text.split()]])


def fairseq_greedy(task, lm, gen, d, text: str) -> Tuple[List[int], List[float]]:
    """A beam-1 decode of ``text`` (prompt = forced prefix): its new tokens (EOS included) and
    their log-probabilities under the final (KID) distribution of each step."""
    prompt = prompt_ids(d, text)
    sample = {"id": torch.tensor([0]), "net_input": {"src_tokens": prompt, "src_lengths": torch.tensor([prompt.size(1)])}}
    hyp = task.inference_step(gen, [lm], sample)[0][0]
    tokens = hyp["tokens"].tolist()
    assert tokens[:prompt.size(1)] == prompt[0].tolist()
    return tokens[prompt.size(1):], hyp["positional_scores"][prompt.size(1):].tolist()


def hf_input(d, text: str) -> torch.Tensor:
    """``text`` after the sentence start a fairseq LM is fed (</s>, fairseq's bos for LMs)."""
    return torch.cat([torch.tensor([[d.eos()]]), prompt_ids(d, text)], dim=1)


def hf_kv_greedy(model: FairseqLMAsCausalLM, core: KIDCore, d, text: str, max_new: int,
                 monkeypatch: pytest.MonkeyPatch) -> Tuple[List[int], List[float]]:
    """``kid_kv_generate``'s new tokens and their log-probabilities under each step's final
    distribution (the geometric mixture, recorded where the entry point makes it)."""
    mixtures: List[torch.Tensor] = []

    def recording_mix(*args, **kwargs):
        mixtures.append(geometric_mix(*args, **kwargs))
        return mixtures[-1]

    monkeypatch.setattr(hf_kv_decoding, "geometric_mix", recording_mix)
    ids = hf_input(d, text)
    out = kid_kv_generate(model, ids, torch.ones_like(ids), core, max_new_tokens=max_new, eos_token_id=d.eos())
    monkeypatch.undo()
    new = out[0, ids.size(1):].tolist()
    assert len(mixtures) == len(new)
    return new, [float(m[0, t]) for m, t in zip(mixtures, new)]


def hf_processor_greedy(model: FairseqLMAsCausalLM, proc: Optional[KIDLogitsProcessor], d, text: str,
                        max_new: int) -> Tuple[List[int], List[float]]:
    """Greedy decoding as ``model.generate`` does it (scores = the last position's logits, then
    the logits processor, then argmax; stops after EOS): new tokens and their log-probabilities
    under the processed scores."""
    ids = hf_input(d, text)
    start = ids.size(1)
    cache = transformers.DynamicCache(config=model.config)
    scored: List[float] = []
    with torch.no_grad():
        logits = model(ids, past_key_values=cache).logits[:, -1]
        for _ in range(max_new):
            scores = proc(ids, logits) if proc is not None else logits
            nxt = scores.argmax(dim=-1, keepdim=True)
            scored.append(float(scores.float().log_softmax(dim=-1)[0, nxt]))
            ids = torch.cat([ids, nxt], dim=1)
            if int(nxt) == d.eos():
                break
            logits = model(nxt, past_key_values=cache).logits[:, -1]
    return ids[0, start:].tolist(), scored


def no_special(d, tokens: List[int]) -> bool:
    """Neither pad nor bos (see ``like_a_trained_model``)."""
    return d.pad() not in tokens and d.bos() not in tokens


@pytest.mark.parametrize("kid", [
    {"kid_solver": "kv", "kid_kv_step": 0.1, "kid_hops": 2},
    {"kid_solver": "sigma", "kid_sigma": 0.2, "kid_hops": 2},
    {"kid_solver": "adam", "kid_lr": 0.3, "kid_hops": 2},
], ids=["kv", "sigma", "adam"])
def test_greedy_decodes_agree_and_differ_from_plain(dictionary, tmp_path: Path, kid: dict,  # noqa: F811
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Same new tokens, and the same log-probability of each under the step's KID
    distribution (to 1e-4), on prompts with knowledge (KID changes every one of them) and
    without (plain decoding)."""
    d = dictionary
    task, lm, gen = fairseq_setup(d, tmp_path, **kid)
    model = FairseqLMAsCausalLM(lm).eval()
    core = gen.kid_core
    changed = 0
    for text in PROMPTS:
        # fairseq may run to its length limit (EOS forced there): compare the first NEW_TOKENS
        fs, fs_scores = (x[:NEW_TOKENS] for x in fairseq_greedy(task, lm, gen, d, text))
        if kid["kid_solver"] == "kv":
            hf, hf_scores = hf_kv_greedy(model, core, d, text, NEW_TOKENS, monkeypatch)
        else:
            proc = KIDLogitsProcessor(KnowledgeTrie(CAR_TRIE, normalizer=WordNormalizer()), core.mapper,
                                      options=core.options)
            hf, hf_scores = hf_processor_greedy(model, proc, d, text, NEW_TOKENS)
        assert no_special(d, hf), (text, hf)
        assert hf == fs, (text, hf, fs)
        assert hf_scores == pytest.approx(fs_scores, abs=1e-4), text
        plain, _ = hf_processor_greedy(model, None, d, text, NEW_TOKENS)
        changed += plain != fs
    assert changed == 3, "KID must change the three decodes whose prompt names a trie key (car)"


def test_the_adapter_is_the_fairseq_model(dictionary, tmp_path: Path) -> None:  # noqa: F811
    """Without KID both sides decode the same tokens with the same scores: the adapter adds
    nothing of its own."""
    d = dictionary
    task, lm, _ = fairseq_setup(d, tmp_path, kid_solver="kv")
    model = FairseqLMAsCausalLM(lm).eval()
    for text in PROMPTS:
        plain = SequenceGenerator([lm], d, beam_size=1, max_len_b=64)
        fs, fs_scores = (x[:NEW_TOKENS] for x in fairseq_greedy(task, lm, plain, d, text))
        hf, hf_scores = hf_processor_greedy(model, None, d, text, NEW_TOKENS)
        assert no_special(d, hf), (text, hf)
        assert hf == fs, (text, hf, fs)
        assert hf_scores == pytest.approx(fs_scores, abs=1e-4), text
