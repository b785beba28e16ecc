#!/usr/bin/env bash
# Shared body of the per-dataset evaluate.sh recipes: test perplexity with fairseq-validate,
# then dialog-metrics on each OUT_DIR/SUBSET.<decoder>.out; writes metrics.md and *.json.
# Expects WORK, DATA_BIN, CHECKPOINT; KNOWLEDGE (optional) = grounding text per test example.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
: "${WORK:?set WORK}" "${DATA_BIN:?set DATA_BIN}" "${CHECKPOINT:?set CHECKPOINT}"
OUT_DIR="${OUT_DIR:-$(dirname "$CHECKPOINT")/gen}"
SUBSET="${SUBSET:-test}"
DECODERS="${DECODERS:-greedy beam5}"
TRAIN_TGT="${TRAIN_TGT:-$WORK/tok/train.tgt}"   # LF counts come from the training responses
KNOWLEDGE="${KNOWLEDGE:-}"
# references, one per example: the tokenised responses (fairseq's T- lines show words outside the
# dictionary as <<unk>>, which no system can match); empty: score against the T- lines
REFERENCE="${REFERENCE-$WORK/tok/$SUBSET.tgt}"
NAME="${NAME:-$(basename "$(dirname "$CHECKPOINT")")}"

fairseq-validate "$DATA_BIN" --user-dir "$USER_DIR" --task knowledge_dialog \
  --source-lang src --target-lang tgt --path "$CHECKPOINT" --valid-subset "$SUBSET" \
  --max-tokens 8192 --criterion cross_entropy > "$OUT_DIR/$SUBSET.validate.log" 2>&1
knowledge_args=()
[ -n "$KNOWLEDGE" ] && knowledge_args=(--knowledge "$KNOWLEDGE")
reference_args=()
if [ -n "$REFERENCE" ]; then
  [ -f "$REFERENCE" ] || { echo "references not found: $REFERENCE (REFERENCE= scores against the T- lines)" >&2; exit 1; }
  reference_args=(--ref "$REFERENCE")
fi
rm -f "$OUT_DIR/metrics.md"
for decoder in $DECODERS; do
  dialog-metrics --gen-out "$OUT_DIR/$SUBSET.$decoder.out" --wordpiece-detok --train-tgt "$TRAIN_TGT" \
    --ppl-log "$OUT_DIR/$SUBSET.validate.log" "${reference_args[@]}" "${knowledge_args[@]}" --name "$NAME $decoder" \
    --json-out "$OUT_DIR/$SUBSET.$decoder.metrics.json" --append-md "$OUT_DIR/metrics.md" > /dev/null
done
cat "$OUT_DIR/metrics.md"
