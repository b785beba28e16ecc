#!/usr/bin/env bash
# Knowledge internalization + negative distillation in ONE training run on DailyDialog
# (--criterion ki_negative_distillation): KI inputs (knowledge base -> retriever -> index ->
# mined alignments) and the negative teacher (source entropy -> D_N -> teacher), then the
# composed student -> plain decoding -> metrics. Stages and every option:
# examples/common/train_ki_nd.sh. Run prepare.sh first, then
#   bash examples/dailydialog/train_ki_nd.sh [extra fairseq-train flags]
# e.g. after train_ki.sh and train_nd.sh (alignments, table and teacher already built):
#   STAGES="train generate evaluate" bash examples/dailydialog/train_ki_nd.sh --patience 3
source "$(dirname "$0")/../common/env.sh"
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$(cd "$(dirname "$0")/../.." && pwd)/work/dailydialog}"   # prepare.sh's output
TOKENIZER="${TOKENIZER:-bert}"             # as given to prepare.sh: bert (WordPiece) or spm
SUBWORD_FORMAT="${SUBWORD_FORMAT:-$(subword_format "$TOKENIZER")}"   # how mining groups subword tokens into words
CONFIG="${CONFIG:-small}"                  # paper | small | compact | tiny (env.sh transformer_args)
MAX_EPOCH="${MAX_EPOCH:-2}"                # student epochs (the budget of RESULTS.md)
TEACHER_EPOCH="${TEACHER_EPOCH:-2}"        # the negative teacher's epochs (stage nd)
SEED="${SEED:-1}"
# -------------------------------------------------------------------------------------------
export WORK SUBWORD_FORMAT CONFIG MAX_EPOCH TEACHER_EPOCH SEED
exec bash "$(dirname "$0")/../common/train_ki_nd.sh" "$@"
