#!/usr/bin/env bash
# Shared body of the per-dataset converged_study.sh recipes: the systems of SYSTEMS (baseline,
# +KI, +ND, +KI+ND) each trained to convergence (early stopping on the validation NLL, PATIENCE
# validations without a new best) with one configuration and seed, decoded greedily and with
# beam 5 (and, with KID_DECODE=1, by the dataset's generate_kid.sh: sampling, beam 5, KID and
# Little KID), then one report: how each run trained (epochs, best epoch, seconds) and what it
# scored, with paired-bootstrap intervals against the baseline (analysis/method_comparison.py).
# Expects WORK and RECIPES (the dataset's recipe folder: train_transformer.sh, train_ki.sh,
# train_ki_nd.sh, generate.sh, evaluate.sh, generate_kid.sh) from the calling recipe.
#   DRY_RUN=1 bash examples/dailydialog/converged_study.sh            # print what would run, run nothing
#   SEED=2 STAGES="baseline ki nd ki_nd report" bash examples/dailydialog/converged_study.sh
# Stages (STAGES, run in this order whatever order they are named in; default: those SYSTEMS need):
#   baseline   train_transformer.sh (label-smoothed cross-entropy)
#   teacher    train_nd.sh's entropy, binarise (if D_N is not binarised yet) and teacher stages:
#              the negative teacher on the top-entropy half, seed TEACHER_SEED (one teacher for
#              every student seed), early stopping on its validation loss
#   ki_inputs  train_ki.sh's kb retriever index mine binarise, from the first whose output is
#              missing: knowledge base, retriever, index, mined alignments (DailyDialog on one
#              thread beside other jobs: retriever 50 min, index 34 min, mining 40 min for the
#              three splits, binarising about a minute)
#   ki         train_ki.sh's train stage (KI, lambda KI_LAMBDA)
#   nd         train_nd.sh's student stage, alpha's peak at ND_GAMMA updates
#   ki_nd      train_ki_nd.sh's train stage (--criterion ki_negative_distillation)
#   kid        generate_kid.sh on every system of SYSTEMS (retrieval and tries once, by the first)
#   report     analysis.method_comparison over SYSTEMS on SUBSET (default test) -> REPORT
# Every training stage decodes and scores its model (generate, evaluate). Early stopping is one
# rule, read from the run's train.log (analysis.training_curve --stopping-point): a run is
# finished once it has validated epoch min(MAX_EPOCH, best epoch + PATIENCE), and is then not
# trained again. An interrupted run resumes from its checkpoint_last.pt when its stage is run
# again, with --max-epoch set to that epoch, and again while a new best epoch moves it: fairseq
# keeps its patience count in memory only, so a resumed fairseq run alone would count afresh
# and train longer than one uninterrupted run. ND_GAMMA defaults to half the baseline's updates
# at its best epoch (the paper puts the peak of 25,600 at about half of ~50k updates), so the
# stage baseline must have finished first.
# On 2 cores, run two stages at once with THREADS=1 each (e.g. baseline beside teacher).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
: "${WORK:?set WORK}" "${RECIPES:?set RECIPES (the folder of the dataset recipes)}"

# --- paths and options (override by environment) -------------------------------------------
CONFIG="${CONFIG:-compact}"                     # 2+2 layers, 128/512 (env.sh transformer_args)
LR="${LR:-0.002}"                               # peak learning rate (inverse-sqrt after WARMUP)
PATIENCE="${PATIENCE:-3}"                       # validations (epochs) without a new best
MAX_EPOCH="${MAX_EPOCH:-60}"                    # a cap; early stopping ends the runs first
SEED="${SEED:-1}"
TEACHER_SEED="${TEACHER_SEED:-1}"
THREADS="${THREADS:-}"                          # torch threads per run (empty: torch's default)
KI_LAMBDA="${KI_LAMBDA:-1}"
ND_GAMMA="${ND_GAMMA:-}"                        # empty: half the baseline's updates at its best epoch
RATIO="${RATIO:-0.5}"                           # D_N = the top RATIO of the pairs by source entropy
TIE_BREAK="${TIE_BREAK:-shorter}"               # pairs tied at the cut (on DailyDialog 87.6 % have entropy 0)
CKPTS="${CKPTS:-$WORK/checkpoints}"
BASE_DIR="${BASE_DIR:-$CKPTS/transformer_${CONFIG}_seed$SEED}"
TEACHER_DIR="${TEACHER_DIR:-$CKPTS/nd_teacher_${CONFIG}_seed$TEACHER_SEED}"
KI_DIR="${KI_DIR:-$CKPTS/ki_${CONFIG}_seed$SEED}"
ND_DIR="${ND_DIR:-$CKPTS/nd_student_${CONFIG}_seed$SEED}"
KI_ND_DIR="${KI_ND_DIR:-$CKPTS/ki_nd_${CONFIG}_seed$SEED}"
KI_HOME="${KI_HOME:-$ROOT/work/ki}"             # knowledge base, retriever, index (shared by datasets)
ALIGN_DIR="${ALIGN_DIR:-$WORK/ki/align}"
KI_BIN="${KI_BIN:-$WORK/ki/data-bin}"
SYSTEMS="${SYSTEMS:-baseline ki nd ki_nd}"     # the baseline is always one of them
KID_DECODE="${KID_DECODE:-0}"                   # 1: stage kid (generate_kid.sh) on every system
ND_RECIPE="${ND_RECIPE:-$ROOT/examples/dailydialog/train_nd.sh}"   # dataset-agnostic (WORK, DATA_BIN, TOK_DIR)
SUBSET="${SUBSET:-test}"                        # the split every decode, KID run and the report use (e.g.
                                                # test_every6 of examples/common/subset.sh: made first)
