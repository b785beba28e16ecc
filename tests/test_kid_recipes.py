"""The knowledge-infused decoding recipes as a user runs them, on slices of the real data with the
tiny Transformer: CMU_DoG (prepare.sh -> train_transformer.sh -> generate_kid.sh) and WoW mini
(prepare_mini.sh -> common/train_transformer.sh -> generate_kid.sh), each retrieve (BM25) ->
trie -> decode (sampling, beam 5, KID, Little KID) -> evaluate; on CMU_DoG also the dense
retriever with another hop count appended to the same table (the ablation loops), on WoW
``KID_STEPS=0`` against plain sampling. The two pipelines run side by side (one core each)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
DECODERS = ("sample", "beam5", "kid", "little")


def run_recipe(script: str, env: dict[str, str], *args: str) -> str:
    """Run examples/SCRIPT; returns its stdout followed by its stderr (the logs)."""
    proc = subprocess.run(["bash", str(EXAMPLES / script), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def cmu_dog_slice(tarball: Path, dest: Path, conversations: dict[str, int]) -> Path:
    """The official folder layout (Conversations/{split}/*.json, WikiData/*.json) with all 30
    documents and the first ``conversations[split]`` conversations (by file name) of each split."""
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for m in members:
            parts = m.name.split("/")
            if parts[-2] == "WikiData":
                tar.extract(m, dest, **safe)
        for split, n in conversations.items():
            convs = sorted((m for m in members if m.name.split("/")[-2:-1] == [split]), key=lambda m: m.name)
            for m in convs[:n]:
                tar.extract(m, dest, **safe)
    (root,) = {p.parent for p in dest.rglob("WikiData")}
    return root


def hypotheses(gen_out: Path) -> list[tuple[int, str]]:
    """(example id, hypothesis) of every H- line of a fairseq-generate output."""
    rows = []
    for line in gen_out.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^H-(\d+)\t[^\t]*\t(.*)$", line)
        if m:
            rows.append((int(m.group(1)), m.group(2)))
    return rows


def generated_lines(gen_out: Path) -> list[str]:
    return [ln for ln in gen_out.read_text(encoding="utf-8").splitlines() if re.match(r"^[STHDP]-\d+\t", ln)]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def runs(shared_data: Path, tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("kid_recipes")
    base = dict(os.environ, SHARED_DATA=str(shared_data), CONFIG="tiny", MAX_EPOCH="1", BATCH_SIZE="32",
                MAX_LEN_B="8", RETRIEVER="sparse", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for leaked in ("WORK", "DATA_BIN", "TOK_DIR", "CHECKPOINT", "OUT_DIR", "KID_DIR", "STAGES", "DECODERS", "SUBSET",
                   "COLLECTION", "COLLECTION_NAME", "KNOWLEDGE_SOURCE", "KNOWLEDGE_TAG", "KNOWLEDGE", "REFERENCE",
                   "RETRIEVE_ARGS", "TOP_K", "HOPS", "KID_STEPS", "KID_SOLVER", "KID_NAME", "LITTLE_NAME", "KID_ARGS", "SEED",
                   "METRICS", "METRICS_MD", "APPEND_MD", "MAX_EXAMPLES", "CMU_DOG", "WOW_MINI"):
        base.pop(leaked, None)

    def cmu_dog() -> dict:
        work = root / "cmu_dog"
        folder = cmu_dog_slice(shared_data / "cmu_dog.tar.gz", root / "cmu_dog_slice",
                               {"train": 8, "valid": 1, "test": 1})
        env = dict(base, WORK=str(work), CMU_DOG=str(folder))
        run_recipe("cmu_dog/prepare.sh", env)
        run_recipe("cmu_dog/train_transformer.sh", env, "--max-update", "3")
        table = run_recipe("cmu_dog/generate_kid.sh", env)
        out = work / "checkpoints" / "transformer_tiny" / "gen_kid"
        return dict(work=work, out=out, tag="cmu_dog.sparse.k5", table=table, env=env)

    def wow() -> dict:
        work = root / "wow"
        env = dict(base, WORK=str(work), MAX_EXAMPLES="20")
        run_recipe("wow/prepare_mini.sh", env)
        run_recipe("common/train_transformer.sh", env, "--max-update", "3")
        table = run_recipe("wow/generate_kid.sh", env)
        run_recipe("wow/generate_kid.sh", dict(env, KID_STEPS="0", KID_NAME="kid.steps0", DECODERS="kid",
                                                STAGES="decode"))
        out = work / "checkpoints" / "transformer_tiny" / "gen_kid"
        return dict(work=work, out=out, tag="wow_mini.sparse.k5", table=table)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {"cmu_dog": pool.submit(cmu_dog), "wow": pool.submit(wow)}
        return {name: f.result() for name, f in futures.items()}


def output_name(decoder: str, tag: str, hops: int = 4) -> str:
    return {"kid": f"kid.{tag}.h{hops}", "little": f"little.{tag}"}.get(decoder, decoder)


@pytest.mark.parametrize("dataset", ["cmu_dog", "wow"])
def test_every_decoder_one_hypothesis_per_example_and_metrics(runs: dict, dataset: str) -> None:
    r = runs[dataset]
    n_test = len(lines(r["work"] / "tok" / "test.src"))
    assert n_test == {"cmu_dog": 21, "wow": 20}[dataset]  # measured: 1 test conversation / MAX_EXAMPLES
    table_rows = [ln for ln in lines(r["out"] / f"metrics.{r['tag']}.h4.md") if ln.startswith("| transformer_tiny")]
    for decoder in DECODERS:
        name = output_name(decoder, r["tag"])
        hyps = hypotheses(r["out"] / f"test.{name}.out")
        assert sorted(i for i, _ in hyps) == list(range(n_test)), decoder
        assert sum(bool(h.strip()) for _, h in hyps) > 0, decoder
        metrics = json.loads((r["out"] / f"test.{name}.metrics.json").read_text())
        assert metrics["n_examples"] == n_test
        for key in ("kf1", "f1", "rougeL", "bleu1", "dist2"):
            assert 0.0 <= metrics[key] <= 1.0, (decoder, key)
        assert metrics["settings"]["files"]["knowledge"].endswith("tok/test.knowledge")
        assert metrics["settings"]["knowledge_drop_tokens"] == ["__knowledge__"]
        assert f"transformer_tiny {name} |" in r["table"]
        assert any(row.startswith(f"| transformer_tiny {name} |") for row in table_rows)
    # knowledge F1 is against the grounding text; WoW's prepare_mini.sh separates the sentences
    # by a token that dialog-metrics drops (--knowledge-drop-token); CMU_DoG's is one section
    knowledge = lines(r["work"] / "tok" / "test.knowledge")
    separated = sum("__knowledge__" in k for k in knowledge)
    assert len(knowledge) == n_test and (separated > 0 if dataset == "wow" else separated == 0)
    assert sum(bool(k) for k in knowledge) >= n_test // 2


@pytest.mark.parametrize("dataset", ["cmu_dog", "wow"])
def test_knowledge_files_and_kid_changes_sampling(runs: dict, dataset: str) -> None:
    r = runs[dataset]
    n_test = len(lines(r["work"] / "tok" / "test.src"))
    retrieval = [json.loads(ln) for ln in lines(r["work"] / "kid" / f"test.{r['tag']}.retrieval.jsonl")]
    assert [x["line"] for x in retrieval] == list(range(n_test))
    assert all(len(x["passages"]) == 5 for x in retrieval)  # TOP_K
    tries = [json.loads(ln) for ln in lines(r["work"] / "kid" / f"test.{r['tag']}.trie.jsonl")]
    assert [t["id"] for t in tries] == list(range(n_test))
    assert sum(bool(t["trie"]) for t in tries) >= n_test // 2
    # same seed, same sampler: KID and Little KID differ from plain sampling by the knowledge
    sample = hypotheses(r["out"] / "test.sample.out")
    for decoder in ("kid", "little"):
        assert hypotheses(r["out"] / f"test.{output_name(decoder, r['tag'])}.out") != sample, decoder


def test_kid_steps_0_is_plain_sampling(runs: dict) -> None:
    r = runs["wow"]
    plain = generated_lines(r["out"] / "test.sample.out")
    assert len(plain) == 5 * 20  # S, T, H, D, P per example
    assert generated_lines(r["out"] / "test.kid.steps0.out") == plain


@pytest.mark.slow  # the sparse run above is the default path; this reruns retrieval, tries and KID
def test_dense_retriever_and_hops_get_their_own_files_and_row(runs: dict) -> None:
    r = runs["cmu_dog"]
    # one step of the retriever and hops loops: the default dense retriever (MiniLM; 64 word
    # pieces per passage for speed), 2 hops, KID only, its row appended to the sparse run's table
    dense_table = run_recipe("cmu_dog/generate_kid.sh", dict(
        r["env"], RETRIEVER="dense", RETRIEVE_ARGS="--device cpu --threads 1 --max-length 64", HOPS="2",
        DECODERS="kid", APPEND_MD="1", METRICS_MD=str(r["out"] / "metrics.cmu_dog.sparse.k5.h4.md")))
    n_test = len(lines(r["work"] / "tok" / "test.src"))
    stats = json.loads((r["work"] / "kid" / "test.cmu_dog.dense.k5.retrieval.jsonl.stats.json").read_text())
    assert stats["retriever"] == "dense" and stats["lines"] == n_test and stats["passages"] == 120
    assert len(lines(r["work"] / "kid" / "test.cmu_dog.dense.k5.trie.jsonl")) == n_test
    dense_out = r["out"] / "test.kid.cmu_dog.dense.k5.h2.out"
    assert sorted(i for i, _ in hypotheses(dense_out)) == list(range(n_test))
    assert "KID: kid, hops 2, memory 2, K 3" in dense_table  # fairseq-generate's log
    # the sparse run's files are kept, and its table got one more row (APPEND_MD=1)
    assert (r["out"] / "test.kid.cmu_dog.sparse.k5.h4.out").is_file()
    rows = [ln for ln in dense_table.splitlines() if ln.startswith("| transformer_tiny")]
    assert [row.split(" | ")[0] for row in rows] == [
        f"| transformer_tiny {name}" for name in
        ("sample", "beam5", "kid.cmu_dog.sparse.k5.h4", "little.cmu_dog.sparse.k5", "kid.cmu_dog.dense.k5.h2")]


def test_kid_effect_sweep(runs: dict) -> None:
    """examples/common/kid_effect.sh: plain sampling, one KID run per RUNS entry and the knowledge
    in the prompt, per-example streams, one effect table; the sigma run spends KL = sigma on the
    rows it updates; a rerun keeps every finished output decoded with the same settings, and
    decodes again one decoded with others."""
    r = runs["cmu_dog"]
    env = dict(r["env"], RUNS="sigma0.5 kv", RESAMPLES="50", DATASET_RECIPE=str(EXAMPLES / "cmu_dog" / "generate_kid.sh"))
    run_recipe("common/kid_effect.sh", env)
    effect = r["out"].parent / "kid_effect" / "seed1"  # each seed its own folder
    for name in ("test.sample", "test.kid.sigma0.5", "test.kid.kv", "test_kprompt.sample"):
        out = effect / f"{name}.out"
        assert sorted(i for i, _ in hypotheses(out)) == list(range(len(lines(r["work"] / "tok" / "test.src"))))
    assert "sampling: each example draws from its own stream" in (effect / "test.kid.sigma0.5.out.log").read_text()
    result = json.loads((effect / "test.seed1.effect.json").read_text())
    assert set(result) == {"plain", "sigma0.5", "kv", "in_prompt"} and "changed" not in result["plain"]
    assert all("delta" in result[run] and "changed" in result[run] for run in ("sigma0.5", "kv", "in_prompt"))
    # in_prompt: the first 64 knowledge tokens as an earlier turn of every context
    prompts, contexts = lines(r["work"] / "tok" / "test_kprompt.src"), lines(r["work"] / "tok" / "test.src")
    knowledge = lines(r["work"] / "tok" / "test.knowledge")
    assert prompts[0] == " ".join(knowledge[0].split()[:64]) + " __eou__ " + contexts[0]
    table = (effect / "test.seed1.effect.md").read_text().splitlines()
    sigma_row = next(row for row in table if row.startswith("| sigma0.5 |"))
    assert sigma_row.split(" | ")[-2] == "0.5000"   # mean KL over updated rows, from the debug lines
    kv_row = next(row for row in table if row.startswith("| kv |"))
    assert float(kv_row.split(" | ")[-2]) > 0       # the kv mode's KL(p || mixture), from its debug lines
    mtimes = {p: p.stat().st_mtime_ns for p in effect.glob("*.out")}
    rerun = run_recipe("common/kid_effect.sh", env)
    assert rerun.count("kept ") == 4 and {p: p.stat().st_mtime_ns for p in effect.glob("*.out")} == mtimes
    settings = effect / "test.kid.kv.out.settings"
    assert "seed=1 seed_scope=example decoder=kid KID_SOLVER=kv" in settings.read_text()
    settings.write_text(settings.read_text().replace("seed=1 ", "seed=2 "))  # as if decoded with seed 2
    rerun = run_recipe("common/kid_effect.sh", env)
    assert rerun.count("kept ") == 3 and "test.kid.kv.out again: decoded with other settings" in rerun
    assert "seed=1 " in settings.read_text()
    assert [p for p in effect.glob("*.out") if p.stat().st_mtime_ns != mtimes[p]] == [effect / "test.kid.kv.out"]


def test_dpr_collection_stage(tmp_path: Path) -> None:
    from data_prep.kid.collection import load_collection

    psgs = tmp_path / "psgs_w100.tsv"
    psgs.write_text('id\ttext\ttitle\n1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n'
                    '2\tThe  Nile is a river.\tNile\n', encoding="utf-8")
    env = dict(os.environ, WORK=str(tmp_path / "w"), STAGES="collection", DPR_PASSAGES=str(psgs),
               COLLECTION=str(tmp_path / "w" / "kid" / "psgs.tsv"))
    run_recipe("common/generate_kid.sh", env)
    passages = load_collection(env["COLLECTION"])
    assert [(p.id, p.title, p.text) for p in passages] == [
        ("1", "Aaron", 'Aaron Aaron ( or ; "Ahärôn") is a prophet'), ("2", "Nile", "The Nile is a river.")]
    psgs.write_text("id\ttitle\ttext\n1\tAaron\tAaron is\n", encoding="utf-8")  # not DPR's column order
    proc = subprocess.run(["bash", str(EXAMPLES / "common" / "generate_kid.sh")], capture_output=True, text=True,
                          env=env)
    assert proc.returncode != 0 and "expected the DPR header" in proc.stderr
