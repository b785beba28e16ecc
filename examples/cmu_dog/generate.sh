#!/usr/bin/env bash
# Decode the CMU_DoG test set greedily and with beam 5.
#   bash examples/cmu_dog/generate.sh [extra fairseq-generate flags]
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$(cd "$(dirname "$0")/../.." && pwd)/work/cmu_dog}"
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"
CHECKPOINT="${CHECKPOINT:-$WORK/checkpoints/transformer_small/checkpoint_best.pt}"
OUT_DIR="${OUT_DIR:-$(dirname "$CHECKPOINT")/gen}"
SUBSET="${SUBSET:-test}"
# -------------------------------------------------------------------------------------------
export WORK DATA_BIN CHECKPOINT OUT_DIR SUBSET
exec bash "$(dirname "$0")/../common/generate.sh" "$@"
