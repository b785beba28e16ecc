"""Knowledge alignments for knowledge internalization: the binary format (ids above 65,535 and
2**32 survive), ki-binarize-alignments, and the knowledge_dialog task's ``sample["knowledge"]``
(aligned with ``src_tokens`` position by position, in the collated order, on both padding sides)."""
from __future__ import annotations

import logging
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import options, tasks
from fairseq.data import LanguagePairDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli import preprocess

import fairseq_plugins  # noqa: F401  (registers knowledge_dialog)
from data_prep.ki import binarize as ki_binarize
from informative_dialogue.ki.alignment_text import write_alignments
from informative_dialogue.errors import CorpusError
from fairseq_plugins.data.knowledge_aligned_dataset import KnowledgeAlignedDataset, knowledge_matrix
from informative_dialogue.ki.alignments import (
    KnowledgeAlignments,
    alignment_paths,
    write_knowledge_alignments,
)

WORDS = "a b c d e f g h i j k l".split()


def corpus(n: int, rng: random.Random) -> tuple[list[str], list[str], list[list[int]]]:
    """n (source, target, alignment) lines; sources of 1-7 tokens; distinct ids > 65,535 or 0."""
    src, tgt, align = [], [], []
    for i in range(n):
        length = rng.randint(1, 7)
        src.append(" ".join(rng.choice(WORDS) for _ in range(length)))
        tgt.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))))
        align.append([0 if rng.random() < 0.3 else 70_000 + 100 * i + j for j in range(length)])
    return src, tgt, align


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tokenised text + fairseq-preprocess output; train alignments binarised, valid/test not."""
    work = tmp_path_factory.mktemp("ki")
    rng = random.Random(0)
    texts = {}
    for split, n in (("train", 13), ("valid", 5), ("test", 4)):
        src, tgt, align = corpus(n, rng)
        write_lines(work / f"{split}.src", src)
        write_lines(work / f"{split}.tgt", tgt)
        write_alignments(work / f"{split}.align", align)
        texts[split] = (src, align)
    bin_dir = work / "bin"
    args = options.get_preprocessing_parser().parse_args([
        "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary", "--workers", "1",
        "--trainpref", str(work / "train"), "--validpref", str(work / "valid"), "--testpref", str(work / "test"),
        "--destdir", str(bin_dir)])
    preprocess.main(args)
    summary = ki_binarize.main(["--align", str(work / "train.align"), "--source", str(work / "train.src"),
                                "--destdir", str(bin_dir), "--split", "train"])
    return {"work": work, "bin": bin_dir, "texts": texts, "summary": summary}


def make_task(data_dir: Path, *extra: str, left_pad_source: bool = True):
    """knowledge_dialog as fairseq-train builds it (``left_pad_source`` is a store_true flag
    defaulting to True in fairseq 0.12, so False is set on the config)."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[
        str(data_dir), "--task", "knowledge_dialog", "--source-lang", "src", "--target-lang", "tgt",
        "--arch", "transformer", "--optimizer", "adam", "--lr", "0.001", "--cpu", *extra])
    cfg = convert_namespace_to_omegaconf(args).task
    cfg.left_pad_source = left_pad_source
    return tasks.setup_task(cfg)


def batches(task, split: str, max_sentences: int = 4) -> list[dict]:
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_sentences=max_sentences, max_tokens=10_000,
                                  max_positions=(1024, 1024), seed=1, num_workers=0)
    return list(itr.next_epoch_itr(shuffle=True))


# --- format -------------------------------------------------------------------------------------
def test_large_ids_round_trip_text_binarize_load(tmp_path: Path) -> None:
    rows = [[70000, 0, 65536], [4294967296], [1, 65535]]
    write_lines(tmp_path / "x.src", ["w1 w2 w3", "w4", "w5 w6"])
    write_alignments(tmp_path / "x.align", rows)
    summary = ki_binarize.main(["--align", str(tmp_path / "x.align"), "--source", str(tmp_path / "x.src"),
                                "--destdir", str(tmp_path / "bin"), "--split", "train"])
    assert summary["dtype"] == "int64" and summary["max_id"] == 4294967296
    loaded = KnowledgeAlignments.load(tmp_path / "bin" / "train.align")
    assert isinstance(loaded.ids, np.memmap) and loaded.ids.dtype == np.int64  # dtype from the .npy header
    assert len(loaded) == 3 and loaded.sizes.tolist() == [3, 1, 2] and loaded.sizes.dtype == np.int64
    for i, row in enumerate(rows):
        got = loaded[i]
        assert got.dtype == np.int64 and got.tolist() == row  # 70000 is not 4464, 2**32 is not 0
    loaded[0][0] = -1  # a copy, not a view of the read-only map
    assert loaded[0][0] == 70000
    clone = pickle.loads(pickle.dumps(loaded))  # as DataLoader workers receive it: re-mapped
    assert isinstance(clone.ids, np.memmap) and [clone[i].tolist() for i in range(3)] == rows


