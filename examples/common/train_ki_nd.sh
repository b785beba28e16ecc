#!/usr/bin/env bash
# Shared body of the per-dataset train_ki_nd.sh recipes (examples/{dailydialog,cmu_dog}/):
# knowledge internalization + negative distillation in ONE training run: one model trained with --criterion ki_negative_distillation (fairseq_plugins/criterions/ki_nd.py):
#   L = (1 - alpha) L_mle + alpha (L_pred + sum L_hid + sum L_att) + lambda L_KI
# i.e. ND's loss (Eq. 13 of ../shared/papers/negative_distillation.txt) plus KI's hinge term
# (Eq. 3 of ../shared/papers/knowledge_internalization.txt) on the same forward pass. The
# checkpoint is a plain fairseq Transformer: decoding needs neither the teacher nor knowledge.
# Stages (STAGES, in this order):
#   ki        the KI inputs, by train_ki.sh's own stages KI_STAGES (default: knowledge base ->
#             retriever -> index -> mining -> binarise): KI_BIN (DATA_BIN + alignments) and
#             KNOWLEDGE_TABLE. Options: examples/common/train_ki.sh (KB_ARGS, RETRIEVER_ARGS, ...)
#   nd        the negative teacher, by train_nd.sh's own stages ND_STAGES (default: source entropy
#             -> binarise D_N -> teacher): TEACHER_DIR/checkpoint_best.pt. Options: train_nd.sh
#   train     fairseq-train --task knowledge_dialog --knowledge-alignments on KI_BIN with
#             --criterion ki_negative_distillation; best checkpoint on the validation NLL
#   generate  greedy and beam 5 (plain fairseq-generate on DATA_BIN)
#   evaluate  PPL + dialog-metrics (KNOWLEDGE= grounding text for knowledge F1)
# Expects WORK and SUBWORD_FORMAT (and optionally everything below) from the calling recipe;
# extra arguments go to fairseq-train. E.g. after train_ki.sh and train_nd.sh (alignments,
# table and teacher already built):
#   STAGES="train generate evaluate" bash examples/dailydialog/train_ki_nd.sh --patience 3
# Limits: KI_LAMBDA=0 is negative_distillation's loss; ND_ARGS="--nd-alpha-schedule fixed
# --nd-alpha 0" is knowledge_internalization's (tests/test_ki_nd_criterion.py).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
: "${WORK:?set WORK}" "${SUBWORD_FORMAT:?set SUBWORD_FORMAT (none | wordpiece | sentencepiece)}"

# --- paths and options (override by environment) -------------------------------------------
DATA_BIN="${DATA_BIN:-$WORK/data-bin}"
TOK_DIR="${TOK_DIR:-$WORK/tok}"
CONFIG="${CONFIG:-small}"                       # paper | small | compact | tiny (env.sh transformer_args)
MAX_EPOCH="${MAX_EPOCH:-2}"                     # student epochs (the budget of RESULTS.md)
TEACHER_EPOCH="${TEACHER_EPOCH:-2}"             # the negative teacher's epochs (stage nd)
SEED="${SEED:-1}"
# KI: the same defaults as examples/common/train_ki.sh, passed to it explicitly
KI_HOME="${KI_HOME:-$ROOT/work/ki}"             # knowledge base, retriever, index (shared by datasets)
INDEX_DIR="${INDEX_DIR:-$KI_HOME/index}"
KNOWLEDGE_TABLE="${KNOWLEDGE_TABLE:-$INDEX_DIR/knowledge_table.npy}"   # g(K), row i = item i
ALIGN_DIR="${ALIGN_DIR:-$WORK/ki/align}"
KI_BIN="${KI_BIN:-$WORK/ki/data-bin}"           # DATA_BIN + {split}.align.ids.npy
KI_LAMBDA="${KI_LAMBDA:-1}"                     # KI appendix B: lambda = 1
KI_MARGIN="${KI_MARGIN:-0.5}"
KI_ARGS="${KI_ARGS:-}"                          # more --ki-* flags, e.g. --ki-negatives 4
KI_STAGES="${KI_STAGES:-kb retriever index mine binarise}"
# ND: the same defaults as train_nd.sh, passed to it explicitly
ENTROPY_DIR="${ENTROPY_DIR:-$WORK/entropy}"
TEACHER_DIR="${TEACHER_DIR:-$WORK/checkpoints/nd_teacher_$CONFIG}"
ND_GAMMA="${ND_GAMMA:-25600}"                   # step of the alpha peak (paper: 25600 of ~50k updates;
                                                # with a short budget use about half the updates)
