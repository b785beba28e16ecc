#!/usr/bin/env bash
# Wizard of Wikipedia, mini release ({train,valid,test}.{pro_qa,sent_fact}.txt, 100 examples
# each): post -> response with its knowledge sentences (joined by __knowledge__) -> BERT uncased
# WordPiece -> fairseq binary data, for examples/common/train_transformer.sh and
# examples/wow/generate_kid.sh (examples/wow/prepare.sh is the KI release format instead):
#   bash examples/wow/prepare_mini.sh
#   WORK=work/wow_mini bash examples/common/train_transformer.sh
source "$(dirname "$0")/../common/env.sh"

# --- paths and options (override by environment) -------------------------------------------
WOW_MINI="${WOW_MINI:-$SHARED_DATA/wow_mini}"   # folder with {train,valid,test}.{pro_qa,sent_fact}.txt
WORK="${WORK:-$ROOT/work/wow_mini}"
MAX_SRC_TOKENS="${MAX_SRC_TOKENS:-128}"         # keep the most recent context tokens
MAX_EXAMPLES="${MAX_EXAMPLES:-}"                # keep only the first N examples per split (quick runs)
KNOWLEDGE_SEPARATOR="${KNOWLEDGE_SEPARATOR:-__knowledge__}"
WORKERS="${WORKERS:-2}"
# -------------------------------------------------------------------------------------------

rm -rf "$WORK/raw"
prepare-wow --format mini --input "$WOW_MINI" --output "$WORK/raw" --lowercase \
  --knowledge-separator "$KNOWLEDGE_SEPARATOR"
for split in train valid test; do
  [ -f "$WORK/raw/$split.src" ] || { echo "split '$split' not found in $WOW_MINI (see $WORK/raw/stats.json)" >&2; exit 1; }
  if [ -n "$MAX_EXAMPLES" ]; then
    for ext in src tgt knowledge; do
      head -n "$MAX_EXAMPLES" "$WORK/raw/$split.$ext" > "$WORK/raw/$split.$ext.tmp"
      mv "$WORK/raw/$split.$ext.tmp" "$WORK/raw/$split.$ext"
    done
  fi
done
tokenize-dialog --input "$WORK/raw" --output "$WORK/tok" --tokenizer bert --max-src-tokens "$MAX_SRC_TOKENS" \
  --keep-tokens __eou__ "$KNOWLEDGE_SEPARATOR"
rm -rf "$WORK/data-bin"
fairseq-preprocess --source-lang src --target-lang tgt \
  --trainpref "$WORK/tok/train" --validpref "$WORK/tok/valid" --testpref "$WORK/tok/test" \
  --destdir "$WORK/data-bin" --joined-dictionary --workers "$WORKERS"
echo "prepared: $WORK/data-bin ($(wc -l < "$WORK/data-bin/dict.src.txt") dictionary entries + 4 specials)"
