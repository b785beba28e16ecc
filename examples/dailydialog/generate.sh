#!/usr/bin/env bash
# Decode the DailyDialog test set greedily and with beam 5.
#   bash examples/dailydialog/generate.sh [extra fairseq-generate flags]
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$(cd "$(dirname "$0")/../.." && pwd)/work/dailydialog}"
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"
CHECKPOINT="${CHECKPOINT:-$WORK/checkpoints/transformer_small/checkpoint_best.pt}"
OUT_DIR="${OUT_DIR:-$(dirname "$CHECKPOINT")/gen}"
SUBSET="${SUBSET:-test}"
# -------------------------------------------------------------------------------------------
export WORK DATA_BIN CHECKPOINT OUT_DIR SUBSET
exec bash "$(dirname "$0")/../common/generate.sh" "$@"
