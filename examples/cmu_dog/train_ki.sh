#!/usr/bin/env bash
# Knowledge internalization on CMU_DoG: knowledge base -> token-level retriever -> faiss index ->
# mined token-knowledge alignments (WordPiece sources) -> KI training -> plain decoding ->
# metrics with knowledge F1 against the document section the speaker saw. Stages and every
# option: examples/common/train_ki.sh. Run prepare.sh first, then
#   bash examples/cmu_dog/train_ki.sh [extra fairseq-train flags]
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$(cd "$(dirname "$0")/../.." && pwd)/work/cmu_dog}"   # prepare.sh's output
SUBWORD_FORMAT="${SUBWORD_FORMAT:-wordpiece}"                     # prepare.sh: BERT WordPiece
CONFIG="${CONFIG:-small}"
MAX_EPOCH="${MAX_EPOCH:-2}"
SEED="${SEED:-1}"
KNOWLEDGE="${KNOWLEDGE:-$WORK/tok/${SUBSET:-test}.knowledge}"   # grounding text, one line per SUBSET example
# -------------------------------------------------------------------------------------------
export WORK SUBWORD_FORMAT CONFIG MAX_EPOCH SEED KNOWLEDGE
exec bash "$(dirname "$0")/../common/train_ki.sh" "$@"
