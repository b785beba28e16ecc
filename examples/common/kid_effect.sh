#!/usr/bin/env bash
# How much does KID change a fairseq dialogue model's output, and at what price? The effect-size
# curve of issue 16 for any dataset recipe's model: plain top-p sampling and one KID run per entry
# of RUNS, all with the same SEED and per-example random streams (SEED_SCOPE=example: an output
# differs from plain sampling's only where KID changed that example's distributions), then one
# table (analysis/kid_effect.py): knowledge F1, F1, ROUGE-L, Dist-2, words, share of outputs
# changed, the paired bootstrap of each run minus plain sampling, and the decoder's own
# measurements (mean KL(pi* || pi) over the rows it updated, read from the KID step debug lines
# of each run's log, OUT.log); with IN_PROMPT=1 (default) also plain sampling with the same
# knowledge put in the prompt, the simplest alternative a user has.
#   WORK=work/cmu_dog SUBSET=test_every6 bash examples/common/kid_effect.sh
# Needs the tries of generate_kid.sh's stages retrieve and trie (same RETRIEVER, TOP_K, SUBSET) and
# a trained CHECKPOINT. Every run is resumable: an output with a hypothesis for every example of
# SUBSET, decoded with the same settings (OUT.settings: checkpoint, seed, seed scope, the run's
# variables, extra arguments), is kept; one decoded otherwise is decoded again. Each SEED has its
# own OUT_DIR. Other generate_kid.sh variables (HOPS, KID_ARGS, BATCH_SIZE, ...) pass
# through to every run; extra arguments go to every fairseq-generate call.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
: "${WORK:?set WORK (the work folder of a dataset recipe)}"

# --- options (override by environment) ------------------------------------------------------
# RUNS: adam (Algorithm 1 at KID_LR/KID_STEPS, the paper's settings by default) | sigmaX (the
# closed-form update at KL = X) | kv (the authors' release: perturbed cached keys/values) |
# kvX (kv with step size X) | lrX (adam with step size X)
RUNS="${RUNS-adam sigma0.02 sigma0.1 sigma0.5 sigma2 kv}"   # empty: plain sampling (and in_prompt) only
SUBSET="${SUBSET:-test}"
CONFIG="${CONFIG:-small}"
CHECKPOINT="${CHECKPOINT:-$WORK/checkpoints/transformer_$CONFIG/checkpoint_best.pt}"
SEED="${SEED:-1}"
OUT_DIR="${OUT_DIR:-$(dirname "$CHECKPOINT")/kid_effect/seed$SEED}"
SEED_SCOPE="${SEED_SCOPE:-example}"
TOK_DIR="${TOK_DIR:-$WORK/tok}"
REFERENCE="${REFERENCE:-$TOK_DIR/$SUBSET.tgt}"
KNOWLEDGE="${KNOWLEDGE:-$TOK_DIR/$SUBSET.knowledge}"
KNOWLEDGE_SEPARATOR="${KNOWLEDGE_SEPARATOR-__knowledge__}"
WORDPIECE="${WORDPIECE:-1}"
RESAMPLES="${RESAMPLES:-2000}"
IN_PROMPT="${IN_PROMPT:-1}"                       # 1: also the simplest alternative, the knowledge in the prompt:
                                                  #   plain sampling on "knowledge TURN_SEPARATOR context" (split
                                                  #   SUBSET_kprompt, data_prep/corpora/knowledge_prompt.py), run in_prompt
PROMPT_KNOWLEDGE_TOKENS="${PROMPT_KNOWLEDGE_TOKENS:-64}"   # the first N tokens of each example's KNOWLEDGE
TURN_SEPARATOR="${TURN_SEPARATOR:-__eou__}"       # the token between turns in the contexts
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"
DATASET_RECIPE="${DATASET_RECIPE:-$ROOT/examples/common/generate_kid.sh}"  # e.g. examples/cmu_dog/generate_kid.sh
TABLE="${TABLE:-$OUT_DIR/$SUBSET.seed$SEED.effect.md}"
# -------------------------------------------------------------------------------------------

