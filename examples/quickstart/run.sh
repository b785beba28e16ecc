#!/usr/bin/env bash
# Quick start: prepare the embedded corpus, train a tiny Transformer with the plugin, decode
# the test split greedily and with beam 5, and print the metrics table. A few minutes on 2 cores.
#   bash examples/quickstart/run.sh
source "$(dirname "$0")/../common/env.sh"

# --- paths and options ---------------------------------------------------------------------
CORPUS="${CORPUS:-$ROOT/examples/quickstart/data}"   # DailyDialog layout, written by make_corpus.py
WORK="${WORK:-$ROOT/work/quickstart}"
MAX_EPOCH="${MAX_EPOCH:-12}"
# -------------------------------------------------------------------------------------------

rm -rf "$WORK"; mkdir -p "$WORK"
echo "== 1/4 prepare: $CORPUS -> $WORK"
prepare-dailydialog --input "$CORPUS" --output "$WORK/tok" --lowercase --tokenizer bert 2>"$WORK/prepare.log"
fairseq-preprocess --source-lang src --target-lang tgt --trainpref "$WORK/tok/train" \
  --validpref "$WORK/tok/valid" --testpref "$WORK/tok/test" --destdir "$WORK/data-bin" \
  --joined-dictionary --workers 2 >>"$WORK/prepare.log" 2>&1

echo "== 2/4 train: tiny Transformer, $MAX_EPOCH epochs (log: $WORK/train.log)"
# shellcheck disable=SC2046
fairseq-train "$WORK/data-bin" --user-dir "$USER_DIR" --task knowledge_dialog \
  --source-lang src --target-lang tgt --arch transformer --share-all-embeddings \
  --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128 \
  --encoder-ffn-embed-dim 256 --decoder-ffn-embed-dim 256 --encoder-attention-heads 4 --decoder-attention-heads 4 \
  --dropout 0.1 $(LR=0.003 WARMUP=100 MAX_TOKENS=2048 optimiser_args) \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-epoch "$MAX_EPOCH" --seed 1 --num-workers 0 --save-dir "$WORK/checkpoints" --no-epoch-checkpoints \
  --log-format simple --log-interval 20 >"$WORK/train.log" 2>&1
grep "valid on" "$WORK/train.log" | tail -n 1

echo "== 3/4 generate: greedy and beam 5"
for decoder in greedy beam5; do
  beam=1; [ "$decoder" = beam5 ] && beam=5
  fairseq-generate "$WORK/data-bin" --user-dir "$USER_DIR" --task knowledge_dialog \
    --source-lang src --target-lang tgt --path "$WORK/checkpoints/checkpoint_best.pt" \
    --gen-subset test --batch-size 64 --beam "$beam" --max-len-b 40 >"$WORK/test.$decoder.out" 2>"$WORK/generate.log"
done
grep -m 3 "^H-" "$WORK/test.greedy.out" | cut -f 3 | sed 's/^/   sample: /'

echo "== 4/4 metrics"
rm -f "$WORK/metrics.md"
for decoder in greedy beam5; do
  dialog-metrics --gen-out "$WORK/test.$decoder.out" --wordpiece-detok --train-tgt "$WORK/tok/train.tgt" \
    --ref "$WORK/tok/test.tgt" --ppl-log "$WORK/train.log" --name "quickstart $decoder" \
    --json-out "$WORK/metrics.$decoder.json" --append-md "$WORK/metrics.md" >/dev/null 2>>"$WORK/metrics.log"
done
cat "$WORK/metrics.md"
