#!/usr/bin/env bash
# CMU_DoG: conversations -> (last 3 turns -> response, document section as knowledge)
# -> BERT uncased WordPiece (contexts cut to their last 128 tokens) -> fairseq binary data.
#   bash examples/cmu_dog/prepare.sh
source "$(dirname "$0")/../common/env.sh"

# --- paths and options (override by environment) -------------------------------------------
# cmu_dog.tar.gz here, or a clone of the official repository (folders Conversations/, WikiData/).
CMU_DOG="${CMU_DOG:-$SHARED_DATA/cmu_dog.tar.gz}"
CMU_DOG_GIT="${CMU_DOG_GIT:-}"              # set to the official repository URL to clone it if CMU_DOG is absent
WORK="${WORK:-$ROOT/work/cmu_dog}"
CONTEXT_TURNS="${CONTEXT_TURNS:-3}"
MAX_SRC_TOKENS="${MAX_SRC_TOKENS:-128}"     # keep the most recent context tokens
WORKERS="${WORKERS:-2}"
# -------------------------------------------------------------------------------------------

if [ ! -e "$CMU_DOG" ] && [ -n "$CMU_DOG_GIT" ]; then
  git clone --depth 1 "$CMU_DOG_GIT" "$WORK/download/cmu_dog"
  CMU_DOG="$WORK/download/cmu_dog"
fi
prepare-cmu-dog --input "$CMU_DOG" --output "$WORK/raw" --context-turns "$CONTEXT_TURNS" --lowercase
tokenize-dialog --input "$WORK/raw" --output "$WORK/tok" --tokenizer bert --max-src-tokens "$MAX_SRC_TOKENS"
rm -rf "$WORK/data-bin"
fairseq-preprocess --source-lang src --target-lang tgt \
  --trainpref "$WORK/tok/train" --validpref "$WORK/tok/valid" --testpref "$WORK/tok/test" \
  --destdir "$WORK/data-bin" --joined-dictionary --workers "$WORKERS"
