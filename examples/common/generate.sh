#!/usr/bin/env bash
# Shared body of the per-dataset generate.sh recipes: greedy and beam-5 decoding of SUBSET.
# Expects CHECKPOINT and DATA_BIN; writes OUT_DIR/SUBSET.{greedy,beam5}.out.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
: "${CHECKPOINT:?set CHECKPOINT}" "${DATA_BIN:?set DATA_BIN}"
OUT_DIR="${OUT_DIR:-$(dirname "$CHECKPOINT")/gen}"
SUBSET="${SUBSET:-test}"
BATCH_SIZE="${BATCH_SIZE:-128}"
MAX_LEN_B="${MAX_LEN_B:-50}"             # responses are at most MAX_LEN_B tokens
LENPEN="${LENPEN:-1.0}"
DECODERS="${DECODERS:-greedy beam5}"

[ -f "$CHECKPOINT" ] || { echo "checkpoint not found: $CHECKPOINT" >&2; exit 1; }
mkdir -p "$OUT_DIR"
for decoder in $DECODERS; do
  case "$decoder" in
    greedy) search="--beam 1" ;;
    beam5)  search="--beam 5 --lenpen $LENPEN" ;;
    *) echo "unknown decoder $decoder (greedy|beam5)" >&2; exit 1 ;;
  esac
  # shellcheck disable=SC2086
  fairseq-generate "$DATA_BIN" --user-dir "$USER_DIR" --task knowledge_dialog \
    --source-lang src --target-lang tgt --path "$CHECKPOINT" --gen-subset "$SUBSET" \
    --batch-size "$BATCH_SIZE" --max-len-b "$MAX_LEN_B" $search "$@" \
    > "$OUT_DIR/$SUBSET.$decoder.out"
  echo "wrote $OUT_DIR/$SUBSET.$decoder.out"
done
