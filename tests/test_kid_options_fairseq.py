"""The --kid-* flags through fairseq: parsed by fairseq's generation parser, set up as the task,
built into the generator (the values reach KIDCore's options and token mapper), invalid values
and unusable trie files rejected when the task / generator is built, and fairseq-generate itself
(in-process and, for the issue's example, as the console script).

The fixture writes a raw-text test split (``--dataset-impl raw``, no preprocessing) and saves the
checkpoint of an untrained tiny Transformer in-process (no fairseq-train)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import List

import pytest
import torch

from fairseq import checkpoint_utils, options, tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from informative_dialogue.kid.options import KIDOptions
from fairseq_plugins.generation.kid_generator import KIDSequenceGenerator
from tests.test_end_to_end import TINY_ARCH, USER_DIR

SOURCES = ["i like my car .", "the dog is loyal .", "how are you ?", "i like my dog ?", "my car is good .",
           "i like the weather ."]
TARGETS = ["the car is engine fuel .", "the dog is pet bark .", "i am good .", "the dog is loyal pet .",
           "the engine is loud .", "the weather is cold ."]
TRIES = {"car": {"car": ["engine", "road trip"]}, "dog": {"dog": ["loyal pet", "bark"]}}


def write_tries(path: Path, tries: List[dict]) -> str:
    path.write_text("".join(json.dumps({"id": i, "entities": None, "trie": t}) + "\n" for i, t in enumerate(tries)))
    return str(path)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("kid_flags")
    d = Dictionary()
    for line in SOURCES + TARGETS:
        for tok in line.split():
            d.add_symbol(tok)
    d.save(str(w / "dict.src.txt"))
    d.save(str(w / "dict.tgt.txt"))
    (w / "test.src-tgt.src").write_text("\n".join(SOURCES) + "\n")
    (w / "test.src-tgt.tgt").write_text("\n".join(TARGETS) + "\n")
    train_args = options.parse_args_and_arch(options.get_training_parser(), [
        str(w), "--user-dir", USER_DIR, "--task", "knowledge_dialog", "--source-lang", "src", "--target-lang", "tgt",
        *TINY_ARCH])
    cfg = convert_namespace_to_omegaconf(train_args)
    torch.manual_seed(1)
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    torch.save({"cfg": cfg, "model": model.state_dict(), "args": None, "extra_state": {},
                "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "Adam",
                                       "lr_scheduler_state": {}, "num_updates": 0}]}, w / "ckpt.pt")
    kinds = [next((k for k in TRIES if k in s), None) for s in SOURCES]
    write_tries(w / "test.trie.jsonl", [TRIES[k] if k else {} for k in kinds])
    write_tries(w / "short.trie.jsonl", [TRIES[k] if k else {} for k in kinds][:4])
    write_tries(w / "empty.trie.jsonl", [{}] * len(SOURCES))
    return w


def generation_args(work: Path, *extra: str) -> List[str]:
    return [str(work), "--user-dir", USER_DIR, "--task", "knowledge_dialog", "--source-lang", "src",
            "--target-lang", "tgt", "--dataset-impl", "raw", "--path", str(work / "ckpt.pt"), "--gen-subset", "test",
            "--max-len-b", "5", "--batch-size", "4", "--required-batch-size-multiple", "1", *extra]


def parse(work: Path, *extra: str):
    """The omegaconf config fairseq-generate builds from these command-line arguments."""
    return convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_generation_parser(), generation_args(work, *extra)))


def build_generator(work: Path, *extra: str, load: bool = True):
    """As fairseq-generate: task, --gen-subset (if ``load``), model, generator."""
    cfg = parse(work, *extra)
    task = tasks.setup_task(cfg.task)
    if load:
        task.load_dataset(cfg.dataset.gen_subset, task_cfg=cfg.task)
    models, _ = checkpoint_utils.load_model_ensemble([cfg.common_eval.path], task=task)
    return task.build_generator(models, cfg.generation)


def test_every_kid_flag_reaches_the_generators_core(work: Path) -> None:
    trie = ["--kid", "--kid-trie", str(work / "test.trie.jsonl")]
    gen = build_generator(work, *trie)
    assert isinstance(gen, KIDSequenceGenerator) and gen.kid_core.options == KIDOptions()
    assert gen.kid_core.mapper.subwords == KIDOptions.subwords
    gen = build_generator(work, *trie, "--kid-sigma", "0.5", "--kid-beta", "2.5", "--kid-subwords", "all",
                          "--kid-memory", "3", "--kid-hops", "2", "--kid-steps", "1", "--kid-lr", "0.3",
                          "--kid-entity", "content", "--kid-mode", "little")
    o = gen.kid_core.options
    assert (o.sigma, o.beta, o.subwords, o.memory, o.hops, o.steps, o.lr, o.entity, o.mode) == (
        0.5, 2.5, "all", 3, 2, 1, 0.3, "content", "little")
    assert gen.kid_core.mapper.subwords == "all"
    # and into the decoding state: the memory length and the initial beta of every hypothesis
    mem = gen.kid_core.new_memory([0], [["car"]], 2, torch.device("cpu"))
    assert mem.window == 3 and mem.beta.tolist() == [2.5, 2.5]


@pytest.mark.parametrize("flag,value", [("lr", "nan"), ("sigma", "nan"), ("beta", "inf"), ("lr", "-inf"),
                                        ("sigma", "0.0")])
def test_invalid_float_flags_fail_when_the_task_is_set_up(work: Path, flag: str, value: str) -> None:
    cfg = parse(work, "--kid", "--kid-trie", str(work / "test.trie.jsonl"), f"--kid-{flag}={value}")
    with pytest.raises(ValueError, match=f"^--kid-{flag} / {flag} must be a finite number > 0, got {value}$"):
        tasks.setup_task(cfg.task)  # before any model is loaded


def test_trie_file_checks_when_the_generator_is_built(work: Path) -> None:
    with pytest.raises(ValueError, match=r"has 4 lines but the generation subset has 6 examples"):
        build_generator(work, "--kid", "--kid-trie", str(work / "short.trie.jsonl"))
    # the subset is unknown when no dataset is loaded (fairseq-interactive): checked at example 4
    assert build_generator(work, "--kid", "--kid-trie", str(work / "short.trie.jsonl"), load=False).kid_core
    with pytest.raises(ValueError, match=r"holds no knowledge \(6 tries, all empty\).*--kid-allow-empty-tries"):
        build_generator(work, "--kid", "--kid-trie", str(work / "empty.trie.jsonl"))
    gen = build_generator(work, "--kid", "--kid-trie", str(work / "empty.trie.jsonl"), "--kid-allow-empty-tries")
    assert gen.kid_core.disabled and gen.kid_core.options.allow_empty_tries


def run_generate(work: Path, out: Path, *extra: str) -> List[str]:
    """fairseq-generate's main, in this process; its H-/D-/P- lines."""
    from fairseq_cli import generate

    generate.main(parse(work, "--results-path", str(out), *extra))
    lines = (out / "generate-test.txt").read_text().splitlines()
    return [ln for ln in lines if ln[:2] in ("H-", "D-", "P-")]


def test_fairseq_generate_allow_empty_tries_is_plain_decoding(work: Path, tmp_path: Path) -> None:
    plain = run_generate(work, tmp_path / "plain", "--beam", "2")
    assert len([ln for ln in plain if ln.startswith("H-")]) == len(SOURCES)
    empty = run_generate(work, tmp_path / "empty", "--beam", "2", "--kid", "--kid-trie", str(work / "empty.trie.jsonl"),
                         "--kid-allow-empty-tries")
    assert empty == plain


def test_fairseq_generate_cli_names_the_flag(work: Path) -> None:
    """The issue's example: `--kid-lr nan` used to end in fairseq's `AssertionError: 20 < 20`."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    proc = subprocess.run(["fairseq-generate", *generation_args(work, "--kid", "--kid-trie",
                                                                str(work / "test.trie.jsonl"), "--kid-lr", "nan")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "ValueError: --kid-lr / lr must be a finite number > 0, got nan" in proc.stderr
    assert "AssertionError" not in proc.stderr and "H-0" not in proc.stdout
