"""analysis/method_comparison.py: training table, dialog-metrics columns, distinct responses and
paired-bootstrap differences against the baseline, on hand-made checkpoint folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.method_comparison import distinct_responses, expand_decoders, main, parse_system
from tests.test_training_curve import train, valid

REFS = ["i am fine", "good morning to you", "yes", "maybe"]


def system_dir(root: Path, name: str, hyps: list[str], nll: float, with_gen: bool = True) -> Path:
    d = root / name
    (d / "gen").mkdir(parents=True)
    (d / "train.log").write_text(valid(1, nll + 1, nll + 0.5, 10) + train(1, 30, 35) + valid(2, nll + 0.8, nll, 20)
                                 + train(2, 31, 70) + "x | done training in 71.0 seconds\n")
    if with_gen:
        lines = []
        for i, (h, r) in enumerate(zip(hyps, REFS)):
            lines += [f"S-{i}\tsource {i}", f"T-{i}\t{r}", f"H-{i}\t-0.5\t{h}", f"D-{i}\t-0.5\t{h}", f"P-{i}\t-0.5"]
        lines.append("2026-12-07 | INFO | fairseq_cli.generate | Translated 4 sentences (12 tokens) in 0.1s")
        for dec in ("greedy", "beam5"):
            (d / "gen" / f"test.{dec}.out").write_text("\n".join(lines) + "\n")
            (d / "gen" / f"test.{dec}.metrics.json").write_text(json.dumps(
                {"ppl": 2 ** nll, "bleu4": 0.0123, "dist2": 0.5, "safe": 25.0}))
    return d


def test_report_tables_and_differences(tmp_path: Path) -> None:
    base = system_dir(tmp_path, "base", ["i am fine", "i am fine", "yes", "no"], 5.0)
    other = system_dir(tmp_path, "other", ["i am fine", "good morning", "yes", "no"], 4.5)
    (tmp_path / "ref").write_text("\n".join(REFS) + "\n")
    assert distinct_responses(base / "gen" / "test.greedy.out") == 3
    report = main(["--system", f"baseline={base}", "--system", f"+X={other}", "--baseline", "baseline",
                   "--ref", str(tmp_path / "ref"), "--columns", "ppl,bleu4,dist2,safe", "--resamples", "200",
                   "--markdown", str(tmp_path / "report.md")])
    assert (tmp_path / "report.md").read_text() == report
    assert "| baseline | 2 | 2 | 20 | 5.000 | max epoch | 61 |" in report
    assert "| +X | 2 | 2 | 20 | 4.500 | max epoch | 61 |" in report
    # F1 per example: baseline 1, 0, 1, 0; +X 1, 2/3, 1, 0 -> +16.67 points
    assert report.count("| baseline | 32.00 | 1.23 | 50.00 | 25.00 | 3 | – | – |") == 2
    rows = [line for line in report.splitlines() if line.startswith("| +X | 22.63 | 1.23 | 50.00 | 25.00 | 4 | +16.67 [")]
    assert len(rows) == 2  # greedy and beam5


def test_missing_outputs_are_an_error_or_empty_cells(tmp_path: Path) -> None:
    base = system_dir(tmp_path, "base", ["a", "b", "c", "d"], 5.0)
    running = system_dir(tmp_path, "running", [], 4.0, with_gen=False)
    (tmp_path / "ref").write_text("\n".join(REFS) + "\n")
    args = ["--system", f"baseline={base}", "--system", f"KI={running}", "--baseline", "baseline",
            "--ref", str(tmp_path / "ref"), "--decoders", "greedy", "--columns", "ppl"]
    with pytest.raises(FileNotFoundError, match=r"running/gen/test.greedy.metrics.json not found"):
        main(args)
    assert "| KI | – | – | – | – |" in main(args + ["--allow-missing"])
    with pytest.raises(SystemExit):
        main(args[:-2] + ["--columns", "bogus"])
    with pytest.raises(SystemExit):
        main(["--system", f"a={base}", "--baseline", "b", "--ref", str(tmp_path / "ref")])
    with pytest.raises(ValueError, match="NAME=DIR"):
        parse_system("nodir")


def test_decoders_in_other_folders_and_patterns(tmp_path: Path) -> None:
    """``gen_kid/kid.*`` reads generate_kid.sh's folder and stands for each matching output."""
    base = system_dir(tmp_path, "base", ["i am fine", "i am fine", "yes", "no"], 5.0)
    other = system_dir(tmp_path, "other", ["i am fine", "good morning", "yes", "no"], 4.5)
    for d in (base, other):
        (d / "gen_kid").mkdir()
        for name in ("kid.dense.h4", "kid.dense.h2", "sample"):
            for suffix in ("out", "metrics.json"):
                (d / "gen_kid" / f"test.{name}.{suffix}").write_text((d / "gen" / f"test.greedy.{suffix}").read_text())
    sys_base = parse_system(f"baseline={base}")
    assert expand_decoders(["greedy", "gen_kid/kid.*", "gen_kid/sample"], sys_base, "test") == [
        "greedy", "gen_kid/kid.dense.h2", "gen_kid/kid.dense.h4", "gen_kid/sample"]
    assert sys_base.gen("test", "gen_kid/sample", "out") == base / "gen_kid" / "test.sample.out"
    with pytest.raises(FileNotFoundError, match=r"no test.little.\*.out in .*gen_kid"):
        expand_decoders(["gen_kid/little.*"], sys_base, "test")
    (tmp_path / "ref").write_text("\n".join(REFS) + "\n")
    report = main(["--system", f"baseline={base}", "--system", f"+X={other}", "--baseline", "baseline",
                   "--ref", str(tmp_path / "ref"), "--decoders", "gen_kid/kid.*", "--columns", "ppl",
                   "--resamples", "100"])
    assert "Decoder `gen_kid/kid.dense.h2`" in report and "Decoder `gen_kid/kid.dense.h4`" in report
    assert report.count("| +X | 22.63 | 4 | +16.67 [") == 2
