#!/usr/bin/env bash
# Knowledge internalization on DailyDialog (the paper's Transformer+KI): knowledge base ->
# token-level retriever -> faiss index -> mined token-knowledge alignments -> KI training ->
# greedy / beam-5 decoding with plain fairseq-generate -> metrics. Stages and every option:
# examples/common/train_ki.sh. Run prepare.sh first, then
#   bash examples/dailydialog/train_ki.sh [extra fairseq-train flags]
# e.g. STAGES="mine binarise train generate evaluate" (knowledge base, retriever and index built)
#      ABLATION=random STAGES="ablate binarise train generate evaluate"        (Table 5)
#      MINE_ARGS="--no-exact-match" ALIGN_DIR=work/dailydialog/ki/align_noexact ... (Table 9)
source "$(dirname "$0")/../common/env.sh"
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$(cd "$(dirname "$0")/../.." && pwd)/work/dailydialog}"   # prepare.sh's output
TOKENIZER="${TOKENIZER:-bert}"             # as given to prepare.sh: bert (WordPiece) or spm
SUBWORD_FORMAT="${SUBWORD_FORMAT:-$(subword_format "$TOKENIZER")}"   # how mining groups subword tokens into words
CONFIG="${CONFIG:-small}"                  # paper | small | compact | tiny; small = the baseline of RESULTS.md
MAX_EPOCH="${MAX_EPOCH:-2}"                # the baseline's budget
SEED="${SEED:-1}"
# -------------------------------------------------------------------------------------------
export WORK SUBWORD_FORMAT CONFIG MAX_EPOCH SEED
exec bash "$(dirname "$0")/../common/train_ki.sh" "$@"
