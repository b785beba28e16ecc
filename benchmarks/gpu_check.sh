#!/usr/bin/env bash
# GPU check (issue 18): on a CUDA machine, the device-parametrised tests, the three benchmarks and
# a paper-budget DailyDialog run of baseline, KI and ND, with every result under GPU_OUT.
#   bash benchmarks/gpu_check.sh                    # every step
#   STEPS="tests step-cost" bash benchmarks/gpu_check.sh
#   DRY_RUN=1 bash benchmarks/gpu_check.sh          # print the commands, run nothing (no CUDA needed)
# Without CUDA (torch.cuda.is_available() false, e.g. a CPU build of torch) it stops at once with
# exit status 2 and says why: nothing it measures would be a GPU number.
# Steps (STEPS, run in this order whatever order they are named in):
#   tests         the tests taking the `device` fixture (tests/conftest.py), cpu and cuda cases,
#                 with REQUIRE_CUDA=1 so a skipped cuda case fails; -rs lists the other skips (faiss
#                 without GPUs skips its cuda cases: install faiss-gpu-cu12, see install.sh)
#   data          examples/dailydialog/prepare.sh (if WORK/data-bin is missing)
#   step-cost     benchmarks/training_step_cost.py on CUDA: plain step vs ND, KI, KI+ND (ND's CUDA
#                 block size of soft_unlikelihood included), then UL with smaller batches
#   ki-inputs     train_ki.sh's stages kb retriever index mine binarise (retriever capped at
#                 RETRIEVER_SECONDS; encoder, index and mining on the GPU: --device/--gpu auto)
#   mining-speed  benchmarks/ki_mining_speed.py (it measures the CPU path: --gpu no --device cpu)
#   paper         the KI paper's Transformer (CONFIG=paper: 6+6 layers, 512/1024, 4 heads), early
#                 stopping as in the KI paper (validation loss, patience 10 epochs: --patience 10
#                 on the validation NLL), each training capped by fairseq's --stop-time-hours:
#                 baseline BASE_MIN, KI KI_MIN, ND teacher TEACHER_MIN, ND student ND_MIN minutes
#                 (defaults: 7.5 minutes of training in all, so that with decoding, scoring and
#                 ND's entropy/binarise the step fits in 10 minutes of an H100; KI's inputs are
#                 the ki-inputs step). Then greedy + beam-5 decoding and metrics of the three, and
#                 GPU_OUT/paper_runs.md (epochs, updates, stop reason, best valid NLL, metrics)
#   kid-speed     benchmarks/kid_decoding_speed.py on the paper baseline (KID_CHECKPOINT) with
#                 tries for 64 test contexts (kid-retrieve sparse + kid-build-trie); CPU decoding
# Estimates, not measured (no GPU was lent when this was written): tests 1-2 min, data 1-2 min,
# step-cost 2 min, ki-inputs 5 min, mining-speed 3 min, paper 10 min, kid-speed 3 min.
# Needs the shared data (SHARED_DATA, default ../shared/data, else ./shared/data) for data,
# ki-inputs and kid-speed; ki-inputs reads WordNet from /usr/share/wordnet (Debian wordnet-base;
# WORDNET_DIR= builds the knowledge base without it). Every variable of the recipes passes through.
USER_SHARED_DATA="${SHARED_DATA:-}"
source "$(dirname "${BASH_SOURCE[0]}")/../examples/common/env.sh"

# --- options (override by environment) -----------------------------------------------------
ALL_STEPS="tests data step-cost ki-inputs mining-speed paper kid-speed"
STEPS="${STEPS:-$ALL_STEPS}"
DRY_RUN="${DRY_RUN:-}"
GPU_OUT="${GPU_OUT:-$ROOT/benchmarks/results/gpu}"    # JSON, logs, tables of this check
WORK="${WORK:-$ROOT/work/dailydialog}"                 # DailyDialog prepare.sh output
KI_HOME="${KI_HOME:-$ROOT/work/ki}"                    # knowledge base, retriever, index
DEVICE_TESTS="${DEVICE_TESTS:-}"                       # default: every tests/test_*.py using `device`
CONFIG="${CONFIG:-paper}"
MAX_EPOCH="${MAX_EPOCH:-200}"                          # the time caps and the patience stop first
PATIENCE="${PATIENCE:-10}"                             # KI paper: no improvement over ten epochs
BASE_MIN="${BASE_MIN:-2}"                              # minutes of training per run
KI_MIN="${KI_MIN:-2}"
TEACHER_MIN="${TEACHER_MIN:-1}"
ND_MIN="${ND_MIN:-2.5}"
ND_GAMMA="${ND_GAMMA:-}"                               # default: half the baseline's updates
RETRIEVER_SECONDS="${RETRIEVER_SECONDS:-120}"
NUM_SHARDS="${NUM_SHARDS:-4}"                          # ki-mine shards per split, run at once
SEED="${SEED:-1}"
EXTRA_TRAIN_ARGS="${EXTRA_TRAIN_ARGS:-}"               # e.g. --fp16 (not the papers'; untested here)
KID_CHECKPOINT="${KID_CHECKPOINT:-$WORK/checkpoints/transformer_$CONFIG/checkpoint_best.pt}"
# -------------------------------------------------------------------------------------------

