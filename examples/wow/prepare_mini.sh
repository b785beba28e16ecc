#!/usr/bin/env bash
# Wizard of Wikipedia, mini release ({train,valid,test}.{pro_qa,sent_fact}.txt, 100 examples
# each): post -> response with its knowledge sentences (joined by __knowledge__) -> BERT uncased
# WordPiece -> fairseq binary data, for examples/common/train_transformer.sh and
# examples/wow/generate_kid.sh (examples/wow/prepare.sh is the KI release format instead):
#   bash examples/wow/prepare_mini.sh
#   WORK=work/wow_mini bash examples/common/train_transformer.sh
# 300 examples are too few to train on: to decode them with a model trained on another corpus
# with the same tokenizer (e.g. the DailyDialog baseline, single-turn post -> response as here),
# reuse its dictionaries and pool the three splits into one evaluation split:
#   WORK=work/wow_mini_dd DICT_DIR=work/dailydialog/data-bin POOLED_SPLIT=all bash examples/wow/prepare_mini.sh
source "$(dirname "$0")/../common/env.sh"

# --- paths and options (override by environment) -------------------------------------------
WOW_MINI="${WOW_MINI:-$SHARED_DATA/wow_mini}"   # folder with {train,valid,test}.{pro_qa,sent_fact}.txt
WORK="${WORK:-$ROOT/work/wow_mini}"
MAX_SRC_TOKENS="${MAX_SRC_TOKENS:-128}"         # keep the most recent context tokens
MAX_EXAMPLES="${MAX_EXAMPLES:-}"                # keep only the first N examples per split (quick runs)
KNOWLEDGE_SEPARATOR="${KNOWLEDGE_SEPARATOR:-__knowledge__}"
DICT_DIR="${DICT_DIR:-}"                        # a data-bin whose dict.{src,tgt}.txt to reuse (empty: build a joined one)
POOLED_SPLIT="${POOLED_SPLIT:-}"                # name of an extra split = train + valid + test (empty: none)
WORKERS="${WORKERS:-2}"
# -------------------------------------------------------------------------------------------

splits=(train valid test)
rm -rf "$WORK/raw"
prepare-wow --format mini --input "$WOW_MINI" --output "$WORK/raw" --lowercase \
  --knowledge-separator "$KNOWLEDGE_SEPARATOR"
for split in "${splits[@]}"; do
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
if [ -n "$POOLED_SPLIT" ]; then
  [[ " ${splits[*]} " != *" $POOLED_SPLIT "* ]] || { echo "POOLED_SPLIT must not be one of: ${splits[*]}" >&2; exit 1; }
  for ext in src tgt knowledge; do
    for split in "${splits[@]}"; do cat "$WORK/tok/$split.$ext"; done > "$WORK/tok/$POOLED_SPLIT.$ext"
  done
fi
dict_args=(--joined-dictionary)
if [ -n "$DICT_DIR" ]; then
  for side in src tgt; do
    [ -f "$DICT_DIR/dict.$side.txt" ] || { echo "DICT_DIR has no dict.$side.txt: $DICT_DIR" >&2; exit 1; }
  done
  dict_args=(--srcdict "$DICT_DIR/dict.src.txt" --tgtdict "$DICT_DIR/dict.tgt.txt")
fi
rm -rf "$WORK/data-bin"
fairseq-preprocess --source-lang src --target-lang tgt \
  --trainpref "$WORK/tok/train" --validpref "$WORK/tok/valid" --testpref "$WORK/tok/test" \
  --destdir "$WORK/data-bin" "${dict_args[@]}" --workers "$WORKERS"
if [ -n "$POOLED_SPLIT" ]; then
  binarise_split "$WORK/tok/$POOLED_SPLIT" "$WORK/data-bin" "$POOLED_SPLIT"
fi
echo "prepared: $WORK/data-bin ($(wc -l < "$WORK/data-bin/dict.src.txt") dictionary entries + 4 specials)"
