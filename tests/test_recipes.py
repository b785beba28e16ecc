"""The DailyDialog shell recipes as a user runs them: prepare.sh -> train_transformer.sh ->
generate.sh -> evaluate.sh, on a slice of the real data with the tiny configuration."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT

RECIPES = REPO_ROOT / "examples" / "dailydialog"


def run_recipe(name: str, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(["bash", str(RECIPES / name), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_dailydialog_recipes_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    env = dict(os.environ, WORK=str(tmp_path / "dd"), SHARED_DATA=str(shared_data), MAX_DIALOGUES="25",
               CONFIG="tiny", MAX_EPOCH="1", DECODERS="greedy beam5", BATCH_SIZE="32", MAX_LEN_B="8")
    run_recipe("prepare.sh", env)
    assert (tmp_path / "dd" / "data-bin" / "dict.src.txt").is_file()
    run_recipe("train_transformer.sh", env, "--max-update", "3")
    ckpt_dir = tmp_path / "dd" / "checkpoints" / "transformer_tiny"
    env["CHECKPOINT"] = str(ckpt_dir / "checkpoint_best.pt")
    run_recipe("generate.sh", env)
    table = run_recipe("evaluate.sh", env)
    assert "transformer_tiny greedy" in table and "transformer_tiny beam5" in table
    n_test = len((tmp_path / "dd" / "tok" / "test.tgt").read_text().splitlines())
    for decoder in ("greedy", "beam5"):
        metrics = json.loads((ckpt_dir / "gen" / f"test.{decoder}.metrics.json").read_text())
        assert metrics["n_examples"] == n_test
        assert metrics["ppl"] > 1.0  # test-set perplexity from fairseq-validate
        # scored against the tokenised responses, not fairseq's T- lines (which show <<unk>>)
        assert metrics["settings"]["files"]["ref"] == str(tmp_path / "dd" / "tok" / "test.tgt")


def stand_in_train(tmp_path: Path, **extra: str) -> list[str]:
    """examples/common/train_transformer.sh with a stand-in fairseq-train that prints its
    arguments: the arguments it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "fairseq-train"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "PATIENCE", "MAX_EPOCH", "LR", "SAVE_DIR")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", WORK=str(tmp_path), SAVE_DIR=str(tmp_path / "ckpt"), **extra)
    proc = subprocess.run(["bash", str(REPO_ROOT / "examples" / "common" / "train_transformer.sh")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_compact_configuration_and_early_stopping_reach_fairseq_train(tmp_path: Path) -> None:
    """CONFIG=compact is the 2+2-layer 128/512 model (and env.sh's encoder_dim agrees);
    PATIENCE becomes fairseq's --patience and is absent unless set."""
    args = stand_in_train(tmp_path, CONFIG="compact", PATIENCE="3", MAX_EPOCH="60")
    assert [flag(args, f) for f in ("--encoder-layers", "--decoder-layers", "--encoder-embed-dim",
                                    "--decoder-ffn-embed-dim", "--patience", "--max-epoch")] == [
        "2", "2", "128", "512", "3", "60"]
    dim = subprocess.run(["bash", "-c", f'source "{REPO_ROOT}/examples/common/env.sh"; encoder_dim compact'],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert dim == flag(args, "--encoder-embed-dim")
    assert "--patience" not in stand_in_train(tmp_path, CONFIG="small")


def test_subword_format_of_each_tokenizer_and_an_unknown_one_is_an_error(tmp_path: Path) -> None:
    def sub(tokenizer: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f'source "{REPO_ROOT}/examples/common/env.sh"; subword_format {tokenizer}'],
                              capture_output=True, text=True)

    assert [sub(t).stdout.strip() for t in ("bert", "spm")] == ["wordpiece", "sentencepiece"]
    bad = sub("xx")
    assert bad.returncode != 0 and "unknown TOKENIZER 'xx' (bert or spm)" in bad.stderr
    # the DailyDialog KI recipes stop on it before doing anything
    for recipe in ("train_ki.sh", "train_ki_nd.sh"):
        proc = subprocess.run(["bash", str(RECIPES / recipe)], capture_output=True, text=True,
                              env=dict(os.environ, TOKENIZER="xx", WORK=str(tmp_path)))
        assert proc.returncode != 0 and "unknown TOKENIZER 'xx'" in proc.stderr, recipe
