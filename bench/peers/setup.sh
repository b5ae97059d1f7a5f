#!/usr/bin/env bash
# Sets up the CPU peers that bench/peers/run.py times against rerankd (bench/README.md, "The peer table").
#
#   bash bench/peers/setup.sh [MODEL_DIR]       (default /work/models/0.6b; PEERS_HOME default /work/venvs/peers)
#
# MODEL_DIR is a Qwen3-Reranker causal checkpoint (python -m rerankd.devtools.random_model --shape 0.6b --out DIR).
# Everything goes under $PEERS_HOME, nothing into rerankd's own environment:
#   venv/                 sentence-transformers + optimum-intel (OpenVINO) + torch, and the GGUF converter's needs;
#                         their own transformers (optimum-intel pins transformers<5.6)
#   models/seqcls/        the one-logit Qwen3ForSequenceClassification (score row w_yes - w_no), written by
#                         rerankd.benchmark.reference.build_sequence_classifier, and its OpenVINO IR (openvino/)
#   models/*.gguf         GGUF conversions (f16, q8_0) by llama.cpp's convert_hf_to_gguf.py
#   llama.cpp/            llama.cpp's own source from the llama-cpp-python sdist (vendor/llama.cpp), built with cmake
#                         for llama-server (--reranking, rank pooling): llama.cpp's HTTP server
#   status                one line per peer: "NAME<TAB>ok" or "NAME<TAB>failed: why" (run.py prints the reason)
#
# Why llama-server and not llama-cpp-python's Llama.embed(): with rank pooling llama.cpp returns one score per
# sequence, while Llama.embed() reads n_embd floats from that output and tokenizes without special tokens, so the
# Qwen3 prompt's <|im_start|> markers would be split into text; llama-cpp-python's own server has no rerank route.
# The C++ is the same llama.cpp that `pip install llama-cpp-python` compiles (the sdist vendors it).
#
# vLLM's CPU build is not installed here: tests/vllm_cpu/run builds it (.venv-vllm in the checkout); run.py finds it.
# Each step is skipped when its output exists; a failing step marks its peer failed and the others go on.
# Environment: RERANKD_PY (a python with rerankd and its torch/transformers; default: python), PEERS_HOME, JOBS
# (compile jobs, default nproc), LLAMA_CPP_PYTHON_VERSION, OPENVINO_STACK (pip requirements of the venv).
set -uo pipefail
cd "$(dirname "$0")/../.."
MODEL=$(realpath "${1:-/work/models/0.6b}")
PEERS_HOME=${PEERS_HOME:-/work/venvs/peers}
RERANKD_PY=${RERANKD_PY:-python}
JOBS=${JOBS:-$(nproc)}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
OPENVINO_STACK=${OPENVINO_STACK:-"sentence-transformers[openvino]==6.3.0 optimum-intel[openvino]==2.2.0 transformers>=5.0,<5.6"}
TORCH=${TORCH:-torch==2.13.0}  # the CPU build rerankd's environment uses
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$PEERS_HOME/models"
STATUS="$PEERS_HOME/status"
touch "$STATUS"
[ -f "$MODEL/config.json" ] || { echo "no model at $MODEL (python -m rerankd.devtools.random_model --shape 0.6b --out $MODEL)"; exit 2; }

mark() {  # mark NAME ok|"failed: why" (the background compile marks too: one writer at a time)
  (
    flock 8
    grep -v "^$1	" "$STATUS" > "$STATUS.tmp.$$" || true
    printf '%s\t%s\n' "$1" "$2" >> "$STATUS.tmp.$$"
    mv "$STATUS.tmp.$$" "$STATUS"
  ) 8>"$STATUS.lock"
  echo "== $1: $2"
}
step() { echo; echo "== $(date -u +%H:%M:%S) $*  (load average: $(cut -d' ' -f1-3 /proc/loadavg))"; }

VENV="$PEERS_HOME/venv"
venv() {
  step "venv $VENV: $TORCH, $OPENVINO_STACK, gguf"
  [ -f "$VENV/.complete" ] && return 0
  rm -rf "$VENV" && python3 -m venv "$VENV" || return 1
  "$VENV/bin/pip" install -q "$TORCH" || return 1
  echo "$TORCH" > "$PEERS_HOME/constraints.txt"
  # shellcheck disable=SC2086 # OPENVINO_STACK is a list of requirements
  "$VENV/bin/pip" install -q -c "$PEERS_HOME/constraints.txt" $OPENVINO_STACK gguf sentencepiece protobuf || return 1
  # optimum-intel requires torchvision; PyPI's is built against CUDA torch and next to the CPU torch its import
  # fails ("operator torchvision::nms does not exist"), which breaks `from transformers import PreTrainedModel`.
  # Nothing here needs it.
  if ! "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
    "$VENV/bin/pip" uninstall -q -y torchvision || true
  fi
  "$VENV/bin/python" -c "import optimum.intel, openvino, sentence_transformers, transformers, torch
print('openvino', openvino.__version__, 'sentence-transformers', sentence_transformers.__version__,
      'transformers', transformers.__version__, 'torch', torch.__version__)" || return 1
  touch "$VENV/.complete"
}