for step in $STEPS; do
  [[ " $ALL_STEPS " == *" $step "* ]] || { echo "gpu_check.sh: unknown step '$step' (steps: $ALL_STEPS)" >&2; exit 2; }
done
has_step() { [[ " $STEPS " == *" $1 "* ]]; }

# run CMD...: print it, then run it unless DRY_RUN; a failure stops the check (set -e)
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ -n "$DRY_RUN" ] || "$@"
}

if [ -z "$DRY_RUN" ]; then
  python3 - <<'EOF' || { echo "gpu_check.sh: stopped before any step: no CUDA device" >&2; exit 2; }
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check.sh: no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) "
             "reports torch.cuda.is_available() = False; run this script on a machine with a GPU and a CUDA "
             "build of torch (DRY_RUN=1 prints its commands anywhere)")
EOF
fi

if [ -z "$USER_SHARED_DATA" ] && [ ! -d "$SHARED_DATA" ] && [ -d "$ROOT/shared/data" ]; then
  SHARED_DATA="$ROOT/shared/data"
fi
needs_shared_data() {
  [ -n "$DRY_RUN" ] || [ -d "$SHARED_DATA" ] || {
    echo "gpu_check.sh: step $1 needs the shared data: $SHARED_DATA not found (set SHARED_DATA)" >&2; exit 2; }
}
[ -n "$DEVICE_TESTS" ] || DEVICE_TESTS="$(cd "$ROOT" && grep -lE 'def test_\w+\([^)]*\bdevice\b' tests/test_*.py | tr '\n' ' ')"
minutes_to_hours() { awk -v m="$1" 'BEGIN { printf "%.6f", m / 60 }'; }
[ -n "$DRY_RUN" ] || mkdir -p "$GPU_OUT"
cd "$ROOT"
# the console scripts (prepare-*, ki-*, kid-*) import this checkout's packages, wherever installed from
export SHARED_DATA PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
TIMINGS="$GPU_OUT/timings.tsv"
step_start() { echo "== gpu_check.sh: step $1"; STEP_T0=$SECONDS; }
step_end() { [ -n "$DRY_RUN" ] || printf '%s\t%d\n' "$1" $((SECONDS - STEP_T0)) >> "$TIMINGS"; }

if [ -z "$DRY_RUN" ]; then
  { date -u; nvidia-smi || true
    python3 -c 'import torch, faiss; print("torch", torch.__version__, "cuda", torch.version.cuda,
"device", torch.cuda.get_device_name(0), "faiss GPUs", faiss.get_num_gpus())'
  } > "$GPU_OUT/env.txt" 2>&1
fi

if has_step tests; then
  step_start tests
  # shellcheck disable=SC2086
  run env REQUIRE_CUDA=1 python3 -m pytest -q -rs -p no:cacheprovider $DEVICE_TESTS \
    --junitxml "$GPU_OUT/device_tests.xml"
  step_end tests
fi

if has_step data && { [ -n "$DRY_RUN" ] || [ ! -f "$WORK/data-bin/dict.src.txt" ]; }; then
  needs_shared_data data
  step_start data
  run env WORK="$WORK" bash examples/dailydialog/prepare.sh
  step_end data
fi

if has_step step-cost; then
  step_start step-cost
  run python3 benchmarks/training_step_cost.py --data-bin "$WORK/data-bin" \
    --criteria lsce,nd,nd_pred,nd_hid,nd_att,ki,ki_nd --repeats 3 --output "$GPU_OUT/training_step_cost.json"
  run python3 benchmarks/training_step_cost.py --data-bin "$WORK/data-bin" --criteria lsce,ul \
    --max-tokens 1024 --num-batches 8 --output "$GPU_OUT/training_step_cost_ul.json"
  step_end step-cost
fi

KI_ENV=(KI_HOME="$KI_HOME")
if has_step ki-inputs; then
  needs_shared_data ki-inputs
  step_start ki-inputs
  run env WORK="$WORK" "${KI_ENV[@]}" STAGES="kb retriever index mine binarise" RETRIEVER_ARGS="--max-seconds $RETRIEVER_SECONDS" \
    NUM_SHARDS="$NUM_SHARDS" MINE_JOBS="$NUM_SHARDS" bash examples/dailydialog/train_ki.sh
  step_end ki-inputs
fi

if has_step mining-speed; then
  step_start mining-speed
  run python3 benchmarks/ki_mining_speed.py --source "$WORK/tok/valid.src" --index "$KI_HOME/index" \
    --knowledge-base "$KI_HOME/kb" --retriever "$KI_HOME/retriever" --lines 3000 \
    --threads "$(nproc)" --output "$GPU_OUT/ki_mining_speed.json"
  step_end mining-speed
fi