KNOWLEDGE="${KNOWLEDGE:-}"                      # grounding text per SUBSET example: knowledge F1 in the report
REPORT="${REPORT:-$CKPTS/converged_${CONFIG}_seed$SEED.md}"
DRY_RUN="${DRY_RUN:-}"
# -------------------------------------------------------------------------------------------

export WORK CONFIG LR PATIENCE MAX_EPOCH KI_HOME ALIGN_DIR KI_BIN SUBSET
[ -n "$THREADS" ] && export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
in_systems() { [[ " $SYSTEMS " == *" $1 "* ]]; }
for system in $SYSTEMS; do
  case "$system" in baseline|ki|nd|ki_nd) ;; *) echo "unknown system '$system' in SYSTEMS (baseline ki nd ki_nd)" >&2; exit 1 ;; esac
done
if [ -z "${STAGES:-}" ]; then  # the stages SYSTEMS needs
  STAGES="baseline"
  { in_systems nd || in_systems ki_nd; } && STAGES="$STAGES teacher"
  { in_systems ki || in_systems ki_nd; } && STAGES="$STAGES ki_inputs"
  for system in ki nd ki_nd; do in_systems "$system" && STAGES="$STAGES $system"; done
  [ "$KID_DECODE" = 1 ] && STAGES="$STAGES kid"
  STAGES="$STAGES report"
fi
[ -n "$DRY_RUN" ] || [ -f "$WORK/data-bin/dict.src.txt" ] || {
  echo "run examples/dailydialog/prepare.sh first ($WORK/data-bin)" >&2; exit 1; }
[ -n "$DRY_RUN" ] || [ -f "$WORK/tok/$SUBSET.tgt" ] || {
  echo "SUBSET=$SUBSET: $WORK/tok/$SUBSET.tgt not found (make it with examples/common/subset.sh)" >&2; exit 1; }

run() {  # the command, printed; run unless DRY_RUN
  echo "+ $*"
  [ -n "$DRY_RUN" ] || "$@"
}
# stopping_point DIR METRIC -> "CAP LAST": the epoch one uninterrupted run with PATIENCE and
# MAX_EPOCH stops at (best epoch by METRIC + PATIENCE; MAX_EPOCH before any validation) and the
# last validated epoch (0: none), from DIR/train.log
stopping_point() {
  python3 -m analysis.training_curve "$1/train.log" --metric "$2" --stopping-point "$PATIENCE" "$MAX_EPOCH"
}
# finished DIR METRIC: whether DIR's run has reached its stopping point
finished() {
  local point cap last
  point="$(stopping_point "$1" "$2")"
  read -r cap last <<< "$point"
  [ "$last" -ge "$cap" ]
}
# train_until_stopped DIR METRIC EPOCH_VAR [NAME=VALUE...] COMMAND...: run COMMAND (a recipe's
# training, saving in DIR) under env with EPOCH_VAR (the recipe's --max-epoch variable) set to DIR's
# stopping point, until the run reaches it; nothing when it has (DRY_RUN: the first command only)
train_until_stopped() {
  local dir="$1" metric="$2" epoch_var="$3" point cap last previous=-1
  shift 3
  while :; do
    point="$(stopping_point "$dir" "$metric")"
    read -r cap last <<< "$point"
    [ "$last" -lt "$cap" ] || return 0
    if [ "$last" -le "$previous" ]; then
      echo "$dir: the run stayed at epoch $last below its stopping point $cap (see $dir/train.log)" >&2
      return 1
    fi
    previous="$last"
    run env "$epoch_var=$cap" "$@"
    [ -z "$DRY_RUN" ] || return 0
  done
}

if has_stage baseline; then
  train_until_stopped "$BASE_DIR" nll_loss MAX_EPOCH \
    SEED="$SEED" SAVE_DIR="$BASE_DIR" bash "$RECIPES/train_transformer.sh" --best-checkpoint-metric nll_loss
  for script in generate evaluate; do
    run env CHECKPOINT="$BASE_DIR/checkpoint_best.pt" bash "$RECIPES/$script.sh"
  done
fi

if has_stage teacher; then
  if [ ! -f "$WORK/entropy/negative/data-bin/dict.src.txt" ]; then
    run env STAGES="entropy binarise" RATIO="$RATIO" TIE_BREAK="$TIE_BREAK" bash "$ND_RECIPE"
  fi
  # the teacher's checkpoint_best.pt is chosen by fairseq's default metric, the validation loss
  train_until_stopped "$TEACHER_DIR" loss TEACHER_EPOCH \
    STAGES=teacher RATIO="$RATIO" TIE_BREAK="$TIE_BREAK" SEED="$TEACHER_SEED" TEACHER_DIR="$TEACHER_DIR" \
    bash "$ND_RECIPE"