def test_int32_when_ids_fit_and_empty_lines(tmp_path: Path) -> None:
    write_knowledge_alignments(tmp_path / "y", [[70000], [], [2**31 - 1]])
    ids_path, offsets_path = alignment_paths(tmp_path / "y")
    assert np.load(ids_path).dtype == np.int32 and np.load(offsets_path).tolist() == [0, 1, 1, 2]
    loaded = KnowledgeAlignments.load(tmp_path / "y")
    assert [loaded[i].tolist() for i in range(3)] == [[70000], [], [2**31 - 1]]


def test_validate_against_source_names_line_and_counts(tmp_path: Path) -> None:
    write_knowledge_alignments(tmp_path / "z", [[1, 2], [3, 4, 5], [6]])
    al = KnowledgeAlignments.load(tmp_path / "z")
    al.validate_against_source(np.array([3, 4, 2]), "z.align")
    with pytest.raises(ValueError, match=r"z\.align:2: line 2 has 3 knowledge ids but the source line has 2 tokens"):
        al.validate_against_source(np.array([3, 3, 2]), "z.align")
    with pytest.raises(ValueError, match="3 alignment lines but the source has 2 lines"):
        al.validate_against_source(np.array([3, 4]), "z.align")
    al.validate_against_source(np.array([2, 3, 1]), "z.align", eos_appended=False)


def test_knowledge_matrix_by_hand() -> None:
    rows = [np.array([7, 0]), np.array([9])]
    lengths = torch.tensor([3, 2])  # EOS included
    assert knowledge_matrix(rows, lengths, 4, left_pad=True).tolist() == [[0, 7, 0, 0], [0, 0, 9, 0]]
    assert knowledge_matrix(rows, lengths, 4, left_pad=False).tolist() == [[7, 0, 0, 0], [9, 0, 0, 0]]
    with pytest.raises(ValueError, match="example 5: 2 knowledge ids but the source has 1 tokens"):
        knowledge_matrix([np.array([1, 2])], torch.tensor([2]), 3, left_pad=True, ids=[5])


# --- CLI errors ---------------------------------------------------------------------------------
def test_cli_misaligned_text_names_file_line_and_counts(data: dict, tmp_path: Path) -> None:
    src, align = data["texts"]["train"]
    bad = [list(r) for r in align]
    bad[2] = bad[2] + [5]
    write_alignments(tmp_path / "bad.align", bad)
    with pytest.raises(CorpusError) as err:
        ki_binarize.main(["--align", str(tmp_path / "bad.align"), "--source", str(data["work"] / "train.src"),
                          "--destdir", str(tmp_path / "out"), "--split", "train"])
    msg = str(err.value)
    assert "bad.align:3:" in msg and f"{len(bad[2])} knowledge ids" in msg and f"has {len(align[2])} tokens" in msg
    assert not (tmp_path / "out" / "train.align.ids.npy").exists()


def test_cli_checks_the_binarised_source(data: dict, tmp_path: Path) -> None:
    # text and alignments agree, but the binarised train source (fairseq-preprocess of the
    # original text) has one token fewer on line 6
    src, align = data["texts"]["train"]
    src, align = list(src), [list(r) for r in align]
    src[5] += " a"
    align[5].append(7)
    write_lines(tmp_path / "other.src", src)
    write_alignments(tmp_path / "other.align", align)
    with pytest.raises(ValueError) as err:
        ki_binarize.main(["--align", str(tmp_path / "other.align"), "--source", str(tmp_path / "other.src"),
                          "--destdir", str(data["bin"]), "--split", "train"])
    msg = str(err.value)
    assert "other.align:6:" in msg and f"has {len(align[5])} knowledge ids" in msg
    assert f"has {len(align[5]) - 1} tokens" in msg and "train.src-tgt.src" in msg
    assert data["summary"]["checked_binarized"] and data["summary"]["lines"] == 13


# --- task ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("left_pad", [True, False])
def test_batches_carry_knowledge_aligned_with_src_tokens(data: dict, left_pad: bool) -> None:
    task = make_task(data["bin"], "--knowledge-alignments", left_pad_source=left_pad)
    task.load_dataset("train")
    assert isinstance(task.dataset("train"), KnowledgeAlignedDataset)
    src_lines, align = data["texts"]["train"]
    seen, got = [], batches(task, "train")
    for sample in got:
        tokens, knowledge = sample["net_input"]["src_tokens"], sample["knowledge"]
        assert knowledge.dtype == torch.long and knowledge.shape == tokens.shape
        width = tokens.size(1)
        for r, i in enumerate(sample["id"].tolist()):
            words, ids = src_lines[i].split(), align[i]
            n = len(words) + 1
            start = width - n if left_pad else 0
            expected = [0] * width
            expected[start:start + n - 1] = ids
            assert knowledge[r].tolist() == expected
            assert task.source_dictionary.string(tokens[r, start:start + n - 1]) == src_lines[i]
            assert tokens[r, start + n - 1] == task.source_dictionary.eos()
            pad = torch.ones(width, dtype=torch.bool)
            pad[start:start + n] = False
            assert (tokens[r][pad] == task.source_dictionary.pad()).all()
            seen.append(i)
    assert sorted(seen) == list(range(13))  # nothing dropped (batch sizes not multiples of 8)
    # ordering, filtering and batching go through the inner dataset unchanged
    plain = make_task(data["bin"], left_pad_source=left_pad)
    plain.load_dataset("train")
    for a, b in zip(got, batches(plain, "train"), strict=True):
        assert a["id"].tolist() == b["id"].tolist()
        assert torch.equal(a["net_input"]["src_tokens"], b["net_input"]["src_tokens"])
        assert torch.equal(a["target"], b["target"]) and "knowledge" not in b


