"""Tiny in-process fairseq set-ups for the negative distillation and unlikelihood tests:
a dummy joined dictionary written to a data folder, configurations parsed by fairseq's own
training parser (so criterion options go through the same dataclass/CLI path as fairseq-train),
tiny Transformer models, batches, and checkpoints that ``checkpoint_utils`` loads."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from fairseq import options, tasks
from fairseq.data import Dictionary, LanguagePairDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import fairseq_plugins  # noqa: F401  (registers the criteria)

WORDS = "a b c d e f g h i j k l m n o p q r s t".split()
TINY_ARCH = [
    "--arch", "transformer", "--share-all-embeddings",
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--dropout", "0.0",
]


def make_data_dir(path: Path, words: Sequence[str] = WORDS) -> Path:
    """A folder with ``dict.src.txt`` and ``dict.tgt.txt`` (the same joined dictionary)."""
    path.mkdir(parents=True, exist_ok=True)
    d = Dictionary()
    for i, w in enumerate(words):
        d.add_symbol(w, n=100 - i)
    for lang in ("src", "tgt"):
        d.save(str(path / f"dict.{lang}.txt"))
    return path


def make_cfg(data_dir: Path, extra: Sequence[str] = (), arch: Sequence[str] = TINY_ARCH,
             task: str = "knowledge_dialog"):
    """A full fairseq config (omegaconf), as fairseq-train builds it from a command line."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[
        str(data_dir), "--task", task, "--source-lang", "src", "--target-lang", "tgt",
        "--optimizer", "adam", "--lr", "0.001", "--seed", "1", "--cpu", *arch, *extra,
    ])
    return convert_namespace_to_omegaconf(args)


def build(cfg):
    """(task, model) of a config; the model in eval mode (deterministic)."""
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    model.eval()
    return task, model


def make_sample(task, pairs: Sequence[tuple[str, str]]) -> dict:
    """A collated batch of (source, target) strings of the dictionary's words."""
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    src = [src_dict.encode_line(s, add_if_not_exist=False).long() for s, _ in pairs]
    tgt = [tgt_dict.encode_line(t, add_if_not_exist=False).long() for _, t in pairs]
    ds = LanguagePairDataset(src, [len(x) for x in src], src_dict, tgt, [len(x) for x in tgt], tgt_dict)
    return ds.collater([ds[i] for i in range(len(pairs))])


PAIRS = [("a b c d", "e f g"), ("h i", "j k l m n"), ("o p q r s t", "a")]


def save_checkpoint(model, cfg, path: Path, task=None) -> Path:
    """Save ``model`` the way fairseq's trainer does (enough for ``load_checkpoint_to_cpu``);
    with ``task``, its ``state_dict()`` as the trainer stores it (``task_state``)."""
    state = {
        "args": None,
        "cfg": cfg,
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "task_state": task.state_dict() if task is not None else {},
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }
    os.makedirs(path.parent, exist_ok=True)
    torch.save(state, path)
    return path


def make_teacher(tmp_path: Path, seed: int = 7, words: Sequence[str] = WORDS,
                 arch: Sequence[str] = TINY_ARCH) -> Path:
    """A randomly initialised tiny teacher checkpoint (its own data folder; ``knowledge_dialog``
    stores its dictionaries' symbols in the checkpoint), returns its path."""
    data = make_data_dir(tmp_path / f"teacher_data_{seed}_{len(words)}", words)
    cfg = make_cfg(data, arch=arch)
    torch.manual_seed(seed)
    task, model = build(cfg)
    return save_checkpoint(model, cfg, tmp_path / f"teacher_{seed}_{len(words)}" / "checkpoint.pt", task)


def binarize(text_dir: Path, out_dir: Path, splits: Sequence[str] = ("train", "valid")) -> Path:
    """What ``fairseq-preprocess --joined-dictionary`` writes for ``{split}.{src,tgt}`` text
    files, done in-process (saves a fairseq start-up in the CLI tests)."""
    from fairseq.data import indexed_dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    d = Dictionary()
    for split in splits:
        for lang in ("src", "tgt"):
            for line in (text_dir / f"{split}.{lang}").read_text().splitlines():
                for w in line.split():
                    d.add_symbol(w)
    d.finalize()
    for lang in ("src", "tgt"):
        d.save(str(out_dir / f"dict.{lang}.txt"))
    for split in splits:
        for lang in ("src", "tgt"):
            prefix = str(out_dir / f"{split}.src-tgt.{lang}")
            builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
            for line in (text_dir / f"{split}.{lang}").read_text().splitlines():
                builder.add_item(d.encode_line(line, add_if_not_exist=False).int())
            builder.finalize(prefix + ".idx")
    return out_dir


def greedy_reference(model, sample, max_len: int, d) -> torch.Tensor:
    """Greedy responses ``(B, max_len)`` re-running the whole decoder on the prefix at every step
    (no incremental state, padding never emitted), padded after EOS: the reference the
    criteria's incremental greedy decoding is checked against."""
    src, lengths = sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"]
    prefix = src.new_full((src.size(0), 1), d.eos())
    done = torch.zeros(src.size(0), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(max_len):
            logits, _ = model(src, lengths, prefix)
            logits[:, -1, d.pad()] = float("-inf")
            nxt = logits[:, -1].argmax(-1).masked_fill(done, d.pad())
            done |= nxt.eq(d.eos())
            prefix = torch.cat([prefix, nxt[:, None]], 1)
    return prefix[:, 1:]


def teacher_forced_probs(model, sample, tokens: torch.Tensor, d) -> torch.Tensor:
    """``p(tokens[b, t] | source_b, [EOS] + tokens[b, :t])`` ``(B, T)`` in float64."""
    net_input = sample["net_input"]
    prev = torch.cat([tokens.new_full((tokens.size(0), 1), d.eos()), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        logits = model(net_input["src_tokens"], net_input["src_lengths"], prev)[0]
    return torch.softmax(logits.double(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
