#!/usr/bin/env bash
# Shared body of the per-dataset generate_kid.sh recipes: knowledge-infused decoding (KID), paper
# ../shared/papers/knowledge_infused_decoding.txt, on a trained dialogue model. Stages (STAGES,
# in this order):
#   collection (optional) DPR_PASSAGES, the paper's knowledge source (DPR's psgs_w100.tsv[.gz]:
#              id<TAB>text<TAB>title, header line, CSV quoting) -> kid-convert-dpr -> COLLECTION
#              (id<TAB>title<TAB>text)
#   retrieve   kid-retrieve: the TOP_K passages of COLLECTION for every SUBSET context (§3.1);
#              RETRIEVER = dense (MiniLM, or the BERT/DPR checkpoint DENSE_MODEL; faiss inner
#              product) | sparse (BM25) | random (the ablation) -> KID_DIR/SUBSET.TAG.retrieval.jsonl
#   trie       kid-build-trie: spaCy triples of the retrieved passages -> one knowledge trie per
#              example (§3.2, A.2.1) -> KID_DIR/SUBSET.TAG.trie.jsonl (line i = example i)
#   decode     fairseq-generate on CHECKPOINT, one output per decoder in DECODERS:
#                sample  sampling (top-p SAMPLING_TOPP or top-k SAMPLING_TOPK, SEED)
#                                                              -> OUT_DIR/SUBSET.sample.out
#                beam5   beam search (BEAM = 5)                -> OUT_DIR/SUBSET.beam5.out
#                kid     sampling + --kid: entity memory, HOPS-hop trie query, KID_STEPS policy
#                        steps per token (§3.3, Alg. 1-2; KID_SOLVER=sigma: the closed-form
#                        update at KL = KID_SIGMA instead; KID_SOLVER=kv: the release's update of
#                        the cached keys/values, KID_KV_*)     -> OUT_DIR/SUBSET.KID_NAME.out
#                little  sampling + --kid-mode little (Little KID, A.3)
#                                                              -> OUT_DIR/SUBSET.LITTLE_NAME.out
#              sample, kid and little share SEED: they differ by the knowledge only
#              (KID_STEPS=0 gives the sample output token for token); with SEED_SCOPE=example
#              (the default) an example's draws do not depend on its batch, so an output differs
#              from sample's only where KID changed that example's distributions
#   evaluate   dialog-metrics per decoder, METRICS (default: knowledge F1 against KNOWLEDGE;
#              unigram F1, ROUGE-L, BLEU-1 against REFERENCE; Distinct-2; length)
#              -> OUT_DIR/SUBSET.<output name>.metrics.json, and one markdown table METRICS_MD
#              (rebuilt by every run; APPEND_MD=1 adds rows instead)
# Ablations. TAG = [COLLECTION_NAME.]RETRIEVER.kTOP_K names the retrieval and trie files,
# KID_NAME = kid.TAG.hHOPS[.KID_SOLVER] (HOPS unset: the default hops; the solver only when KID_SOLVER
# is set) and LITTLE_NAME = little.TAG[.KID_SOLVER] the decoder
# outputs, so the paper's ablations (§4.3: retriever, Table 3; hops, Fig. 2b; documents, Fig. 2a)
# are loops that keep every output, e.g. on WoW:
#   for r in dense sparse random; do
#     RETRIEVER=$r DECODERS="kid little" APPEND_MD=1 METRICS_MD=work/wow_mini/retrievers.md \
#       bash examples/wow/generate_kid.sh
#   done
#   for h in 1 2 3 4; do   # the RETRIEVER/TOP_K tries exist already: decode and score only
#     HOPS=$h STAGES="decode evaluate" DECODERS=kid APPEND_MD=1 METRICS_MD=work/wow_mini/hops.md \
#       bash examples/wow/generate_kid.sh
#   done
# Expects WORK and COLLECTION from the calling recipe; extra arguments go to every
# fairseq-generate call.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
: "${WORK:?set WORK}"

