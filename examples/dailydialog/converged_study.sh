#!/usr/bin/env bash
# The converged comparison on DailyDialog: baseline, +KI, +ND and +KI+ND, each trained to
# convergence (CONFIG=compact: 2+2 layers, 128/512; early stopping on the validation NLL) with one
# seed, decoded greedily and with beam 5, then one report with paired-bootstrap intervals against
# the baseline. Stages and every option: examples/common/converged_study.sh. Run prepare.sh first, then
#   bash examples/dailydialog/converged_study.sh
#   DRY_RUN=1 bash examples/dailydialog/converged_study.sh             # print what would run, run nothing
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$(cd "$(dirname "$0")/../.." && pwd)/work/dailydialog}"   # prepare.sh's output
SYSTEMS="${SYSTEMS:-baseline ki nd ki_nd}"
KID_DECODE="${KID_DECODE:-0}"              # DailyDialog has no grounding knowledge to decode with
# -------------------------------------------------------------------------------------------
RECIPES="$(cd "$(dirname "$0")" && pwd)"
export WORK SYSTEMS KID_DECODE RECIPES
exec bash "$(dirname "$0")/../common/converged_study.sh" "$@"