ND_ARGS="${ND_ARGS:-}"                          # more --nd-* flags (see train_nd.sh's header)
ND_STAGES="${ND_STAGES:-entropy binarise teacher}"
# the composed model
SAVE_DIR="${SAVE_DIR:-$WORK/checkpoints/ki_nd_$CONFIG}"
LENPEN="${LENPEN:-1.0}"                         # beam-5 length penalty
KNOWLEDGE="${KNOWLEDGE:-}"                      # grounding text per test example (knowledge F1)
STAGES="${STAGES:-ki nd train generate evaluate}"
# -------------------------------------------------------------------------------------------

[ -f "$DATA_BIN/dict.src.txt" ] || { echo "run prepare.sh first: $DATA_BIN/dict.src.txt not found" >&2; exit 1; }
RECIPES="$ROOT/examples/dailydialog"   # its train_nd.sh is dataset-agnostic (WORK, DATA_BIN, TOK_DIR)

if has_stage ki; then
  STAGES="$KI_STAGES" WORK="$WORK" DATA_BIN="$DATA_BIN" TOK_DIR="$TOK_DIR" SUBWORD_FORMAT="$SUBWORD_FORMAT" \
    KI_HOME="$KI_HOME" INDEX_DIR="$INDEX_DIR" KNOWLEDGE_TABLE="$KNOWLEDGE_TABLE" ALIGN_DIR="$ALIGN_DIR" \
    KI_BIN="$KI_BIN" CONFIG="$CONFIG" SEED="$SEED" bash "$ROOT/examples/common/train_ki.sh"
fi

if has_stage nd; then
  STAGES="$ND_STAGES" WORK="$WORK" DATA_BIN="$DATA_BIN" TOK_DIR="$TOK_DIR" ENTROPY_DIR="$ENTROPY_DIR" \
    TEACHER_DIR="$TEACHER_DIR" TEACHER_EPOCH="$TEACHER_EPOCH" CONFIG="$CONFIG" SEED="$SEED" \
    bash "$RECIPES/train_nd.sh"
fi

if has_stage train; then
  # what each half needs, named with the stage that makes it (fairseq would fail later and less clearly)
  missing() { echo "train_ki_nd.sh: $1 not found: $2 (run stage $3, or set $4)" >&2; exit 1; }
  [ -f "$KNOWLEDGE_TABLE" ] || missing "the KI knowledge table" "$KNOWLEDGE_TABLE" "ki (KI_STAGES index)" KNOWLEDGE_TABLE
  for split in train valid; do
    [ -f "$KI_BIN/$split.align.ids.npy" ] || missing "the $split alignments" "$KI_BIN/$split.align.ids.npy" \
      "ki (KI_STAGES mine binarise)" KI_BIN
  done
  [ -f "$TEACHER_DIR/checkpoint_best.pt" ] || missing "the ND teacher" "$TEACHER_DIR/checkpoint_best.pt" \
    "nd (ND_STAGES entropy binarise teacher)" TEACHER_DIR
  CRITERION_ARGS="--criterion ki_negative_distillation --label-smoothing 0.1 \
--ki-knowledge-table $KNOWLEDGE_TABLE --ki-encoder-dim $(encoder_dim "$CONFIG") \
--ki-lambda $KI_LAMBDA --ki-margin $KI_MARGIN $KI_ARGS \
--teacher-path $TEACHER_DIR/checkpoint_best.pt --nd-gamma $ND_GAMMA $ND_ARGS" \
  WORK="$WORK" DATA_BIN="$KI_BIN" CONFIG="$CONFIG" MAX_EPOCH="$MAX_EPOCH" SEED="$SEED" SAVE_DIR="$SAVE_DIR" \
    bash "$ROOT/examples/common/train_transformer.sh" --knowledge-alignments \
    --best-checkpoint-metric nll_loss "$@"
fi

# decoding and PPL read the plain binarised data: the model needs no knowledge and no teacher
decode_and_score "$SAVE_DIR/checkpoint_best.pt" "$KNOWLEDGE"