fi

if has_stage ki_inputs; then
  # from the first stage whose output is missing on (later stages depend on earlier ones)
  ki_stages="" redo=""
  for pair in "kb:$KI_HOME/kb/items.tsv" "retriever:$KI_HOME/retriever/config.json" \
      "index:$KI_HOME/index/meta.json" "mine:$ALIGN_DIR/train.align" "mine:$ALIGN_DIR/valid.align" \
      "mine:$ALIGN_DIR/test.align" "binarise:$KI_BIN/train.align.ids.npy" "binarise:$KI_BIN/valid.align.ids.npy"; do
    [ -n "$redo" ] || [ ! -f "${pair#*:}" ] && redo=1
    [ -n "$redo" ] && [[ " $ki_stages " != *" ${pair%%:*} "* ]] && ki_stages="$ki_stages ${pair%%:*}"
  done
  [ -n "$ki_stages" ] && run env STAGES="${ki_stages# }" KI_HOME="$KI_HOME" ALIGN_DIR="$ALIGN_DIR" \
    bash "$RECIPES/train_ki.sh"
fi

if has_stage ki; then
  train_until_stopped "$KI_DIR" nll_loss MAX_EPOCH \
    STAGES=train SEED="$SEED" SAVE_DIR="$KI_DIR" KI_LAMBDA="$KI_LAMBDA" bash "$RECIPES/train_ki.sh"
  run env STAGES="generate evaluate" SAVE_DIR="$KI_DIR" bash "$RECIPES/train_ki.sh"
fi

if has_stage nd || has_stage ki_nd; then
  if [ -z "$ND_GAMMA" ]; then
    if finished "$BASE_DIR" nll_loss; then
      ND_GAMMA="$(python3 -c 'import sys; from analysis.training_curve import read_training_log as r
c = r(sys.argv[1]); print(max(1, c.updates_at_best // 2))' "$BASE_DIR/train.log")"
    elif [ -n "$DRY_RUN" ]; then
      ND_GAMMA="<half the baseline's updates at its best epoch>"
    else
      echo "ND_GAMMA: the baseline has not finished training ($BASE_DIR/train.log); run stage baseline first" \
        "or set ND_GAMMA" >&2
      exit 1
    fi
  fi
  echo "ND_GAMMA=$ND_GAMMA"
fi

if has_stage nd; then
  train_until_stopped "$ND_DIR" nll_loss MAX_EPOCH \
    STAGES=student SEED="$SEED" TEACHER_DIR="$TEACHER_DIR" STUDENT_DIR="$ND_DIR" ND_GAMMA="$ND_GAMMA" \
    bash "$ND_RECIPE"
  run env STAGES="generate evaluate" STUDENT_DIR="$ND_DIR" KNOWLEDGE="$KNOWLEDGE" bash "$ND_RECIPE"
fi

if has_stage ki_nd; then
  train_until_stopped "$KI_ND_DIR" nll_loss MAX_EPOCH \
    STAGES=train SEED="$SEED" SAVE_DIR="$KI_ND_DIR" TEACHER_DIR="$TEACHER_DIR" ND_GAMMA="$ND_GAMMA" \
    KI_LAMBDA="$KI_LAMBDA" bash "$RECIPES/train_ki_nd.sh"
  run env STAGES="generate evaluate" SAVE_DIR="$KI_ND_DIR" bash "$RECIPES/train_ki_nd.sh"
fi

dir_of() {  # dir_of SYSTEM -> its checkpoint folder
  case "$1" in baseline) echo "$BASE_DIR" ;; ki) echo "$KI_DIR" ;; nd) echo "$ND_DIR" ;; ki_nd) echo "$KI_ND_DIR" ;; esac
}
label_of() {  # label_of SYSTEM -> its name in the report
  case "$1" in baseline) echo baseline ;; ki) echo +KI ;; nd) echo +ND ;; ki_nd) echo +KI+ND ;; esac
}

if has_stage kid; then
  kid_stages="retrieve trie decode evaluate"  # the first system retrieves and builds the tries
  for system in $SYSTEMS; do
    run env CHECKPOINT="$(dir_of "$system")/checkpoint_best.pt" STAGES="$kid_stages" bash "$RECIPES/generate_kid.sh"
    kid_stages="decode evaluate"
  done
fi

if has_stage report; then
  systems=() decoders=(greedy beam5)
  for system in $SYSTEMS; do systems+=(--system "$(label_of "$system")=$(dir_of "$system")"); done
  [ "$KID_DECODE" = 1 ] && decoders+=("gen_kid/*")
  run python3 -m analysis.method_comparison --baseline baseline --ref "$WORK/tok/$SUBSET.tgt" --subset "$SUBSET" \
    ${KNOWLEDGE:+--knowledge "$KNOWLEDGE"} "${systems[@]}" --decoders "${decoders[@]}" --allow-missing --markdown "$REPORT"
fi
