#!/usr/bin/env bash
# The negative-training baselines of the negative distillation paper (§3.3, appendix B), both
# "refined on the well-trained Standard model" (train_transformer.sh's best checkpoint), then
# decoded (greedy, beam 5) and evaluated as the other recipes:
#   METHOD=ul  UL: vocabulary unlikelihood (Li et al., 2020), alpha = 1000  (--criterion unlikelihood)
#   METHOD=nt  NT: negative training on frequent responses (He & Glass, 2020), r_thres = 1%,
#              lambda_POS = 1                                                (--criterion negative_training)
#   bash examples/dailydialog/train_ul.sh [extra fairseq-train flags]
source "$(dirname "$0")/../common/env.sh"

# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$ROOT/work/dailydialog}"          # prepare.sh's output
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"
METHOD="${METHOD:-ul}"                          # ul | nt
CONFIG="${CONFIG:-small}"                       # must be the Standard model's
BASE_CHECKPOINT="${BASE_CHECKPOINT:-$WORK/checkpoints/transformer_$CONFIG/checkpoint_best.pt}"
SAVE_DIR="${SAVE_DIR:-$WORK/checkpoints/${METHOD}_$CONFIG}"
MAX_EPOCH="${MAX_EPOCH:-1}"                     # epochs of fine-tuning
SEED="${SEED:-1}"
UL_ALPHA="${UL_ALPHA:-1000}"                    # paper: searched in 1, 10, 100, 1000; 1000 chosen
UL_ARGS="${UL_ARGS:-}"                          # e.g. --ul-window 32 --ul-weighting kldiv --ul-max-len 50
                                                # (--ul-count-eos: penalise an over-used end symbol too,
                                                # as Li et al.'s agent; see RESULTS.md for what it does)
NT_RATIO="${NT_RATIO:-0.01}"                    # r_thres of NT
NT_ARGS="${NT_ARGS:-}"                          # e.g. --nt-window 32 --nt-pos-weight 1 --nt-max-len 50
LENPEN="${LENPEN:-1.0}"
STAGES="${STAGES:-train generate evaluate}"
# -------------------------------------------------------------------------------------------

case "$METHOD" in
  ul) CRITERION_ARGS="--criterion unlikelihood --label-smoothing 0.1 --ul-alpha $UL_ALPHA $UL_ARGS" ;;
  nt) CRITERION_ARGS="--criterion negative_training --label-smoothing 0.1 --nt-ratio $NT_RATIO $NT_ARGS" ;;
  *) echo "unknown METHOD '$METHOD' (ul or nt)" >&2; exit 1 ;;
esac
if has_stage train; then
  [ -f "$BASE_CHECKPOINT" ] || { echo "train the Standard model first (examples/dailydialog/train_transformer.sh): $BASE_CHECKPOINT" >&2; exit 1; }
  CRITERION_ARGS="$CRITERION_ARGS" \
  WORK="$WORK" DATA_BIN="$DATA_BIN" CONFIG="$CONFIG" MAX_EPOCH="$MAX_EPOCH" SEED="$SEED" SAVE_DIR="$SAVE_DIR" \
    bash "$ROOT/examples/common/train_transformer.sh" --restore-file "$BASE_CHECKPOINT" \
    --reset-optimizer --reset-dataloader --reset-meters --reset-lr-scheduler \
    --best-checkpoint-metric nll_loss "$@"
fi
decode_and_score "$SAVE_DIR/checkpoint_best.pt" "${KNOWLEDGE:-}"
