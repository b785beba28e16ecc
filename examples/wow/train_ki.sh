#!/usr/bin/env bash
# Knowledge internalization on Wizard of Wikipedia. Two sources of token-knowledge alignments:
#   ALIGNMENTS=release  the authors' voken ids (tok/{split}.align from prepare.sh) with their
#                       knowledge table: KNOWLEDGE_TABLE=<(N+1, d) .npy, row i = item i, row 0 = 0>
#   ALIGNMENTS=mine     this project's pipeline: knowledge base -> retriever -> index -> mining
#                       of the WordPiece sources (the default when KNOWLEDGE_TABLE is unset)
# then KI training, plain decoding and metrics. Stages and every option: examples/common/train_ki.sh.
#   bash examples/wow/prepare.sh && bash examples/wow/train_ki.sh [extra fairseq-train flags]
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$(cd "$(dirname "$0")/../.." && pwd)/work/wow}"   # prepare.sh's output
SUBWORD_FORMAT="${SUBWORD_FORMAT:-wordpiece}"
CONFIG="${CONFIG:-small}"
MAX_EPOCH="${MAX_EPOCH:-2}"
SEED="${SEED:-1}"
KNOWLEDGE_TABLE="${KNOWLEDGE_TABLE:-}"
ALIGNMENTS="${ALIGNMENTS:-$([ -n "$KNOWLEDGE_TABLE" ] && echo release || echo mine)}"
# -------------------------------------------------------------------------------------------
case "$ALIGNMENTS" in
  release)
    [ -n "$KNOWLEDGE_TABLE" ] || { echo "ALIGNMENTS=release needs KNOWLEDGE_TABLE (the release's g(K) as .npy)" >&2; exit 1; }
    export ALIGN_DIR="${ALIGN_DIR:-$WORK/tok}" KNOWLEDGE_TABLE
    export STAGES="${STAGES:-binarise train generate evaluate}" ;;
  mine) unset KNOWLEDGE_TABLE ;;
  *) echo "unknown ALIGNMENTS '$ALIGNMENTS' (release or mine)" >&2; exit 1 ;;
esac
export WORK SUBWORD_FORMAT CONFIG MAX_EPOCH SEED
exec bash "$(dirname "$0")/../common/train_ki.sh" "$@"
