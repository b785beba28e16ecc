#!/usr/bin/env bash
# Shared body of the per-dataset train_ki.sh recipes: knowledge internalization (KI), paper
# ../shared/papers/knowledge_internalization.txt. Stages (STAGES, in this order):
#   kb         build-knowledge-base: Wikipedia title + first sentence, WordNet glosses, CMU_DoG
#              sections, WoW knowledge sentences -> KB_DIR/items.tsv (ids 1..N)
#   retriever  ki-train-retriever: token-level retriever, weak supervision from the Wikipedia items
#   index      ki-encode-knowledge: g(K) for every item -> INDEX_DIR/knowledge_table.npy + faiss index
#   mine       ki-mine (NUM_SHARDS shards, run MINE_JOBS at a time) + ki-merge-alignments per split
#              -> ALIGN_DIR/{split}.align (one knowledge id per source token, 0 = none)
#   ablate     (optional) ki-transform-alignments --mode ABLATION on every split (Table 5, Fig. 3)
#   binarise   KI_BIN = links to DATA_BIN + ki-binarize-alignments per split
#   train      fairseq-train --task knowledge_dialog --knowledge-alignments
#              --criterion knowledge_internalization --ki-knowledge-table KNOWLEDGE_TABLE
#   generate   greedy and beam 5 with plain fairseq-generate (no knowledge at inference)
#   evaluate   PPL + dialog-metrics (KNOWLEDGE= grounding text for knowledge F1)
# The knowledge base, retriever and index do not depend on the dialogue corpus: by default they
# live in KI_HOME and are built once for all datasets. Expects WORK, TOK_DIR, DATA_BIN and
# SUBWORD_FORMAT from the calling recipe; extra arguments go to fairseq-train.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
: "${WORK:?set WORK}" "${SUBWORD_FORMAT:?set SUBWORD_FORMAT (none | wordpiece | sentencepiece)}"
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"
TOK_DIR="${TOK_DIR:-$WORK/tok}"
SPLITS="${SPLITS:-train valid test}"

# --- knowledge sources (official downloads: point these at your copies) ----------------------
KI_HOME="${KI_HOME:-$ROOT/work/ki}"
WIKI_SUMMARIES="${WIKI_SUMMARIES-$SHARED_DATA/wiki_summaries/summaries_en.json.gz}"
WIKI_JSONL="${WIKI_JSONL:-}"                    # extra Wikipedia articles, JSONL {"title","text"} (e.g. a dump)
WORDNET_DIR="${WORDNET_DIR-/usr/share/wordnet}" # WordNet 3.0 data.* (Debian wordnet-base); empty = none
CMU_DOG="${CMU_DOG-$SHARED_DATA/cmu_dog.tar.gz}"
WOW_MINI="${WOW_MINI-$SHARED_DATA/wow_mini}"
KB_ARGS="${KB_ARGS:-}"                          # e.g. --max-items-per-source 1000 (quick runs)
KB_DIR="${KB_DIR:-$KI_HOME/kb}"
# --- retriever and index ---------------------------------------------------------------------
BERT="${BERT:-}"                                # BERT checkpoint dir (default: the shipped all-MiniLM-L6-v2)
RETRIEVER_ARGS="${RETRIEVER_ARGS:---epochs 1}"  # ki-train-retriever flags (e.g. --max-seconds 1800)
RETRIEVER_DIR="${RETRIEVER_DIR:-$KI_HOME/retriever}"
INDEX_ARGS="${INDEX_ARGS:---index auto}"        # exact inner product; IVF beyond 1M items
INDEX_DIR="${INDEX_DIR:-$KI_HOME/index}"
# --- mining ----------------------------------------------------------------------------------
ALIGN_DIR="${ALIGN_DIR:-$WORK/ki/align}"
NUM_SHARDS="${NUM_SHARDS:-1}"                   # shards per split (spread them over machines with
MINE_JOBS="${MINE_JOBS:-1}"                     # SHARD_IDS; MINE_JOBS = shards run at once here)
SHARD_IDS="${SHARD_IDS:-$(seq -s ' ' 0 $((NUM_SHARDS - 1)))}"
MINE_ARGS="${MINE_ARGS:-}"                      # e.g. --no-stopword-masking / --no-exact-match (Table 9)
ABLATION="${ABLATION:-}"                        # random | sentence | factual | linguistic (stage ablate)
# --- training --------------------------------------------------------------------------------
CONFIG="${CONFIG:-small}"                       # paper | small | compact | tiny (env.sh transformer_args)
MAX_EPOCH="${MAX_EPOCH:-2}"
SEED="${SEED:-1}"
KI_LAMBDA="${KI_LAMBDA:-1}"                     # appendix B: lambda = 1
KI_MARGIN="${KI_MARGIN:-0.5}"
KI_ARGS="${KI_ARGS:-}"                          # e.g. --ki-negatives 4 --ki-trainable-table
KNOWLEDGE_TABLE="${KNOWLEDGE_TABLE:-$INDEX_DIR/knowledge_table.npy}"   # g(K), row i = item i, row 0 zeros
KI_BIN="${KI_BIN:-$WORK/ki/data-bin${ABLATION:+_$ABLATION}}"
SAVE_DIR="${SAVE_DIR:-$WORK/checkpoints/ki${ABLATION:+_$ABLATION}_$CONFIG}"
LENPEN="${LENPEN:-1.0}"
KNOWLEDGE="${KNOWLEDGE:-}"
STAGES="${STAGES:-kb retriever index mine binarise train generate evaluate}"
# -------------------------------------------------------------------------------------------


