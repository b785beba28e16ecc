#!/usr/bin/env bash
# DailyDialog: official split zips -> lower-cased, de-duplicated query/response pairs
# -> BERT uncased WordPiece -> fairseq binary data with a joined dictionary.
# Run from anywhere: bash examples/dailydialog/prepare.sh
source "$(dirname "$0")/../common/env.sh"

# --- paths and options (override by environment) ---------------------------------------
# Folder with train.zip, validation.zip, test.zip: ../shared/data/dailydialog here, or the
# official ijcnlp_dailydialog.zip unpacked (it holds exactly these three zips).
DAILYDIALOG_DIR="${DAILYDIALOG_DIR:-$SHARED_DATA/dailydialog}"
# Set to the official archive's URL to download it when DAILYDIALOG_DIR does not exist.
DAILYDIALOG_URL="${DAILYDIALOG_URL:-}"
WORK="${WORK:-$ROOT/work/dailydialog}"
CONTEXT_TURNS="${CONTEXT_TURNS:-1}"      # 1 = single-turn pairs; N = last N utterances -> response
TOKENIZER="${TOKENIZER:-bert}"           # bert (WordPiece, the KI paper's) or spm (sentencepiece)
WORKERS="${WORKERS:-2}"
MAX_DIALOGUES="${MAX_DIALOGUES:-}"       # keep only the first N dialogues per split (quick runs)
# -----------------------------------------------------------------------------------------

if [ ! -d "$DAILYDIALOG_DIR" ] && [ -n "$DAILYDIALOG_URL" ]; then
  mkdir -p "$WORK/download"
  wget -q -O "$WORK/download/ijcnlp_dailydialog.zip" "$DAILYDIALOG_URL"
  unzip -q -o "$WORK/download/ijcnlp_dailydialog.zip" -d "$WORK/download"
  DAILYDIALOG_DIR="$WORK/download/ijcnlp_dailydialog"
fi

prepare-dailydialog --input "$DAILYDIALOG_DIR" --output "$WORK/raw" \
  --context-turns "$CONTEXT_TURNS" --lowercase --dedup ${MAX_DIALOGUES:+--max-dialogues "$MAX_DIALOGUES"}
tokenize-dialog --input "$WORK/raw" --output "$WORK/tok" --tokenizer "$TOKENIZER"
rm -rf "$WORK/data-bin"
fairseq-preprocess --source-lang src --target-lang tgt \
  --trainpref "$WORK/tok/train" --validpref "$WORK/tok/valid" --testpref "$WORK/tok/test" \
  --destdir "$WORK/data-bin" --joined-dictionary --workers "$WORKERS"
echo "prepared: $WORK/data-bin ($(wc -l < "$WORK/data-bin/dict.src.txt") dictionary entries + 4 specials)"
