#!/usr/bin/env bash
# Shared body of the per-dataset train_transformer.sh recipes: a plain Transformer trained
# with label-smoothed cross-entropy. Expects WORK (and optionally DATA_BIN, CONFIG, MAX_EPOCH,
# SEED, SAVE_DIR, PATIENCE) from the calling recipe; extra arguments go to fairseq-train.
# PATIENCE=N stops training after N validations without a new best checkpoint (fairseq
# --patience); MAX_EPOCH is then only the cap.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
: "${WORK:?set WORK}"
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"
CONFIG="${CONFIG:-small}"
MAX_EPOCH="${MAX_EPOCH:-2}"
SEED="${SEED:-1}"
SAVE_DIR="${SAVE_DIR:-$WORK/checkpoints/transformer_$CONFIG}"
PATIENCE="${PATIENCE:-}"
CRITERION_ARGS="${CRITERION_ARGS:---criterion label_smoothed_cross_entropy --label-smoothing 0.1}"

mkdir -p "$SAVE_DIR"
# shellcheck disable=SC2046,SC2086
fairseq-train "$DATA_BIN" --user-dir "$USER_DIR" --task knowledge_dialog \
  --source-lang src --target-lang tgt \
  $(transformer_args "$CONFIG") $(optimiser_args) $CRITERION_ARGS \
  --max-epoch "$MAX_EPOCH" ${PATIENCE:+--patience "$PATIENCE"} --seed "$SEED" --num-workers 0 \
  --save-dir "$SAVE_DIR" --no-epoch-checkpoints \
  --log-format simple --log-interval 50 "$@" 2>&1 | tee -a "$SAVE_DIR/train.log"
