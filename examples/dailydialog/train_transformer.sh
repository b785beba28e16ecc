#!/usr/bin/env bash
# Plain Transformer baseline on DailyDialog (label-smoothed cross-entropy).
#   bash examples/dailydialog/train_transformer.sh [extra fairseq-train flags]
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$(cd "$(dirname "$0")/../.." && pwd)/work/dailydialog}"   # prepare.sh's output
CONFIG="${CONFIG:-small}"    # paper (6+6, 512/1024, 4 heads) | small (3+3, 256/1024; CPU) | tiny
MAX_EPOCH="${MAX_EPOCH:-2}"  # the budget of RESULTS.md (2 epochs = 812 updates of <= 4096 tokens)
SEED="${SEED:-1}"
# -------------------------------------------------------------------------------------------
export WORK CONFIG MAX_EPOCH SEED
exec bash "$(dirname "$0")/../common/train_transformer.sh" "$@"