SEQCLS="$PEERS_HOME/models/seqcls"
openvino() {
  step "one-logit classifier $SEQCLS (rerankd.benchmark.reference.build_sequence_classifier), then its OpenVINO IR"
  "$RERANKD_PY" -c "import sys; from rerankd.benchmark.reference import build_sequence_classifier as b
b(sys.argv[1], sys.argv[2])" "$MODEL" "$SEQCLS" || return 1
  [ -f "$SEQCLS/openvino/openvino_model.xml" ] && return 0
  # CrossEncoder(..., backend="openvino") exports the IR with optimum-intel when the directory has none;
  # save_pretrained keeps it (openvino/openvino_model.xml) so the timed runs load it instead of exporting.
  "$VENV/bin/python" -c "import sys
from sentence_transformers import CrossEncoder
m = CrossEncoder(sys.argv[1], device='cpu', backend='openvino')
m.save_pretrained(sys.argv[1])" "$SEQCLS" || return 1
  [ -f "$SEQCLS/openvino/openvino_model.xml" ]
}

SRC="$PEERS_HOME/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
BUILD="$PEERS_HOME/llama.cpp"
sdist() {  # llama.cpp's source (the compile's and the GGUF converter's), as pip would fetch it
  [ -d "$SRC/vendor/llama.cpp" ] && return 0
  python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" \
    -d "$PEERS_HOME/sdist" || return 1
  tar -xzf "$PEERS_HOME/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$PEERS_HOME"
}
llama_cpp() {
  step "llama.cpp's llama-server from the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist, cmake, $JOBS jobs"
  [ -x "$BUILD/bin/llama-server" ] && return 0
  # GGML_NATIVE: the kernels for this CPU (as pip's build does); no OpenSSL, no web UI download (offline).
  cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF || return 1
  cmake --build "$BUILD" --target llama-server -j "$JOBS" || return 1
  [ -x "$BUILD/bin/llama-server" ]
}

gguf() {  # gguf OUTTYPE
  local out="$PEERS_HOME/models/qwen3-reranker-$1.gguf"
  step "GGUF $1: $out (convert_hf_to_gguf.py of the same llama.cpp)"
  [ -f "$out" ] && return 0
  # The converter recognises a Qwen3 reranker by its directory name (or a "# Qwen3-Reranker" README) and then
  # writes rank pooling and a two-row classifier (the lm_head rows of yes and no); a staging directory of links
  # named like the released model gives it that name.
  local stage="$PEERS_HOME/models/qwen3-reranker-source"
  mkdir -p "$stage"
  for f in "$MODEL"/*; do ln -sfn "$f" "$stage/$(basename "$f")"; done
  "$VENV/bin/python" "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" "$stage" --outtype "$1" --outfile "$out.tmp" \
    || { rm -f "$out.tmp"; return 1; }
  mv "$out.tmp" "$out"
}

if ! sdist; then
  for p in llama.cpp gguf-f16 gguf-q8_0; do mark "$p" "failed: pip could not download the llama-cpp-python sdist"; done
fi
# The compile is the long step and needs only cmake and a C++ compiler: it runs beside the pip installs.
# One compile at a time: a second setup.sh (say, rerun after a failed pip step) leaves a running one alone.
( flock -n 7 || { echo "== another setup.sh is compiling llama.cpp (see $BUILD.log)"; exit 0; }
  exec > "$BUILD.log" 2>&1
  if [ ! -d "$SRC/vendor/llama.cpp" ]; then exit 0; elif llama_cpp; then mark llama.cpp ok
  else mark llama.cpp "failed: llama-server did not build (log: $BUILD.log)"; fi
) 7>"$BUILD.lock" &
compile=$!
echo "llama.cpp builds in the background: $BUILD.log"
if venv; then mark venv ok; else mark venv "failed: pip could not install the OpenVINO stack (log above)"; fi
if grep -q "^venv	ok" "$STATUS"; then
  if openvino; then mark openvino ok; else mark openvino "failed: one-logit conversion or OpenVINO export (log above)"; fi
  for t in f16 q8_0; do
    [ -d "$SRC/vendor/llama.cpp" ] || break
    if gguf "$t"; then mark "gguf-$t" ok; else mark "gguf-$t" "failed: convert_hf_to_gguf.py --outtype $t (log above)"; fi
  done
else
  for p in openvino gguf-f16 gguf-q8_0; do mark "$p" "failed: the peers' venv could not be built"; done
fi
wait "$compile"
tail -n 5 "$BUILD.log"
echo; cat "$STATUS"