# --- data and model (prepare.sh / train_transformer.sh outputs) -----------------------------
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"
TOK_DIR="${TOK_DIR:-$WORK/tok}"
SUBSET="${SUBSET:-test}"
SOURCE="${SOURCE:-$TOK_DIR/$SUBSET.src}"         # the contexts, one per example of SUBSET
WORDPIECE="${WORDPIECE:-1}"                       # 1: BERT WordPiece text (## pieces joined first)
CONFIG="${CONFIG:-small}"
CHECKPOINT="${CHECKPOINT:-$WORK/checkpoints/transformer_$CONFIG/checkpoint_best.pt}"
# --- knowledge: collection, retrieval, tries ------------------------------------------------
COLLECTION="${COLLECTION:-}"                      # CMU_DoG, WoW mini, wiki summaries, .jsonl or .tsv
COLLECTION_FORMAT="${COLLECTION_FORMAT:-auto}"
MAX_WORDS="${MAX_WORDS:-100}"                     # wiki_summaries: words per passage (RAG/DPR: 100)
DPR_PASSAGES="${DPR_PASSAGES:-}"                  # stage collection: psgs_w100.tsv[.gz] -> COLLECTION=*.tsv
DPR_PASSAGES_URL="${DPR_PASSAGES_URL:-https://dl.fbaipublicfiles.com/dpr/wikipedia_split/psgs_w100.tsv.gz}"
RETRIEVER="${RETRIEVER:-dense}"                   # dense | sparse | random
TOP_K="${TOP_K:-5}"                               # documents per context (paper: k = 5)
DENSE_MODEL="${DENSE_MODEL:-}"                    # dense: BERT/DPR checkpoint dir (default all-MiniLM-L6-v2)
RETRIEVE_ARGS="${RETRIEVE_ARGS:-}"                # e.g. --device cpu --threads 1 --batch-size 64
TRIE_ARGS="${TRIE_ARGS:-}"                        # e.g. --spacy-model en_core_web_sm
KID_DIR="${KID_DIR:-$WORK/kid}"
CACHE_DIR="${CACHE_DIR:-$KID_DIR/cache}"          # passage embeddings, spaCy triples (keyed by content)
COLLECTION_NAME="${COLLECTION_NAME:-}"            # the collection's part of the file names (e.g. wiki)
KNOWLEDGE_TAG="${KNOWLEDGE_TAG:-${COLLECTION_NAME:+$COLLECTION_NAME.}$RETRIEVER.k$TOP_K}"
RETRIEVAL="${RETRIEVAL:-$KID_DIR/$SUBSET.$KNOWLEDGE_TAG.retrieval.jsonl}"
TRIE="${TRIE:-$KID_DIR/$SUBSET.$KNOWLEDGE_TAG.trie.jsonl}"
# --- decoding -------------------------------------------------------------------------------
DECODERS="${DECODERS:-sample beam5 kid little}"
SEED="${SEED:-1}"
SEED_SCOPE="${SEED_SCOPE:-example}"               # --sampling-seed-scope: example (each example draws from its
                                                  #   own stream: sample, kid and little pair example by example)
                                                  #   | run (fairseq's one stream per run, as before 2026-12-07)
SAMPLING_TOPP="${SAMPLING_TOPP:-0.9}"             # top-p sampling (paper: p = 0.9); -1 = off
SAMPLING_TOPK="${SAMPLING_TOPK:--1}"              # top-k (paper: k = 20); fairseq: top-p wins if both > 0
BEAM="${BEAM:-5}"
LENPEN="${LENPEN:-1.0}"
BATCH_SIZE="${BATCH_SIZE:-64}"
MAX_LEN_B="${MAX_LEN_B:-50}"                      # responses are at most MAX_LEN_B tokens
# KID: each variable below becomes its --kid-* flag only when set; unset, fairseq-generate takes the
# default of informative_dialogue/kid/options.py (KIDOptions: the paper's settings)
HOPS="${HOPS:-}"                                  # --kid-hops: h_max
KID_STEPS="${KID_STEPS:-}"                        # --kid-steps: K Adam steps per token (0 = plain decoding)
KID_LR="${KID_LR:-}"                              # --kid-lr: Adam step size
KID_SIGMA="${KID_SIGMA:-}"                        # --kid-sigma: target KL (sigma solver: the per-step KL spent)
KID_SOLVER="${KID_SOLVER:-}"                      # --kid-solver: adam (Algorithm 1) | sigma (closed form at KL = sigma)
                                                  #   | kv (the authors' release: perturbs the cached keys/values)