def test_truncate_source_truncates_alignments(data: dict) -> None:
    task = make_task(data["bin"], "--knowledge-alignments", "--truncate-source", "--max-source-positions", "4")
    task.load_dataset("train")
    src_lines, align = data["texts"]["train"]
    for sample in batches(task, "train", max_sentences=13):
        for r, i in enumerate(sample["id"].tolist()):
            kept = align[i][:3]
            row = sample["knowledge"][r].tolist()
            width = len(row)
            assert row == [0] * (width - len(kept) - 1) + kept + [0]
            assert int(sample["net_input"]["src_lengths"][r]) == len(kept) + 1


def test_task_rejects_misaligned_binary(data: dict, tmp_path: Path) -> None:
    for f in data["bin"].iterdir():
        if not f.name.startswith("train.align"):
            shutil.copy(f, tmp_path / f.name)
    rows = [list(r) for r in data["texts"]["train"][1]]
    rows[4] = rows[4] + [1]
    write_knowledge_alignments(tmp_path / "train.align", rows)
    task = make_task(tmp_path, "--knowledge-alignments")
    ids_path = alignment_paths(tmp_path / "train.align")[0]
    with pytest.raises(ValueError) as err:
        task.load_dataset("train")
    msg = str(err.value)
    assert f"{ids_path}:5:" in msg and f"has {len(rows[4])} knowledge ids" in msg
    assert f"has {len(rows[4]) - 1} tokens" in msg


def test_missing_alignments_train_error_valid_warning(data: dict, tmp_path: Path, caplog) -> None:
    for f in data["bin"].iterdir():
        if not f.name.startswith("train.align"):
            shutil.copy(f, tmp_path / f.name)
    task = make_task(tmp_path, "--knowledge-alignments")
    with pytest.raises(FileNotFoundError) as err:
        task.load_dataset("train")
    for p in alignment_paths(tmp_path / "train.align"):
        assert p in str(err.value)
    with caplog.at_level(logging.WARNING):
        task.load_dataset("valid")
    assert "valid.align.ids.npy" in caplog.text and "no KI loss" in caplog.text
    assert isinstance(task.dataset("valid"), LanguagePairDataset)
    assert all("knowledge" not in s for s in batches(task, "valid"))


def test_flag_off_never_touches_alignment_files(data: dict, tmp_path: Path) -> None:
    for f in data["bin"].iterdir():
        shutil.copy(f, tmp_path / f.name)
    for p in alignment_paths(tmp_path / "test.align"):
        Path(p).write_bytes(b"not an npy file")  # would fail to load if anything read it
    task = make_task(tmp_path)
    for split in ("train", "test"):
        task.load_dataset(split)
        assert isinstance(task.dataset(split), LanguagePairDataset)
        samples = batches(task, split)
        assert sum(len(s["id"]) for s in samples) == len(data["texts"][split][0])
        assert all("knowledge" not in s for s in samples)


def test_refuses_unmirrorable_source_changes(data: dict) -> None:
    task = make_task(data["bin"])
    task.load_dataset("train")
    inner = task.dataset("train")
    alignments = KnowledgeAlignments.load(data["bin"] / "train.align")
    for kwargs, what in (({"remove_eos_from_source": True}, "remove_eos_from_source"),
                         ({"append_bos": True}, "append_bos")):
        ds = LanguagePairDataset(inner.src, inner.src_sizes, inner.src_dict, inner.tgt, inner.tgt_sizes,
                                 inner.tgt_dict, **kwargs)
        with pytest.raises(ValueError, match=what):
            KnowledgeAlignedDataset(ds, alignments)
    wrapped = KnowledgeAlignedDataset(inner, alignments)
    assert len(wrapped) == len(inner) and (wrapped.sizes == inner.sizes).all()
    assert wrapped.num_tokens(3) == inner.num_tokens(3) and wrapped.size(3) == inner.size(3)
    idx = np.arange(len(inner))
    assert (wrapped.num_tokens_vec(idx) == inner.num_tokens_vec(idx)).all()
