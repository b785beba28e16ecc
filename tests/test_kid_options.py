"""KID options (informative_dialogue/kid/options.py): validation with messages that name the
flag, the defaults in one place (every front end reads KIDOptions), the shell recipe passing a
--kid-* flag only when its variable is set, and the cheap import of the Hugging Face processor."""
from __future__ import annotations

import argparse
import inspect
import math
import os
import subprocess
import sys
from dataclasses import fields
from typing import Callable
from pathlib import Path

import pytest

from informative_dialogue.kid.options import HELP, KIDOptions, add_kid_arguments, default, flag, options_from_args
from tests.conftest import REPO_ROOT

FLOATS = ("lr", "sigma", "beta")


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -0.5])
def test_float_options_must_be_finite_and_positive(name: str, value: float) -> None:
    with pytest.raises(ValueError) as e:
        KIDOptions(**{name: value})
    assert str(e.value) == f"--kid-{name} / {name} must be a finite number > 0, got {value!r}"


def test_the_issue_examples_and_the_other_options() -> None:
    with pytest.raises(ValueError, match=r"^--kid-lr / lr must be a finite number > 0, got nan$"):
        KIDOptions(lr=float("nan"))
    with pytest.raises(ValueError, match=r"^--kid-sigma / sigma must be a finite number > 0, got nan$"):
        KIDOptions(sigma=float("nan"))
    bad = {"hops": [0, 1.5, True], "memory": [0, -1], "steps": [-1, 2.0], "mode": ["big"], "entity": ["all"],
           "subwords": ["some"], "allow_empty_tries": [1, "yes"], "lr": ["0.1", True]}
    for name, values in bad.items():
        for v in values:
            with pytest.raises(ValueError, match=f"^{flag(name)} / {name} must be"):
                KIDOptions(**{name: v})
    assert KIDOptions(lr=1, steps=0).lr == 1.0 and isinstance(KIDOptions(lr=1).lr, float)


def test_memory_is_one_name_and_follows_hops() -> None:
    assert KIDOptions().memory == KIDOptions().hops
    assert KIDOptions(hops=2).memory == 2 and KIDOptions(hops=2, memory=5).memory == 5
    assert KIDOptions(hops=3) == KIDOptions(hops=3, memory=3)
    names = {f.name for f in fields(KIDOptions)}
    assert "memory" in names and not names & {"window", "memory_window", "beta_init"}
    assert not hasattr(KIDOptions(), "memory_window")
    with pytest.raises(TypeError):
        KIDOptions(window=3)  # type: ignore[call-arg]


def test_defaults_are_read_from_kid_options() -> None:
    """The argparse helper, the policy update, the token mapper and the HF processor take
    KIDOptions' values; each option has a help text."""
    from informative_dialogue.kid.hf_processor import KIDLogitsProcessor
    from informative_dialogue.kid.policy_update import kid_policy_update
    from informative_dialogue.kid.token_mapping import TokenMapper
    from informative_dialogue.kid.trie import KnowledgeTrie

    assert set(HELP) == {f.name for f in fields(KIDOptions)}
    p = argparse.ArgumentParser()
    add_kid_arguments(p)
    args = p.parse_args([])
    for f in fields(KIDOptions):
        assert getattr(args, "kid_" + f.name) == f.default == default(f.name), f.name
    assert options_from_args(args) == KIDOptions()
    assert options_from_args(p.parse_args(["--kid-allow-empty-tries", "--kid-beta", "3"])) == KIDOptions(
        allow_empty_tries=True, beta=3.0)
    sig = inspect.signature(kid_policy_update).parameters
    assert (sig["steps"].default, sig["lr"].default, sig["sigma"].default) == (
        KIDOptions.steps, KIDOptions.lr, KIDOptions.sigma)
    assert inspect.signature(TokenMapper).parameters["subwords"].default == KIDOptions.subwords
    mapper = TokenMapper(["<s>", "\u0120car", "\u0120engine"], special_ids=[0])
    proc = KIDLogitsProcessor([KnowledgeTrie({"car": ["engine"]})], mapper)
    assert proc.options == KIDOptions()