KID_KV_STEP="${KID_KV_STEP:-}"                    # --kid-kv-step: kv, step size of each gradient step
KID_KV_KL="${KID_KV_KL:-}"                        # --kid-kv-kl: kv, scale of the KL term
KID_KV_GAMMA="${KID_KV_GAMMA:-}"                  # --kid-kv-gamma: kv, exponent of the gradient-norm normalisation
KID_KV_MIX="${KID_KV_MIX:-}"                      # --kid-kv-mix: kv, weight of the perturbed distribution in the mixture
KID_SUBWORDS="${KID_SUBWORDS:-}"                  # --kid-subwords: first | all subwords of each knowledge word
KID_MEMORY="${KID_MEMORY:-}"                      # --kid-memory: w_max (unset: the hops)
KID_ARGS="${KID_ARGS:-}"                          # more, e.g. --kid-entity content --kid-beta 2 --kid-allow-empty-tries
HOPS_NAME="${HOPS:-$(python3 -m informative_dialogue.kid.options hops)}"   # the hops as file names show them
KID_NAME="${KID_NAME:-kid.$KNOWLEDGE_TAG.h$HOPS_NAME${KID_SOLVER:+.$KID_SOLVER}}"
LITTLE_NAME="${LITTLE_NAME:-little.$KNOWLEDGE_TAG${KID_SOLVER:+.$KID_SOLVER}}"
OUT_DIR="${OUT_DIR:-$(dirname "$CHECKPOINT")/gen_kid}"
# --- evaluation -----------------------------------------------------------------------------
# references, one per example (fairseq's T- lines show out-of-vocabulary words as <<unk>>); empty: T- lines
REFERENCE="${REFERENCE-$TOK_DIR/$SUBSET.tgt}"
KNOWLEDGE="${KNOWLEDGE-$TOK_DIR/$SUBSET.knowledge}" # grounding text per example (kF1); empty: none
KNOWLEDGE_SEPARATOR="${KNOWLEDGE_SEPARATOR-__knowledge__}"  # dropped from KNOWLEDGE before kF1 (empty: nothing dropped)
METRICS="${METRICS:-kf1,f1,rougeL,bleu1,dist2,avg_len}"
NAME="${NAME:-$(basename "$(dirname "$CHECKPOINT")")}"
METRICS_MD="${METRICS_MD:-$OUT_DIR/metrics.$KNOWLEDGE_TAG.h$HOPS_NAME.md}"
APPEND_MD="${APPEND_MD:-0}"
STAGES="${STAGES:-retrieve trie decode evaluate}"
# -------------------------------------------------------------------------------------------

wordpiece_flag=()
[ "$WORDPIECE" = 1 ] && wordpiece_flag=(--wordpiece)
collection_args=(--collection "$COLLECTION" --collection-format "$COLLECTION_FORMAT" --max-words "$MAX_WORDS")
check_collection() {
  [ -n "$COLLECTION" ] || { echo "set COLLECTION (the passages to retrieve from)" >&2; exit 1; }
  [ -e "$COLLECTION" ] || { echo "collection not found: $COLLECTION" >&2; exit 1; }
}
# decoder_out DECODER -> its output file
decoder_out() {
  case "$1" in
    kid) echo "$OUT_DIR/$SUBSET.$KID_NAME.out" ;;
    little) echo "$OUT_DIR/$SUBSET.$LITTLE_NAME.out" ;;
    *) echo "$OUT_DIR/$SUBSET.$1.out" ;;
  esac
}

if has_stage collection; then
  : "${DPR_PASSAGES:?stage collection needs DPR_PASSAGES (psgs_w100.tsv or .tsv.gz)}"
  [[ "$COLLECTION" == *.tsv ]] || { echo "stage collection writes COLLECTION as .tsv; got '$COLLECTION'" >&2; exit 1; }
  if [ ! -e "$DPR_PASSAGES" ]; then
    mkdir -p "$(dirname "$DPR_PASSAGES")"
    wget -q -O "$DPR_PASSAGES" "$DPR_PASSAGES_URL"
  fi
  mkdir -p "$(dirname "$COLLECTION")"
  kid-convert-dpr --input "$DPR_PASSAGES" --output "$COLLECTION"
fi

if has_stage retrieve; then
  check_collection
  [ -f "$SOURCE" ] || { echo "contexts not found: $SOURCE (run prepare first)" >&2; exit 1; }
  mkdir -p "$KID_DIR" "$CACHE_DIR"
  # shellcheck disable=SC2086
  kid-retrieve --input "$SOURCE" "${wordpiece_flag[@]}" "${collection_args[@]}" --retriever "$RETRIEVER" \
    --top-k "$TOP_K" --seed "$SEED" --cache-dir "$CACHE_DIR" ${DENSE_MODEL:+--model "$DENSE_MODEL"} \
    $RETRIEVE_ARGS --output "$RETRIEVAL"
  echo "wrote $RETRIEVAL"
fi

if has_stage trie; then
  check_collection
  [ -f "$RETRIEVAL" ] || { echo "retrieval not found: $RETRIEVAL (stage retrieve)" >&2; exit 1; }
  mkdir -p "$CACHE_DIR"
  # shellcheck disable=SC2086
  kid-build-trie --retrieval "$RETRIEVAL" "${collection_args[@]}" --source "$SOURCE" "${wordpiece_flag[@]}" \
    --top-k "$TOP_K" --triples-cache "$CACHE_DIR/triples.jsonl" $TRIE_ARGS --output "$TRIE"
  echo "wrote $TRIE"
