#!/usr/bin/env bash
# The converged comparison on CMU_DoG (knowledge-grounded, so all three methods apply): the
# baseline and +KI+ND, each trained to convergence (CONFIG=compact, early stopping on the
# validation NLL) with one seed, decoded plainly (greedy, beam 5) and with KID (generate_kid.sh:
# sampling, beam 5, KID, Little KID; KID_SOLVER, KID_SIGMA, ... pass through), then one report
# with knowledge F1 and paired-bootstrap intervals against the baseline. Stages and every option:
# examples/common/converged_study.sh. Run prepare.sh first, then
#   bash examples/cmu_dog/converged_study.sh
#   SYSTEMS="baseline ki nd ki_nd" bash examples/cmu_dog/converged_study.sh   # all four
#   SUBSET=test_every6 bash examples/cmu_dog/converged_study.sh   # decode and report every 6th test example
# --- paths and options (override by environment) -------------------------------------------
WORK="${WORK:-$(cd "$(dirname "$0")/../.." && pwd)/work/cmu_dog}"   # prepare.sh's output
SYSTEMS="${SYSTEMS:-baseline ki_nd}"
KID_DECODE="${KID_DECODE:-1}"
KNOWLEDGE="${KNOWLEDGE:-$WORK/tok/${SUBSET:-test}.knowledge}"   # the section the speaker saw, one line per example
# -------------------------------------------------------------------------------------------
RECIPES="$(cd "$(dirname "$0")" && pwd)"
export WORK SYSTEMS KID_DECODE KNOWLEDGE RECIPES
exec bash "$(dirname "$0")/../common/converged_study.sh" "$@"
