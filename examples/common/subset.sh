#!/usr/bin/env bash
# A fixed, evenly spread sample of one split as a split of its own, for ablation loops that
# would take hours on the whole test set: every EVERY-th example (0, EVERY, 2*EVERY, ...) of
# split FROM, with every side file of that split (src, tgt, knowledge, docid, ...), binarised
# with the corpus' own dictionaries.
#   WORK=work/cmu_dog FROM=test EVERY=6 NAME=test_every6 bash examples/common/subset.sh
# then SUBSET=test_every6 in generate.sh / evaluate.sh / generate_kid.sh.
# Writes TOK_DIR/NAME.* and DATA_BIN/NAME.src-tgt.{src,tgt}.{bin,idx}.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
: "${WORK:?set WORK}"
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"
TOK_DIR="${TOK_DIR:-$WORK/tok}"
FROM="${FROM:-test}"
EVERY="${EVERY:?set EVERY (keep every EVERY-th example)}"
NAME="${NAME:-${FROM}_every$EVERY}"

[[ "$EVERY" =~ ^[1-9][0-9]*$ ]] || { echo "EVERY must be a positive integer, got '$EVERY'" >&2; exit 1; }
[ "$NAME" != "$FROM" ] || { echo "NAME must differ from FROM ($FROM)" >&2; exit 1; }
for side in src tgt; do
  [ -f "$TOK_DIR/$FROM.$side" ] || { echo "not found: $TOK_DIR/$FROM.$side (run prepare.sh first)" >&2; exit 1; }
  [ -f "$DATA_BIN/dict.$side.txt" ] || { echo "not found: $DATA_BIN/dict.$side.txt (run prepare.sh first)" >&2; exit 1; }
done
n_examples="$(wc -l < "$TOK_DIR/$FROM.src")"
for f in "$TOK_DIR/$FROM".*; do
  n="$(wc -l < "$f")"
  [ "$n" = "$n_examples" ] || { echo "$f has $n lines, $TOK_DIR/$FROM.src has $n_examples" >&2; exit 1; }
  awk -v every="$EVERY" '(NR - 1) % every == 0' "$f" > "$TOK_DIR/$NAME.${f##*/$FROM.}"
done

binarise_split "$TOK_DIR/$NAME" "$DATA_BIN" "$NAME"
echo "$NAME: $(wc -l < "$TOK_DIR/$NAME.src") of the $n_examples examples of $FROM -> $TOK_DIR/$NAME.*, $DATA_BIN/$NAME.src-tgt.*"
