"""analysis.embedding_pca: dictionary indexing, WordPiece means, hand-computed distances, the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis import embedding_pca as ep
from analysis.checkpoint_embeddings import embedding_matrix, load_dictionary, load_state_dict, vocab_rows
from analysis.embedding_geometry import kmeans_clusters, pair_distances, pca_2d
from analysis.word_vectors import MissingWordsError, embedding_of, wordpiece_split, words_from_sentence
from informative_dialogue.errors import CorpusError

# rows: 0-3 fairseq specials, then the dictionary file's symbols in order
SYMBOLS = ["british", "author", "row", "##ling", "book"]
ROWS = {
    "british": [3.0, 0.0, 0.0],
    "author": [0.0, 4.0, 0.0],
    "row": [1.0, 1.0, 0.0],
    "##ling": [3.0, 1.0, 0.0],
    "book": [0.0, 0.0, 2.0],
}


def weights(scale: float = 1.0) -> torch.Tensor:
    w = torch.zeros(4 + len(SYMBOLS), 3)
    for i, s in enumerate(SYMBOLS):
        w[4 + i] = torch.tensor(ROWS[s]) * scale
    return w


@pytest.fixture
def dict_file(tmp_path: Path) -> Path:
    path = tmp_path / "dict.src.txt"
    path.write_text("".join(f"{s} {100 - i}\n" for i, s in enumerate(SYMBOLS)))
    return path


def save_ckpt(path: Path, w: torch.Tensor, shared_only: bool = False, share: bool = True) -> Path:
    """fairseq's checkpoint layout; shared embeddings are one tensor under two keys."""
    model = {"decoder.embed_tokens.weight": w, "encoder.layers.0.fc1.weight": torch.zeros(2, 3)}
    if not shared_only:
        model["encoder.embed_tokens.weight"] = w
    torch.save({"model": model, "cfg": {"model": {"share_all_embeddings": share}}, "extra_state": {}}, path)
    return path


def test_load_dictionary_fairseq_indexing(dict_file: Path, tmp_path: Path) -> None:
    # what fairseq.data.Dictionary.load(dict_file).indices holds (not imported here: slow)
    vocab = load_dictionary(dict_file)
    assert vocab == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "british": 4, "author": 5, "row": 6,
                     "##ling": 7, "book": 8}
    assert vocab_rows(vocab) == 9
    over = tmp_path / "over.txt"
    over.write_text("a 1\nb 1\na 2 #fairseq:overwrite\n")
    assert load_dictionary(over) == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 6, "b": 5}
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1\nb\n")
    with pytest.raises(CorpusError, match=r"bad.txt:2: expected '<symbol> <count>'"):
        load_dictionary(bad)
    dup = tmp_path / "dup.txt"
    dup.write_text("a 1\na 2\n")
    with pytest.raises(CorpusError, match=r"dup.txt:2: duplicate symbol 'a'"):
        load_dictionary(dup)


def test_wordpiece_split_and_mean(dict_file: Path) -> None:
    vocab = load_dictionary(dict_file)
    assert wordpiece_split("british", vocab) == ["british"]
    assert wordpiece_split("rowling", vocab) == ["row", "##ling"]
    assert wordpiece_split("zebra", vocab) is None
    emb = embedding_of(["Rowling", "british", "rowling"], vocab, weights().numpy())
    assert emb.words == ["rowling", "british"]  # lower-cased, deduplicated
    assert emb.pieces["rowling"] == ["row", "##ling"]
    np.testing.assert_allclose(emb.vectors[0], [2.0, 1.0, 0.0])  # mean of (1,1,0) and (3,1,0)
    np.testing.assert_allclose(emb.vectors[1], [3.0, 0.0, 0.0])


def test_missing_words(dict_file: Path) -> None:
    vocab = load_dictionary(dict_file)
    with pytest.raises(MissingWordsError, match="2 word.*zebra, qq"):
        embedding_of(["british", "zebra", "qq"], vocab, weights().numpy())
    emb = embedding_of(["british", "zebra", "author"], vocab, weights().numpy(), skip_missing=True)
    assert emb.words == ["british", "author"] and emb.missing == ["zebra"]
    assert emb.vectors.shape == (2, 3)


def test_pair_distances_hand_computed(dict_file: Path) -> None:
    vocab = load_dictionary(dict_file)
    emb = embedding_of(["rowling", "british", "author", "book"], vocab, weights().numpy())
    d = {r["pair"]: r for r in pair_distances(emb.words, emb.vectors, [("rowling", "british"), ("author", "book")])}
    # (2,1,0) - (3,0,0) = (-1,1,0)
    assert d["rowling:british"]["euclidean"] == pytest.approx(math.sqrt(2))
    # unit vectors with cos = 2/sqrt(5): sqrt(2 - 2 cos)
    assert d["rowling:british"]["euclidean_normalised"] == pytest.approx(math.sqrt(2 - 4 / math.sqrt(5)))
    assert d["author:book"]["euclidean"] == pytest.approx(math.sqrt(20))
    assert d["author:book"]["euclidean_normalised"] == pytest.approx(math.sqrt(2))  # orthogonal
    with pytest.raises(KeyError, match="zebra"):
        pair_distances(emb.words, emb.vectors, [("rowling", "zebra")])