# train_args MINUTES: the flags every paper-budget training gets (early stopping + time cap)
train_args() {
  echo "--patience $PATIENCE --best-checkpoint-metric nll_loss --stop-time-hours $(minutes_to_hours "$1") $EXTRA_TRAIN_ARGS"
}
CKPTS="$WORK/checkpoints"
if has_step paper; then
  step_start paper
  common=(WORK="$WORK" CONFIG="$CONFIG" MAX_EPOCH="$MAX_EPOCH" SEED="$SEED")
  # shellcheck disable=SC2046
  run env "${common[@]}" bash examples/dailydialog/train_transformer.sh $(train_args "$BASE_MIN")
  for script in generate evaluate; do
    run env WORK="$WORK" CHECKPOINT="$CKPTS/transformer_$CONFIG/checkpoint_best.pt" bash "examples/dailydialog/$script.sh"
  done
  # shellcheck disable=SC2046
  run env "${common[@]}" "${KI_ENV[@]}" STAGES="train generate evaluate" bash examples/dailydialog/train_ki.sh \
    $(train_args "$KI_MIN")
  # ND: D_N, then the teacher (train_nd.sh's teacher stage: MLE on D_N, the student's architecture,
  # run here directly to give it a time cap), then the student with alpha's peak at ND_GAMMA
  run env "${common[@]}" STAGES="entropy binarise" bash examples/dailydialog/train_nd.sh
  # shellcheck disable=SC2046
  run env "${common[@]}" DATA_BIN="$WORK/entropy/negative/data-bin" SAVE_DIR="$CKPTS/nd_teacher_$CONFIG" \
    bash examples/common/train_transformer.sh $(train_args "$TEACHER_MIN")
  if [ -z "$ND_GAMMA" ]; then
    if [ -n "$DRY_RUN" ]; then
      ND_GAMMA="<half the baseline's updates>"
    else
      updates="$(grep -oE 'num_updates [0-9]+' "$CKPTS/transformer_$CONFIG/train.log" | tail -n 1 | awk '{print $2}')"
      ND_GAMMA=$(( ${updates:-2} / 2 ))
    fi
  fi
  # shellcheck disable=SC2046
  run env "${common[@]}" STAGES="student generate evaluate" ND_GAMMA="$ND_GAMMA" bash examples/dailydialog/train_nd.sh \
    $(train_args "$ND_MIN")
  if [ -z "$DRY_RUN" ]; then
    summary="$GPU_OUT/paper_runs.md"
    { echo "# paper-budget runs ($CONFIG, patience $PATIENCE, caps: base $BASE_MIN, KI $KI_MIN, teacher $TEACHER_MIN, ND $ND_MIN min; ND_GAMMA $ND_GAMMA)"
      for run_dir in transformer_$CONFIG ki_$CONFIG nd_teacher_$CONFIG nd_student_$CONFIG; do
        log="$CKPTS/$run_dir/train.log"
        echo; echo "## $run_dir"; echo '```'
        grep -E "\| valid on 'valid' subset" "$log" | tail -n 1 || true
        grep -E "Stopping training due to|early stop|done training in" "$log" | tail -n 2 || true
        echo '```'
        cat "$CKPTS/$run_dir/gen/metrics.md" 2>/dev/null || true
      done
    } > "$summary"
    for run_dir in transformer_$CONFIG ki_$CONFIG nd_teacher_$CONFIG nd_student_$CONFIG; do
      cp "$CKPTS/$run_dir/train.log" "$GPU_OUT/$run_dir.train.log"
    done
    for run_dir in transformer_$CONFIG ki_$CONFIG nd_student_$CONFIG; do
      cp "$CKPTS/$run_dir/gen/metrics.md" "$GPU_OUT/$run_dir.metrics.md"
    done
  fi
  step_end paper
fi

if has_step kid-speed; then
  needs_shared_data kid-speed
  step_start kid-speed
  kid_dir="$GPU_OUT/kid"
  run mkdir -p "$kid_dir"
  run sh -c "head -n 64 '$WORK/tok/test.src' > '$kid_dir/test64.src'"
  wiki="$SHARED_DATA/wiki_summaries/summaries_en.json.gz"
  run kid-retrieve --input "$kid_dir/test64.src" --wordpiece --collection "$wiki" --retriever sparse --top-k 10 \
    --output "$kid_dir/ret64.jsonl"
  run kid-build-trie --retrieval "$kid_dir/ret64.jsonl" --collection "$wiki" --source "$kid_dir/test64.src" \
    --wordpiece -k 10 --output "$kid_dir/trie64.jsonl" --triples-cache "$kid_dir/triples.jsonl"
  run python3 benchmarks/kid_decoding_speed.py --checkpoint "$KID_CHECKPOINT" --data-bin "$WORK/data-bin" \
    --trie "$kid_dir/trie64.jsonl" --output "$GPU_OUT/kid_decoding_speed.json"
  step_end kid-speed
fi
echo "gpu_check.sh: done (${DRY_RUN:+dry run, nothing run; }results in $GPU_OUT)"
