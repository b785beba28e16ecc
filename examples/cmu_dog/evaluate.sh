#!/usr/bin/env bash
# Score generate.sh's outputs: PPL (fairseq-validate on the test set), BLEU-1..4, ROUGE-L,
# Distinct-1/2/3, LF, KL-1/2, %safe, knowledge F1 against the
# document section the speaker saw, unigram F1, average length; greedy and beam 5.
#   bash examples/cmu_dog/evaluate.sh
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$(cd "$(dirname "$0")/../.." && pwd)/work/cmu_dog}"
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"
CHECKPOINT="${CHECKPOINT:-$WORK/checkpoints/transformer_small/checkpoint_best.pt}"
OUT_DIR="${OUT_DIR:-$(dirname "$CHECKPOINT")/gen}"
SUBSET="${SUBSET:-test}"
KNOWLEDGE="${KNOWLEDGE:-$WORK/tok/$SUBSET.knowledge}"   # one line per test example
# -------------------------------------------------------------------------------------------
export WORK DATA_BIN CHECKPOINT OUT_DIR SUBSET KNOWLEDGE
exec bash "$(dirname "$0")/../common/evaluate.sh"
