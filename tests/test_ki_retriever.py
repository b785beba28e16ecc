"""Token-level knowledge retriever (data_prep.ki.retriever) and its trainer
(data_prep.ki.train_retriever), on a tiny random BERT with the MiniLM tokenizer."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from informative_dialogue.errors import CorpusError
from data_prep.ki.retriever import TokenKnowledgeRetriever  # noqa: E402
from data_prep.ki.retriever_data import prepare_sentences, read_sentences  # noqa: E402
from data_prep.ki.retriever_inputs import truncate_ids  # noqa: E402
from data_prep.ki.retriever_training import (  # noqa: E402
    TrainConfig,
    batch_scores,
    hinge_loss,
    train_retriever,
    validation_accuracy,
)
from data_prep.ki.train_retriever import main  # noqa: E402

TOY = [
    "The cat is a small domesticated carnivorous mammal.",
    "Paris is the capital and largest city of France.",
    "Jupiter is the fifth planet from the Sun in the Solar System.",
    "The violin is a wooden string instrument in the violin family.",
]


def make_model(path: str, seed: int = 0, dim: int = 8) -> TokenKnowledgeRetriever:
    torch.manual_seed(seed)
    return TokenKnowledgeRetriever.from_pretrained_bert(path, projection_dim=dim).eval()


@pytest.fixture(scope="module")
def model(tiny_bert) -> TokenKnowledgeRetriever:
    return make_model(tiny_bert)


# ------------------------------------------------------------------------------- loss


def test_hinge_loss_matches_hand_computation():
    scores = torch.tensor([[2.0, 1.5, -1.0], [0.0, 3.0, 0.5]])
    positive = torch.tensor([0, 2])
    # token 0: negatives 1.5, -1.0 -> max(0, 1-2+1.5)=0.5, max(0, 1-2-1)=0 -> mean 0.25
    # token 1: negatives 0.0, 3.0 -> max(0, 1-0.5+0)=0.5, max(0, 1-0.5+3)=3.5 -> mean 2.0
    assert hinge_loss(scores, positive, margin=1.0).item() == pytest.approx((0.25 + 2.0) / 2)
    # margin 0.2: token 0: 0, 0 ; token 1: max(0, .2-.5+0)=0, max(0, .2-.5+3)=2.7 -> 1.35
    assert hinge_loss(scores, positive, margin=0.2).item() == pytest.approx((0.0 + 1.35) / 2)
    # one sampled negative per token: one of the per-negative terms of each token
    allowed = {(a + b) / 2 for a in (0.5, 0.0) for b in (0.5, 3.5)}
    seen = set()
    for seed in range(20):
        value = hinge_loss(scores, positive, 1.0, negatives=1, generator=torch.Generator().manual_seed(seed)).item()
        assert any(value == pytest.approx(v) for v in allowed)
        seen.add(round(value, 6))
        again = hinge_loss(scores, positive, 1.0, negatives=1, generator=torch.Generator().manual_seed(seed)).item()
        assert again == value
    assert len(seen) > 1
    # n >= B-1 means all negatives
    assert hinge_loss(scores, positive, 1.0, negatives=5).item() == pytest.approx(1.125)


def test_hinge_loss_edge_cases():
    with pytest.raises(ValueError, match="at least 2"):
        hinge_loss(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    assert hinge_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)).item() == 0.0


# ------------------------------------------------------------------------------- word states


def test_first_subword_pooling_picks_the_right_positions(model):
    tok = model.tokenizer
    assert tok.tokenize("unbelievably") == ["un", "##bel", "##ie", "##va", "##bly"]
    sentence = ["hello", "unbelievably", "cat"]
    # [CLS] hello un ##bel ##ie ##va ##bly cat [SEP]: words start at positions 1, 2, 7
    enc = tok([sentence], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.token_encoder(**enc).last_hidden_state[0]  # (9, 32)
        states, mask = model.word_states([sentence])
        mean_states, _ = model.word_states([sentence], pooling="mean")
    assert states.shape == (1, 3, 32) and mask.tolist() == [[True, True, True]]
    torch.testing.assert_close(states[0], hidden[[1, 2, 7]])
    torch.testing.assert_close(mean_states[0, 1], hidden[2:7].mean(0))
    torch.testing.assert_close(mean_states[0, 2], hidden[7])


def test_truncation_is_reported(model):
    sentences = [["hello", "unbelievably", "cat"], ["a", "cat"], []]
    # max_length 5: [CLS] hello un ##bel [SEP] -> "unbelievably" is cut inside, "cat" dropped
    with torch.no_grad():
        states, mask = model.word_states(sentences, max_length=5)
    assert mask.tolist() == [[True, False, False], [True, True, False], [False, False, False]]
    assert torch.all(states[0, 1:] == 0)
    vectors, encoded = model.encode_words(sentences, max_length=5, batch_size=2)
    assert vectors.shape == (5, model.projection_dim) and vectors.dtype == np.float32
    assert encoded.tolist() == [True, False, False, True, True]
    assert np.all(vectors[~encoded] == 0)
    full, full_mask = model.encode_words(sentences, max_length=128, batch_size=1)
    assert full_mask.all()
    # the untruncated sentence is encoded the same (the truncated one has less context)
    np.testing.assert_allclose(full[3:5], vectors[3:5], atol=1e-5)


def test_truncate_ids_keeps_specials():
    ids, kept = truncate_ids([101, 1, 2, 3, 102], [False, True, True, True, False], 4)
    assert ids == [101, 1, 2, 102] and kept == 2
    with pytest.raises(ValueError):
        truncate_ids([101, 1, 102], [False, True, False], 2)


# ------------------------------------------------------------------------------- knowledge


def test_knowledge_states_average_excludes_special_tokens(model):
    text = "the cat sat"
    enc = model.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        hidden = model.knowledge_encoder(**enc).last_hidden_state[0]
        g = model.knowledge_states([text, "a much longer knowledge sentence to pad the first"])
    n = enc["input_ids"].shape[1]
    torch.testing.assert_close(g[0], hidden[1 : n - 1].mean(0))
    with pytest.raises(ValueError, match="no tokens"):
        model.knowledge_states(["fine", "   "])


def test_encode_knowledge_matches_differentiable_path(model):
    with torch.no_grad():
        g = model.knowledge_states(TOY)
        fg = model.project(g)
    states, proj = model.encode_knowledge(TOY, batch_size=3, progress=False)
    assert states.shape == (4, 32) and proj.shape == (4, 8)
    assert states.dtype == np.float32 and proj.dtype == np.float32
    np.testing.assert_allclose(states, g.numpy(), atol=1e-5)
    np.testing.assert_allclose(proj, fg.numpy(), atol=1e-5)


def test_save_load_roundtrip(model, tmp_path):
    words = [s.split() for s in TOY] + [["unbelievably", "short"]]
    model.save(str(tmp_path / "r"))
    loaded = TokenKnowledgeRetriever.load(str(tmp_path / "r"))
    assert (loaded.hidden_size, loaded.projection_dim) == (32, 8)
    for a, b in zip(model.encode_knowledge(TOY, progress=False), loaded.encode_knowledge(TOY, progress=False)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.encode_words(words), loaded.encode_words(words)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="config.json"):
        TokenKnowledgeRetriever.load(str(tmp_path))


# ------------------------------------------------------------------------------- training


def test_prepare_sentences_masks_stop_words_and_punctuation(model):
    (s,) = prepare_sentences(model.tokenizer, ["The cat sat on the Mat."])
    assert s.words == ("the", "cat", "sat", "on", "the", "mat", ".")
    assert s.trainable == (False, True, True, False, False, True, False)
    (s,) = prepare_sentences(model.tokenizer, ["The cat sat on the Mat."], skip_stopwords=False)
    assert all(s.trainable)


def eval_loss(model, sentences) -> float:
    model.eval()
    with torch.no_grad():
        scores, owner = batch_scores(model, sentences, 64)
        return hinge_loss(scores, owner, 1.0).item()


def test_training_decreases_loss_and_is_deterministic(tiny_bert):
    config = TrainConfig(batch_size=4, max_steps=8, lr=1e-3, projection_lr=1e-2, warmup_ratio=0.0, seed=3)
    model = make_model(tiny_bert)
    sentences = prepare_sentences(model.tokenizer, TOY)
    before = eval_loss(model, sentences)
    result = train_retriever(model, sentences, config, progress=False)
    after = eval_loss(model, sentences)
    assert result.steps == 8 and len(result.losses) == 8
    assert after < 0.5 * before
    acc = validation_accuracy(model, sentences, batch_size=4, max_length=64)
    assert acc["tokens"] == sum(sum(s.trainable) for s in sentences)
    assert acc["acc_batch"] == acc["acc_all"] and acc["acc_all"] > 0.5

    again = make_model(tiny_bert)
    assert train_retriever(again, sentences, config, progress=False).losses == result.losses
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
    other = make_model(tiny_bert)
    config.seed, config.max_steps = 4, 2
    assert train_retriever(other, sentences, config, progress=False).losses != result.losses[:2]


def test_read_sentences_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("One sentence.\nTwo  sentences\n", encoding="utf-8")
    assert read_sentences(tmp_path / "a.txt") == ["One sentence.", "Two sentences"]
    (tmp_path / "a.tsv").write_text("1\tTitle\tA text.\n", encoding="utf-8")
    assert read_sentences(tmp_path / "a.tsv") == ["A text."]
    (tmp_path / "a.jsonl").write_text('{"text": "J."}\n{"title": "x"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"a\.jsonl:2: .*\"text\""):
        read_sentences(tmp_path / "a.jsonl")
    (tmp_path / "b.txt").write_text("ok\n\nok\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"b\.txt:2: .*empty"):
        read_sentences(tmp_path / "b.txt")


def test_cli_trains_and_saves(tiny_bert, tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(TOY + TOY[:1]) + "\n", encoding="utf-8")  # one duplicate
    out = tmp_path / "out"
    main(["--sentences", str(path), "--bert", tiny_bert, "--out", str(out), "--max-steps", "2", "--batch-size", "2",
          "--valid-size", "2", "--projection-dim", "4", "--no-progress", "--threads", "1"])
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 2 and log["train_sentences"] == 2 and log["valid_sentences"] == 2
    assert set(log["valid_before"]) == {"acc_batch", "acc_all", "tokens"}
    loaded = TokenKnowledgeRetriever.load(str(out))
    assert loaded.projection_dim == 4