def test_default_values_for_the_shell() -> None:
    out = subprocess.run([sys.executable, "-m", "informative_dialogue.kid.options", "hops", "steps"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(KIDOptions.hops), str(KIDOptions.steps)]
    with pytest.raises(KeyError):
        default("window")


def test_hf_processor_import_loads_no_fairseq_transformers_or_torch() -> None:
    code = ("import sys; from informative_dialogue.kid.hf_processor import KIDLogitsProcessor; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fairseq', 'transformers', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def stand_in_decode(tmp_path: Path, decoders: str) -> Callable[..., dict[str, list[str]]]:
    """A runner of examples/common/generate_kid.sh's decode stage (``DECODERS``) with a stand-in
    fairseq-generate that prints its arguments: ``run(**env)`` returns {output name: arguments}
    and removes the outputs. Every KID variable of the caller's environment is cleared."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "fairseq-generate"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    (tmp_path / "ckpt.pt").write_text("")
    (tmp_path / "src").write_text("a\nb\n")
    (tmp_path / "trie.jsonl").write_text('{"id": 0, "trie": {}}\n{"id": 1, "trie": {}}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("KID_") and k not in (
        "HOPS", "STAGES", "DECODERS", "OUT_DIR", "METRICS_MD", "LITTLE_NAME")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", WORK=str(tmp_path), STAGES="decode", DECODERS=decoders,
               CHECKPOINT=str(tmp_path / "ckpt.pt"), SOURCE=str(tmp_path / "src"), TRIE=str(tmp_path / "trie.jsonl"),
               OUT_DIR=str(tmp_path / "out"), RETRIEVER="sparse")
    script = str(REPO_ROOT / "examples" / "common" / "generate_kid.sh")

    def run(**extra: str) -> dict[str, list[str]]:
        proc = subprocess.run(["bash", script], capture_output=True, text=True, env=dict(env, **extra))
        assert proc.returncode == 0, proc.stderr
        outs = {}
        for out in sorted((tmp_path / "out").glob("*.out")):
            outs[out.name] = out.read_text().splitlines()
            out.unlink()
        return outs

    return run


def test_recipe_passes_kid_flags_only_when_set(tmp_path: Path) -> None:
    """examples/common/generate_kid.sh's decode stage with a stand-in fairseq-generate that
    prints its arguments: unset variables give no flag (the Python default applies) and the
    output name carries the default hops; set ones give their flag."""
    run = stand_in_decode(tmp_path, "kid")

    def decode(**extra: str) -> list[str]:
        ((name, args),) = run(**extra).items()
        return [name] + args

    plain = decode()
    assert plain[0] == f"test.kid.sparse.k5.h{KIDOptions.hops}.out"
    assert "--kid" in plain and "--kid-trie" in plain
    kid_flags = [a for a in plain if a.startswith("--kid-") and a != "--kid-trie" and a != "--kid-mode"]
    assert kid_flags == []
    set_all = decode(HOPS="2", KID_STEPS="0", KID_LR="0.5", KID_SIGMA="0.1", KID_SUBWORDS="all", KID_MEMORY="3",
                     KID_ARGS="--kid-beta 2")
    assert set_all[0] == "test.kid.sparse.k5.h2.out"
    pairs = {set_all[i]: set_all[i + 1] for i in range(1, len(set_all) - 1) if set_all[i].startswith("--kid-")}
    assert {k: pairs[k] for k in ("--kid-hops", "--kid-steps", "--kid-lr", "--kid-sigma", "--kid-subwords",
                                  "--kid-memory", "--kid-beta")} == {
        "--kid-hops": "2", "--kid-steps": "0", "--kid-lr": "0.5", "--kid-sigma": "0.1", "--kid-subwords": "all",
        "--kid-memory": "3", "--kid-beta": "2"}