def test_pca_of_three_points_keeps_distances(dict_file: Path) -> None:
    # three points span a plane, so 2-D PCA is an isometry of them
    vocab = load_dictionary(dict_file)
    emb = embedding_of(["rowling", "british", "book"], vocab, weights().numpy())
    coords, explained = pca_2d(emb.vectors)
    assert coords.shape == (3, 2) and explained.sum() == pytest.approx(1.0)
    recs = pair_distances(emb.words, emb.vectors, [("rowling", "british"), ("british", "book")], coords)
    for r in recs:
        assert r["pca_2d"] == pytest.approx(r["euclidean"])
    labels = kmeans_clusters(coords, 2, seed=1)
    assert sorted(set(labels.tolist())) == [0, 1]
    with pytest.raises(ValueError, match="at least 2"):
        pca_2d(emb.vectors[:1])


def test_embedding_matrix_keys(tmp_path: Path) -> None:
    w = weights()
    state, cfg = load_state_dict(save_ckpt(tmp_path / "a.pt", w))
    np.testing.assert_allclose(embedding_matrix(state, cfg), w.numpy())
    # shared embeddings saved under the decoder's key only
    state, cfg = load_state_dict(save_ckpt(tmp_path / "b.pt", w, shared_only=True))
    np.testing.assert_allclose(embedding_matrix(state, cfg), w.numpy())
    state, cfg = load_state_dict(save_ckpt(tmp_path / "c.pt", w, shared_only=True, share=False))
    with pytest.raises(KeyError, match="decoder.embed_tokens.weight"):
        embedding_matrix(state, cfg)


def test_words_from_sentence() -> None:
    s = "J.K. Rowling is a British author and philanthropist."
    assert words_from_sentence(s) == ["j", "k", "rowling", "is", "a", "british", "author", "and", "philanthropist"]
    assert words_from_sentence(s, {"is", "A", "and"}) == ["j", "k", "rowling", "british", "author",
                                                            "philanthropist"]
    assert ep.parse_pairs(["rowling:british"]) == [("rowling", "british")]
    with pytest.raises(ValueError, match="WORD:WORD"):
        ep.parse_pairs(["rowling"])


def test_cli_png_and_json(dict_file: Path, tmp_path: Path) -> None:
    a = save_ckpt(tmp_path / "base.pt", weights())
    b = save_ckpt(tmp_path / "ki.pt", weights(scale=0.5))
    png, js = tmp_path / "out" / "fig.png", tmp_path / "out" / "fig.json"
    report = ep.main(["--checkpoints", str(a), str(b), "--labels", "Transformer", "Transformer+KI",
                      "--dict", str(dict_file), "--words", "british", "author",
                      "--words-from-knowledge", "Rowling wrote a book.", "--skip-missing",
                      "--pairs", "rowling:british", "author:book", "--clusters", "2",
                      "--out", str(png), "--json", str(js)])
    data = png.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(js.read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["pairs"] == ["rowling:british", "author:book"]
    base, ki = saved["checkpoints"]
    assert base["missing"] == ["wrote", "a"]
    assert [p["pair"] for p in base["pairs"]] == ["rowling:british", "author:book"]
    assert base["pairs"][0]["euclidean"] == pytest.approx(math.sqrt(2))
    assert ki["pairs"][0]["euclidean"] == pytest.approx(math.sqrt(2) / 2)  # weights halved
    assert ki["pairs"][0]["euclidean_normalised"] == pytest.approx(base["pairs"][0]["euclidean_normalised"])


def test_cli_errors(dict_file: Path, tmp_path: Path) -> None:
    a = save_ckpt(tmp_path / "base.pt", weights())
    common = ["--checkpoints", str(a), "--dict", str(dict_file), "--out", str(tmp_path / "f.png")]
    with pytest.raises(SystemExit, match="zebra"):
        ep.main(common + ["--words", "british", "zebra"])
    small = save_ckpt(tmp_path / "small.pt", torch.zeros(5, 3))
    with pytest.raises(SystemExit, match="9 entries but .*5 rows"):
        ep.main(["--checkpoints", str(small), "--dict", str(dict_file), "--out", str(tmp_path / "f.png"),
                 "--words", "british", "author"])


def test_custom_split(dict_file: Path) -> None:
    vocab = load_dictionary(dict_file)
    pieces = {"rowling": ["row", "##ling"], "bookish": ["book", "##ish"]}  # ##ish not in the dictionary
    emb = embedding_of(["rowling", "bookish", "author"], vocab, weights().numpy(), skip_missing=True,
                       split=lambda w: [w] if w in vocab else pieces.get(w))
    assert emb.words == ["rowling", "author"] and emb.missing == ["bookish"]
    np.testing.assert_allclose(emb.vectors[0], [2.0, 1.0, 0.0])
