#!/usr/bin/env bash
# Knowledge-infused decoding (KID) on Wizard of Wikipedia (the mini release, prepare_mini.sh) with
# a model from examples/common/train_transformer.sh: retrieve the top-k passages for every test
# post -> knowledge tries -> sampling, beam 5, KID and Little KID -> knowledge F1 (against the
# example's knowledge sentences), F1, ROUGE-L, BLEU-1, Distinct-2 in one table. Stages,
# ablation loops (RETRIEVER, HOPS) and every option: examples/common/generate_kid.sh.
#   bash examples/wow/prepare_mini.sh
#   WORK=work/wow_mini bash examples/common/train_transformer.sh
#   bash examples/wow/generate_kid.sh [extra fairseq-generate flags]
source "$(dirname "$0")/../common/env.sh"
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$ROOT/work/wow_mini}"               # prepare_mini.sh's output
CONFIG="${CONFIG:-small}"
CHECKPOINT="${CHECKPOINT:-$WORK/checkpoints/transformer_$CONFIG/checkpoint_best.pt}"
# The passages (KNOWLEDGE_SOURCE, also part of the output file names):
#   wow_mini the knowledge sentences of the WoW mini release, all three splits (one passage per
#            distinct sentence; they include the test examples' own knowledge, as WoW's topic
#            passages do)
#   wiki     Wikipedia leads (WIKI_SUMMARIES), cut into 100-word passages
#   dpr      the paper's knowledge source: the 21M 100-word Wikipedia passages of DPR/RAG
#            (DPR_PASSAGES, downloaded from DPR_PASSAGES_URL if absent; converted once to
#            COLLECTION by stage collection, which runs first while COLLECTION does not exist;
#            a dense index over 21M passages needs a GPU)
#   NAME     any other collection: KNOWLEDGE_SOURCE=NAME COLLECTION=FILE (.jsonl / .tsv, see README)
KNOWLEDGE_SOURCE="${KNOWLEDGE_SOURCE:-wow_mini}"
WOW_MINI="${WOW_MINI:-$SHARED_DATA/wow_mini}"
WIKI_SUMMARIES="${WIKI_SUMMARIES:-$SHARED_DATA/wiki_summaries/summaries_en.json.gz}"
DPR_PASSAGES="${DPR_PASSAGES:-$ROOT/work/downloads/psgs_w100.tsv.gz}"
DPR_PASSAGES_URL="${DPR_PASSAGES_URL:-https://dl.fbaipublicfiles.com/dpr/wikipedia_split/psgs_w100.tsv.gz}"
# RETRIEVER (dense | sparse | random), TOP_K, HOPS, KID_STEPS, KID_LR, KID_SIGMA, KID_SOLVER (adam | sigma | kv),
# KID_KV_STEP, KID_KV_KL, KID_KV_GAMMA, KID_KV_MIX, SEED, SEED_SCOPE: the defaults and their meaning are in
# examples/common/generate_kid.sh (set any of them here to override)
SUBSET="${SUBSET:-test}"
KNOWLEDGE="${KNOWLEDGE-$WORK/tok/$SUBSET.knowledge}"   # knowledge sentences, one line per test example
KNOWLEDGE_SEPARATOR="${KNOWLEDGE_SEPARATOR:-__knowledge__}"  # prepare_mini.sh's sentence separator
# -------------------------------------------------------------------------------------------
case "$KNOWLEDGE_SOURCE" in
  wow_mini) COLLECTION="${COLLECTION:-$WOW_MINI}" ;;
  wiki)     COLLECTION="${COLLECTION:-$WIKI_SUMMARIES}" ;;
  dpr)      COLLECTION="${COLLECTION:-$WORK/kid/psgs_w100.tsv}"
            [ -e "$COLLECTION" ] || STAGES="collection ${STAGES:-retrieve trie decode evaluate}" ;;
  *)        : "${COLLECTION:?KNOWLEDGE_SOURCE=$KNOWLEDGE_SOURCE needs COLLECTION=FILE}" ;;
esac
COLLECTION_NAME="$KNOWLEDGE_SOURCE"
export WORK CONFIG CHECKPOINT COLLECTION COLLECTION_NAME DPR_PASSAGES DPR_PASSAGES_URL RETRIEVER TOP_K HOPS \
  KID_STEPS SEED SUBSET KNOWLEDGE KNOWLEDGE_SEPARATOR
[ -n "${STAGES:-}" ] && export STAGES
exec bash "$ROOT/examples/common/generate_kid.sh" "$@"