fi

if has_stage decode; then
  [ -f "$CHECKPOINT" ] || { echo "checkpoint not found: $CHECKPOINT" >&2; exit 1; }
  mkdir -p "$OUT_DIR"
  sampling=(--sampling --beam 1 --nbest 1 --seed "$SEED" --sampling-topp "$SAMPLING_TOPP" --sampling-topk "$SAMPLING_TOPK"
            --sampling-seed-scope "$SEED_SCOPE")
  # shellcheck disable=SC2206
  kid=(--kid --kid-trie "$TRIE" ${HOPS:+--kid-hops "$HOPS"} ${KID_STEPS:+--kid-steps "$KID_STEPS"}
       ${KID_LR:+--kid-lr "$KID_LR"} ${KID_SIGMA:+--kid-sigma "$KID_SIGMA"} ${KID_SUBWORDS:+--kid-subwords "$KID_SUBWORDS"}
       ${KID_MEMORY:+--kid-memory "$KID_MEMORY"} ${KID_SOLVER:+--kid-solver "$KID_SOLVER"}
       ${KID_KV_STEP:+--kid-kv-step "$KID_KV_STEP"} ${KID_KV_KL:+--kid-kv-kl "$KID_KV_KL"}
       ${KID_KV_GAMMA:+--kid-kv-gamma "$KID_KV_GAMMA"} ${KID_KV_MIX:+--kid-kv-mix "$KID_KV_MIX"} $KID_ARGS)
  for decoder in $DECODERS; do
    case "$decoder" in
      sample) search=("${sampling[@]}") ;;
      beam5)  search=(--beam "$BEAM" --lenpen "$LENPEN") ;;
      kid)    search=("${sampling[@]}" "${kid[@]}" --kid-mode kid) ;;
      little) search=("${sampling[@]}" "${kid[@]}" --kid-mode little) ;;
      *) echo "unknown decoder $decoder (sample|beam5|kid|little)" >&2; exit 1 ;;
    esac
    if [ "$decoder" = kid ] || [ "$decoder" = little ]; then
      [ -f "$TRIE" ] || { echo "knowledge tries not found: $TRIE (stages retrieve trie)" >&2; exit 1; }
      if [ -f "$SOURCE" ] && [ "$(wc -l < "$TRIE")" != "$(wc -l < "$SOURCE")" ]; then
        echo "$TRIE has $(wc -l < "$TRIE") lines for the $(wc -l < "$SOURCE") examples of $SOURCE" >&2; exit 1
      fi
    fi
    out="$(decoder_out "$decoder")"
    fairseq-generate "$DATA_BIN" --user-dir "$USER_DIR" --task knowledge_dialog \
      --source-lang src --target-lang tgt --path "$CHECKPOINT" --gen-subset "$SUBSET" \
      --batch-size "$BATCH_SIZE" --max-len-b "$MAX_LEN_B" "${search[@]}" "$@" > "$out"
    echo "wrote $out"
  done
fi

if has_stage evaluate; then
  mkdir -p "$OUT_DIR"
  metric_args=(--metrics "$METRICS")
  [ "$WORDPIECE" = 1 ] && metric_args+=(--wordpiece-detok)
  [ -n "$REFERENCE" ] && metric_args+=(--ref "$REFERENCE")
  if [ -n "$KNOWLEDGE" ]; then
    [ -f "$KNOWLEDGE" ] || { echo "knowledge not found: $KNOWLEDGE (KNOWLEDGE= for none)" >&2; exit 1; }
    # the separator between knowledge sentences is no knowledge (kF1 would count it as a word)
    metric_args+=(--knowledge "$KNOWLEDGE" ${KNOWLEDGE_SEPARATOR:+--knowledge-drop-token "$KNOWLEDGE_SEPARATOR"})
  fi
  [ "$APPEND_MD" = 1 ] || rm -f "$METRICS_MD"
  for decoder in $DECODERS; do
    out="$(decoder_out "$decoder")"
    [ -f "$out" ] || { echo "decoder output not found: $out (stage decode)" >&2; exit 1; }
    name="$(basename "$out" .out)"
    dialog-metrics --gen-out "$out" "${metric_args[@]}" --name "$NAME ${name#"$SUBSET".}" \
      --json-out "${out%.out}.metrics.json" --append-md "$METRICS_MD" > /dev/null
  done
  cat "$METRICS_MD"
fi
