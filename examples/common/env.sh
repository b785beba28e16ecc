# Sourced by every recipe: repository root, fairseq plugin dir, shared model/optimiser settings.
# Each recipe sets its own paths as variables at its top; this file holds what they share.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
USER_DIR="$ROOT/fairseq_plugins"
SHARED_DATA="${SHARED_DATA:-$ROOT/../shared/data}"
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1

# has_stage NAME: whether the recipe's STAGES (a space-separated list) names stage NAME.
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }

# transformer_args CONFIG -> the architecture flags of one model size.
#   paper: the knowledge-internalization paper's Transformer (appendix B): 6+6 layers,
#          512 model / 1024 FFN, 4 heads, shared embeddings.
#   small: the CPU configuration used for our measured baselines: 3+3 layers, 256 / 1024, 4 heads.
#   compact: the CPU configuration for runs to convergence (early stopping): 2+2 layers, 128 / 512,
#          4 heads; one thread trains it at about 0.42 updates/s of 4,096 tokens on DailyDialog.
#   tiny:  a seconds-long smoke-test model (quick start, tests).
transformer_args() {
  local common="--arch transformer --share-all-embeddings --activation-fn relu"
  case "$1" in
    paper) echo "$common --encoder-layers 6 --decoder-layers 6 --encoder-embed-dim 512 --decoder-embed-dim 512 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024 --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.3" ;;
    small) echo "$common --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256 --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024 --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.1" ;;
    compact) echo "$common --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.1" ;;
    tiny)  echo "$common --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 64 --decoder-embed-dim 64 --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128 --encoder-attention-heads 2 --decoder-attention-heads 2 --dropout 0.1" ;;
    *) echo "unknown CONFIG '$1' (expected paper, small, compact or tiny)" >&2; return 1 ;;
  esac
}

# subword_format TOKENIZER -> how KI mining groups the subword tokens of prepare.sh's TOKENIZER
# (bert: WordPiece, spm: SentencePiece) into words (ki-mine --subword-format).
subword_format() {
  case "$1" in
    bert) echo wordpiece ;;
    spm)  echo sentencepiece ;;
    *) echo "unknown TOKENIZER '$1' (bert or spm)" >&2; return 1 ;;
  esac
}

# encoder_dim CONFIG -> the encoder width of that model size (the KI criterion's --ki-encoder-dim).
encoder_dim() {
  case "$1" in
    paper) echo 512 ;;
    small) echo 256 ;;
    compact) echo 128 ;;
    tiny)  echo 64 ;;
    *) echo "unknown CONFIG '$1' (expected paper, small, compact or tiny)" >&2; return 1 ;;
  esac
}

# optimiser_args: Adam (0.9, 0.98) with linear warm-up from 1e-7 then inverse-sqrt decay, as in
# the knowledge-internalization paper (appendix B), batches of at most MAX_TOKENS tokens.
optimiser_args() {
  echo "--optimizer adam --adam-betas (0.9,0.98) --clip-norm 0.1 --lr ${LR:-0.001} --lr-scheduler inverse_sqrt \
--warmup-updates ${WARMUP:-400} --warmup-init-lr 1e-07 --weight-decay 0.0001 --max-tokens ${MAX_TOKENS:-4096}"
}

# binarise_split TOK_PREFIX DATA_BIN NAME: TOK_PREFIX.{src,tgt} -> DATA_BIN/NAME.src-tgt.{src,tgt}.{bin,idx}
# with DATA_BIN's own dict.{src,tgt}.txt: one more split of an already binarised corpus (fairseq's
# log is shown only when it fails).
binarise_split() {
  local prefix="$1" data_bin="$2" name="$3" tmp f
  tmp="$(mktemp -d)"
  if ! fairseq-preprocess --source-lang src --target-lang tgt --testpref "$prefix" \
      --srcdict "$data_bin/dict.src.txt" --tgtdict "$data_bin/dict.tgt.txt" --destdir "$tmp" --workers 1 \
      > "$tmp/preprocess.log" 2>&1; then
    cat "$tmp/preprocess.log" >&2
    rm -rf "$tmp"
    return 1
  fi
  for f in "$tmp"/test.src-tgt.*; do
    mv "$f" "$data_bin/$name.${f##*/test.}"
  done
  rm -rf "$tmp"
}

# decode_and_score CHECKPOINT [KNOWLEDGE]: the train recipes' generate and evaluate stages, each
# when STAGES names it: greedy and beam 5 (length penalty LENPEN, default 1.0) on the test set of
# DATA_BIN, then test PPL + dialog-metrics (KNOWLEDGE = grounding text per test example for
# knowledge F1; empty = none). Expects WORK and DATA_BIN.
decode_and_score() {
  local checkpoint="$1" knowledge="${2:-}"
  if has_stage generate; then
    WORK="$WORK" DATA_BIN="$DATA_BIN" CHECKPOINT="$checkpoint" LENPEN="${LENPEN:-1.0}" \
      bash "$ROOT/examples/common/generate.sh"
  fi
  if has_stage evaluate; then
    WORK="$WORK" DATA_BIN="$DATA_BIN" CHECKPOINT="$checkpoint" KNOWLEDGE="$knowledge" \
      bash "$ROOT/examples/common/evaluate.sh"
  fi
}
