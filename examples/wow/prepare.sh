#!/usr/bin/env bash
# Wizard of Wikipedia in the knowledge-internalization authors' release (lower-cased BERT
# WordPiece; {split}.voken.src = one knowledge id per source token) -> fairseq binary data.
#   bash examples/wow/prepare.sh
# With the full release (train.* present) keep the defaults. Here only valid / test.seen /
# test.unseen exist (../shared/data/wow_ki), so the format can be exercised end to end with
#   TRAIN_SPLIT=valid VALID_SPLIT=test_seen TEST_SPLIT=test_unseen bash examples/wow/prepare.sh
source "$(dirname "$0")/../common/env.sh"

# --- paths and options (override by environment) -------------------------------------------
WOW_KI="${WOW_KI:-$SHARED_DATA/wow_ki}"     # folder with {train,valid,test.seen,test.unseen}.{src,tgt,voken.src}
WORK="${WORK:-$ROOT/work/wow}"
TRAIN_SPLIT="${TRAIN_SPLIT:-train}"         # prepare-wow split names: train valid test_seen test_unseen
VALID_SPLIT="${VALID_SPLIT:-valid}"
TEST_SPLIT="${TEST_SPLIT:-test_seen}"
WORKERS="${WORKERS:-2}"
# -------------------------------------------------------------------------------------------

prepare-wow --format ki --input "$WOW_KI" --output "$WORK/release"
# the three splits the recipes use, under the names fairseq expects (train / valid / test)
mkdir -p "$WORK/tok"
for pair in "train:$TRAIN_SPLIT" "valid:$VALID_SPLIT" "test:$TEST_SPLIT"; do
  name="${pair%%:*}"; split="${pair#*:}"
  [ -f "$WORK/release/$split.src" ] || { echo "split '$split' not found in $WOW_KI (see $WORK/release/stats.json)" >&2; exit 1; }
  for ext in src tgt align; do
    if [ -f "$WORK/release/$split.$ext" ]; then
      cp "$WORK/release/$split.$ext" "$WORK/tok/$name.$ext"
    else
      rm -f "$WORK/tok/$name.$ext"
    fi
  done
done
rm -rf "$WORK/data-bin"
fairseq-preprocess --source-lang src --target-lang tgt \
  --trainpref "$WORK/tok/train" --validpref "$WORK/tok/valid" --testpref "$WORK/tok/test" \
  --destdir "$WORK/data-bin" --joined-dictionary --workers "$WORKERS"
