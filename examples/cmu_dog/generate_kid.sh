#!/usr/bin/env bash
# Knowledge-infused decoding (KID) on CMU_DoG with a model from train_transformer.sh: retrieve the
# top-k passages for every test context -> knowledge tries -> sampling, beam 5, KID and Little
# KID -> knowledge F1 (against the document section the speaker saw), F1, ROUGE-L, BLEU-1,
# Distinct-2 in one table. Stages, ablation loops (RETRIEVER, HOPS) and every option:
# examples/common/generate_kid.sh. Run prepare.sh and train_transformer.sh first, then
#   bash examples/cmu_dog/generate_kid.sh [extra fairseq-generate flags]
source "$(dirname "$0")/../common/env.sh"
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$ROOT/work/cmu_dog}"                # prepare.sh's output
CONFIG="${CONFIG:-small}"
CHECKPOINT="${CHECKPOINT:-$WORK/checkpoints/transformer_$CONFIG/checkpoint_best.pt}"
# The passages (KNOWLEDGE_SOURCE, also part of the output file names):
#   cmu_dog  the 30 movie documents, one passage per section (120): CMU_DOG = cmu_dog.tar.gz here,
#            or a clone of the official repository https://github.com/festvox/datasets-CMU_DoG
#   wiki     Wikipedia leads (WIKI_SUMMARIES), cut into 100-word passages
#   NAME     any other collection: KNOWLEDGE_SOURCE=NAME COLLECTION=FILE (.jsonl / .tsv, see README)
KNOWLEDGE_SOURCE="${KNOWLEDGE_SOURCE:-cmu_dog}"
CMU_DOG="${CMU_DOG:-$SHARED_DATA/cmu_dog.tar.gz}"
WIKI_SUMMARIES="${WIKI_SUMMARIES:-$SHARED_DATA/wiki_summaries/summaries_en.json.gz}"
# RETRIEVER (dense | sparse | random), TOP_K, HOPS, KID_STEPS, KID_LR, KID_SIGMA, KID_SOLVER (adam | sigma | kv),
# KID_KV_STEP, KID_KV_KL, KID_KV_GAMMA, KID_KV_MIX, SEED, SEED_SCOPE: the defaults and their meaning are in
# examples/common/generate_kid.sh (set any of them here to override)
SUBSET="${SUBSET:-test}"
KNOWLEDGE="${KNOWLEDGE-$WORK/tok/$SUBSET.knowledge}"   # grounding section, one line per test example
# -------------------------------------------------------------------------------------------
case "$KNOWLEDGE_SOURCE" in
  cmu_dog) COLLECTION="${COLLECTION:-$CMU_DOG}" ;;
  wiki)    COLLECTION="${COLLECTION:-$WIKI_SUMMARIES}" ;;
  *)       : "${COLLECTION:?KNOWLEDGE_SOURCE=$KNOWLEDGE_SOURCE needs COLLECTION=FILE}" ;;
esac
COLLECTION_NAME="$KNOWLEDGE_SOURCE"
export WORK CONFIG CHECKPOINT COLLECTION COLLECTION_NAME RETRIEVER TOP_K HOPS KID_STEPS SEED SUBSET KNOWLEDGE
exec bash "$ROOT/examples/common/generate_kid.sh" "$@"
