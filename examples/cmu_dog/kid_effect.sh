#!/usr/bin/env bash
# The KID effect-size curve on a CMU_DoG model (examples/common/kid_effect.sh): plain sampling, KID
# with the paper's Adam update, the sigma solver at several strengths and the authors' key/value
# update, and the section of the turn put in the prompt, on the same per-example random streams.
# Run prepare.sh, train_transformer.sh and generate_kid.sh's stages retrieve and trie first, e.g.
#   SUBSET=test_every6 STAGES="retrieve trie" bash examples/cmu_dog/generate_kid.sh
#   SUBSET=test_every6 bash examples/cmu_dog/kid_effect.sh
# RUNS, SEED, IN_PROMPT, PROMPT_KNOWLEDGE_TOKENS and the rest: examples/common/kid_effect.sh.
source "$(dirname "$0")/../common/env.sh"
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$ROOT/work/cmu_dog}"
CONFIG="${CONFIG:-small}"
# -------------------------------------------------------------------------------------------
export WORK CONFIG
DATASET_RECIPE="$ROOT/examples/cmu_dog/generate_kid.sh" exec bash "$ROOT/examples/common/kid_effect.sh" "$@"