mkdir -p "$OUT_DIR"
N_EXAMPLES="$(wc -l < "$TOK_DIR/$SUBSET.src")"
complete() { [ -f "$1" ] && [ "$(grep -c '^H-' "$1")" = "$N_EXAMPLES" ]; }
# decode NAME DECODER [VAR=VALUE ...]: one generate_kid.sh decode of SUBSET (or of the split
# VAR SPLIT=...), skipped when complete with the same settings (OUT.settings); the output is
# OUT_DIR/SPLIT.NAME.out (sample: SPLIT.sample.out)
decode() {
  local name="$1" decoder="$2" split="$SUBSET"; shift 2
  for var in "$@"; do [[ "$var" == SPLIT=* ]] && split="${var#SPLIT=}"; done
  local out="$OUT_DIR/$split.$name.out"
  local settings="checkpoint=$CHECKPOINT seed=$SEED seed_scope=$SEED_SCOPE decoder=$decoder $* extra=${EXTRA_ARGS[*]-}"
  settings="$settings retriever=${RETRIEVER-} top_k=${TOP_K-} hops=${HOPS-} kid_steps=${KID_STEPS-} kid_args=${KID_ARGS-}"
  settings="$settings topp=${SAMPLING_TOPP-} topk=${SAMPLING_TOPK-}"
  if complete "$out"; then
    if [ "$(cat "$out.settings" 2>/dev/null)" = "$settings" ]; then echo "kept $out"; return; fi
    echo "decoding $out again: decoded with other settings (or before $out.settings existed)"
  fi
  rm -f "$out.settings"
  # shellcheck disable=SC2068
  env "$@" WORK="$WORK" SUBSET="$split" CHECKPOINT="$CHECKPOINT" OUT_DIR="$OUT_DIR" SEED="$SEED" \
    SEED_SCOPE="$SEED_SCOPE" STAGES=decode DECODERS="$decoder" KID_NAME="$name" LOGLEVEL=DEBUG \
    bash "$DATASET_RECIPE" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} 2> "$out.log"   # the log: KID step lines
  complete "$out" || { echo "decoding $name did not finish: $out" >&2; exit 1; }
  printf '%s\n' "$settings" > "$out.settings"
}
EXTRA_ARGS=("$@")

decode sample sample
gen_out=(--gen-out "plain=$OUT_DIR/$SUBSET.sample.out")
for run in $RUNS; do
  case "$run" in
    adam)    vars=(KID_SOLVER=adam) ;;
    lr*)     vars=(KID_SOLVER=adam "KID_LR=${run#lr}") ;;
    sigma*)  vars=(KID_SOLVER=sigma "KID_SIGMA=${run#sigma}") ;;
    kv)      vars=(KID_SOLVER=kv) ;;
    kv*)     vars=(KID_SOLVER=kv "KID_KV_STEP=${run#kv}") ;;
    *) echo "unknown run '$run' in RUNS (adam | lrX | sigmaX | kv | kvX)" >&2; exit 1 ;;
  esac
  decode "kid.$run" kid "${vars[@]}"
  gen_out+=(--gen-out "$run=$OUT_DIR/$SUBSET.kid.$run.out")
done
if [ "$IN_PROMPT" = 1 ]; then
  prompt_split="${SUBSET}_kprompt"
  if [ ! -f "$DATA_BIN/$prompt_split.src-tgt.src.bin" ]; then
    drop=()
    [ -n "$KNOWLEDGE_SEPARATOR" ] && drop=(--drop-token "$KNOWLEDGE_SEPARATOR")
    python3 -m data_prep.corpora.knowledge_prompt --src "$TOK_DIR/$SUBSET.src" --knowledge "$KNOWLEDGE" \
      --output "$TOK_DIR/$prompt_split.src" --max-knowledge-tokens "$PROMPT_KNOWLEDGE_TOKENS" \
      --separator "$TURN_SEPARATOR" "${drop[@]}"
    cp "$TOK_DIR/$SUBSET.tgt" "$TOK_DIR/$prompt_split.tgt"
    binarise_split "$TOK_DIR/$prompt_split" "$DATA_BIN" "$prompt_split"
  fi
  decode sample sample SPLIT="$prompt_split"
  gen_out+=(--gen-out "in_prompt=$OUT_DIR/$prompt_split.sample.out")
fi

metric_args=(--ref "$REFERENCE" --knowledge "$KNOWLEDGE" --resamples "$RESAMPLES" --markdown "$TABLE"
             --json "${TABLE%.md}.json")
[ "$WORDPIECE" = 1 ] && metric_args+=(--wordpiece-detok)
[ -n "$KNOWLEDGE_SEPARATOR" ] && metric_args+=(--knowledge-drop-token "$KNOWLEDGE_SEPARATOR")
python3 -m analysis.kid_effect "${gen_out[@]}" "${metric_args[@]}"
echo "wrote $TABLE"
