#!/usr/bin/env bash
# ROCStories / Story Cloze: CSV -> {split}.src (the four context sentences) and {split}.tgt
# (the right ending; labelled splits only) + stats.json.
# Run from anywhere: bash examples/rocstories/prepare.sh
source "$(dirname "$0")/../common/env.sh"

# --- paths and options (override by environment) -------------------------------------------
# Folder with val.csv / test.csv here, or the official Story Cloze download: any folder holding
# exactly one *_val.csv and one *_test.csv (e.g. "cloze_test_val__spring2016 - cloze_test_ALL_val.csv").
ROCSTORIES_DIR="${ROCSTORIES_DIR:-$SHARED_DATA/rocstories}"
SPLITS="${SPLITS:-val test}"
WORK="${WORK:-$ROOT/work/rocstories}"
MAX_STORIES="${MAX_STORIES:-}"          # keep only the first N stories per split (quick runs)
# Optional extra files as SPLIT=PATH, e.g. the ROCStories training corpus (five-sentence stories):
#   EXTRA_FILES="train=/data/ROCStories_winter2017 - ROCStories_winter2017.csv"
EXTRA_FILES="${EXTRA_FILES:-}"
# -------------------------------------------------------------------------------------------

extra=()
if [ -n "$EXTRA_FILES" ]; then
  while IFS= read -r spec; do [ -n "$spec" ] && extra+=(--file "$spec"); done <<< "${EXTRA_FILES//;/$'\n'}"
fi
# shellcheck disable=SC2086  # SPLITS is a word list
prepare-rocstories --input "$ROCSTORIES_DIR" --splits $SPLITS --output "$WORK/data" \
  ${MAX_STORIES:+--max-stories "$MAX_STORIES"} "${extra[@]}"
echo "prepared: $WORK/data ($(wc -l < "$WORK/data/val.src" 2>/dev/null || echo 0) val stories)"
