#!/usr/bin/env bash
# Negative distillation (ND) on DailyDialog, paper: ../shared/papers/negative_distillation.txt.
#   entropy  source entropy of every training pair (Eq. 4) -> D_N = the top RATIO, and the rest
#   binarise D_N and the bottom part with the STUDENT's dictionaries (fairseq-preprocess --srcdict/--tgtdict)
#   teacher  the negative teacher: plain MLE on D_N, the student's architecture
#   bottom   (optional, Table 6) the same model trained on the bottom part
#   student  --criterion negative_distillation --teacher-path <teacher>/checkpoint_best.pt
#   generate greedy and beam 5 (length penalty LENPEN) on the test set
#   evaluate Dist-1/2/3, LF, KL-1/2, BLEU-1..4 (+ PPL) with dialog-metrics
# Run prepare.sh first, then:  bash examples/dailydialog/train_nd.sh [extra fairseq-train flags for the student]
# e.g. ablations (Tables 5, 8, 9):  ND_ARGS="--nd-terms pred,att" | "--nd-alpha-schedule fixed --nd-alpha 0.33"
#                                   | "--nd-target hard" | "--nd-target random --nd-random-targets \$ENTROPY_DIR/negative/train.tgt"
source "$(dirname "$0")/../common/env.sh"

# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$ROOT/work/dailydialog}"          # prepare.sh's output (tok/, data-bin/)
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"          # the full data; its dict.{src,tgt}.txt are reused
TOK_DIR="${TOK_DIR:-$WORK/tok}"                 # tokenised text pairs the entropy is computed on
ENTROPY_DIR="${ENTROPY_DIR:-$WORK/entropy}"     # scores, negative/ (D_N), bottom/, stats.json
RATIO="${RATIO:-0.5}"                           # share of pairs in D_N (paper: top 50%)
NORMALIZE="${NORMALIZE:-ws}"                    # source-entropy --normalize (lower,punct,ws | none)
TIE_BREAK="${TIE_BREAK:-index}"                 # index | shorter (pairs tied at the cut)
CONFIG="${CONFIG:-small}"                       # paper | small | compact | tiny (env.sh transformer_args)
TEACHER_EPOCH="${TEACHER_EPOCH:-2}"             # the budget of RESULTS.md
MAX_EPOCH="${MAX_EPOCH:-2}"                     # student epochs (2 epochs = 846 updates on the full data)
SEED="${SEED:-1}"
ND_GAMMA="${ND_GAMMA:-25600}"                   # step of the alpha peak (paper: 25600, of ~50k updates).
                                                # With a short budget alpha stays ~0.01 unless it is
                                                # scaled: use about half the student's total updates
                                                # (e.g. ND_GAMMA=423 for 2 epochs = 846 updates)
ND_ARGS="${ND_ARGS:-}"                          # more --nd-* flags (see the header)
TEACHER_DIR="${TEACHER_DIR:-$WORK/checkpoints/nd_teacher_$CONFIG}"
BOTTOM_DIR="${BOTTOM_DIR:-$WORK/checkpoints/nd_bottom_$CONFIG}"
STUDENT_DIR="${STUDENT_DIR:-$WORK/checkpoints/nd_student_$CONFIG}"
LENPEN="${LENPEN:-1.0}"                         # beam-5 length penalty (fairseq --lenpen)
WORKERS="${WORKERS:-2}"
STAGES="${STAGES:-entropy binarise teacher student generate evaluate}"   # add "bottom" for Table 6
# -------------------------------------------------------------------------------------------

[ -f "$DATA_BIN/dict.src.txt" ] || { echo "run examples/dailydialog/prepare.sh first ($DATA_BIN)" >&2; exit 1; }

if has_stage entropy; then
  (cd "$ROOT" && python3 -m data_prep.nd.source_entropy --input "$TOK_DIR" --output "$ENTROPY_DIR" \
    --ratio "$RATIO" --normalize "$NORMALIZE" --tie-break "$TIE_BREAK")
fi

if has_stage binarise; then
  for part in negative bottom; do
    rm -rf "$ENTROPY_DIR/$part/data-bin"
    fairseq-preprocess --source-lang src --target-lang tgt \
      --trainpref "$ENTROPY_DIR/$part/train" --validpref "$ENTROPY_DIR/$part/valid" \
      --testpref "$ENTROPY_DIR/$part/test" --destdir "$ENTROPY_DIR/$part/data-bin" \
      --srcdict "$DATA_BIN/dict.src.txt" --tgtdict "$DATA_BIN/dict.tgt.txt" --workers "$WORKERS"
  done
fi

# the negative teacher: MLE (label smoothing 0.1, appendix A) on D_N with the student's architecture
if has_stage teacher; then
  WORK="$WORK" DATA_BIN="$ENTROPY_DIR/negative/data-bin" CONFIG="$CONFIG" MAX_EPOCH="$TEACHER_EPOCH" \
    SEED="$SEED" SAVE_DIR="$TEACHER_DIR" bash "$ROOT/examples/common/train_transformer.sh"
fi
if has_stage bottom; then
  WORK="$WORK" DATA_BIN="$ENTROPY_DIR/bottom/data-bin" CONFIG="$CONFIG" MAX_EPOCH="$TEACHER_EPOCH" \
    SEED="$SEED" SAVE_DIR="$BOTTOM_DIR" bash "$ROOT/examples/common/train_transformer.sh"
fi

# the student: L = (1 - alpha) L_mle + alpha (L_pred + sum L_hid + sum L_att) on the full data;
# the best checkpoint is chosen on the validation NLL (the ND terms change with alpha)
if has_stage student; then
  CRITERION_ARGS="--criterion negative_distillation --teacher-path $TEACHER_DIR/checkpoint_best.pt \
--label-smoothing 0.1 --nd-gamma $ND_GAMMA $ND_ARGS" \
  WORK="$WORK" DATA_BIN="$DATA_BIN" CONFIG="$CONFIG" MAX_EPOCH="$MAX_EPOCH" SEED="$SEED" \
    SAVE_DIR="$STUDENT_DIR" bash "$ROOT/examples/common/train_transformer.sh" \
    --best-checkpoint-metric nll_loss "$@"
fi

# decode and score the student (when trained in this run or before) and, with stage bottom, both
# halves' teachers (Table 6/7: which one answers more generically?)
models=()
{ has_stage student || [ -f "$STUDENT_DIR/checkpoint_best.pt" ]; } && models+=("$STUDENT_DIR")
has_stage bottom && models+=("$TEACHER_DIR" "$BOTTOM_DIR")
for model_dir in "${models[@]}"; do
  decode_and_score "$model_dir/checkpoint_best.pt" "${KNOWLEDGE:-}"
done