if has_stage kb; then
  kb_args=()
  [ -n "$WIKI_SUMMARIES" ] && kb_args+=(--wiki-summaries "$WIKI_SUMMARIES")
  for jsonl in $WIKI_JSONL; do kb_args+=(--wiki-jsonl "$jsonl"); done
  [ -n "$WORDNET_DIR" ] && kb_args+=(--wordnet-dir "$WORDNET_DIR")
  [ -n "$CMU_DOG" ] && kb_args+=(--cmu-dog "$CMU_DOG")
  [ -n "$WOW_MINI" ] && kb_args+=(--wow-mini "$WOW_MINI")
  # shellcheck disable=SC2086
  build-knowledge-base --output "$KB_DIR" "${kb_args[@]}" $KB_ARGS
fi

if has_stage retriever; then
  # shellcheck disable=SC2086
  ki-train-retriever --knowledge-base "$KB_DIR" --out "$RETRIEVER_DIR" ${BERT:+--bert "$BERT"} $RETRIEVER_ARGS
fi

if has_stage index; then
  # shellcheck disable=SC2086
  ki-encode-knowledge --knowledge-base "$KB_DIR" --retriever "$RETRIEVER_DIR" --out "$INDEX_DIR" $INDEX_ARGS
fi

if has_stage mine; then
  mkdir -p "$ALIGN_DIR"
  for split in $SPLITS; do
    running=0
    for shard in $SHARD_IDS; do
      # shellcheck disable=SC2086
      ki-mine --source "$TOK_DIR/$split.src" --index "$INDEX_DIR" --knowledge-base "$KB_DIR" \
        --retriever "$RETRIEVER_DIR" --output "$ALIGN_DIR/$split" --subword-format "$SUBWORD_FORMAT" \
        --num-shards "$NUM_SHARDS" --shard-id "$shard" $MINE_ARGS &
      running=$((running + 1))
      if [ "$running" -ge "$MINE_JOBS" ]; then wait -n; running=$((running - 1)); fi
    done
    while [ "$running" -gt 0 ]; do wait -n; running=$((running - 1)); done
    # merging refuses missing or unfinished shards (e.g. ones run on other machines)
    ki-merge-alignments --output "$ALIGN_DIR/$split.align" --num-shards "$NUM_SHARDS" --source "$TOK_DIR/$split.src"
  done
fi

align_file() { echo "$ALIGN_DIR/$1${ABLATION:+.$ABLATION}.align"; }

if has_stage ablate; then
  : "${ABLATION:?stage ablate needs ABLATION=random|sentence|factual|linguistic}"
  for split in $SPLITS; do
    ki-transform-alignments --mode "$ABLATION" --align "$ALIGN_DIR/$split.align" --source "$TOK_DIR/$split.src" \
      --output "$(align_file "$split")" --subword-format "$SUBWORD_FORMAT" --knowledge-base "$KB_DIR" --seed "$SEED"
  done
fi

if has_stage binarise; then
  [ -f "$DATA_BIN/dict.src.txt" ] || { echo "binarised data not found: $DATA_BIN (run prepare.sh first)" >&2; exit 1; }
  mkdir -p "$KI_BIN"
  for f in "$DATA_BIN"/*; do ln -sfn "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$KI_BIN/$(basename "$f")"; done
  for split in $SPLITS; do
    # ids are checked against the knowledge table's rows where the table exists (stage index)
    table_args=(); [ -f "$KNOWLEDGE_TABLE" ] && table_args=(--ki-knowledge-table "$KNOWLEDGE_TABLE")
    ki-binarize-alignments --align "$(align_file "$split")" --source "$TOK_DIR/$split.src" --destdir "$KI_BIN" \
      --split "$split" "${table_args[@]}"
  done
fi

if has_stage train; then
  CRITERION_ARGS="--criterion knowledge_internalization --label-smoothing 0.1 \
--ki-knowledge-table $KNOWLEDGE_TABLE --ki-encoder-dim $(encoder_dim "$CONFIG") \
--ki-lambda $KI_LAMBDA --ki-margin $KI_MARGIN $KI_ARGS" \
  WORK="$WORK" DATA_BIN="$KI_BIN" CONFIG="$CONFIG" MAX_EPOCH="$MAX_EPOCH" SEED="$SEED" SAVE_DIR="$SAVE_DIR" \
    bash "$ROOT/examples/common/train_transformer.sh" --knowledge-alignments \
    --best-checkpoint-metric nll_loss "$@"
fi

# decoding and PPL read the plain binarised data: a KI model needs no knowledge at inference
decode_and_score "$SAVE_DIR/checkpoint_best.pt" "$KNOWLEDGE"
