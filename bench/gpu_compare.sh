#!/usr/bin/env bash
# rerankd (vllm and torch backends, direct and through the gateway) vs a plain `vllm serve`, over HTTP.
#
# GPU (the issue-7 goals): NOT RUN YET, no GPU was lent to this project. Run it on a CUDA machine with
# `pip install -e '.[vllm,bench,gateway]'` and record what it prints:
#   bash bench/gpu_compare.sh [MODEL_DIR]     (default: builds the 4B shape with random weights)
# CPU rehearsal (run: bench/README.md), from the environment tests/vllm_cpu/run builds (vLLM's CPU build)
# plus matplotlib:
#   PATH=$PWD/.venv-vllm/bin:$PATH DEVICE=cpu VLLM_MEM=0.3 MAX_LEN=8192 DOCS=64 TOKENS=240-272 CONCURRENCY=1,4 DUR=45 \
#     OUT=bench/results/cpu_compare bash bench/gpu_compare.sh /work/models/qwen3-reranker-0.6b-random
#
# The plain vLLM server is deploy/vllm/serve.sh's command: the Qwen3-Reranker overrides and the chat template
# that builds the model card's prompt around each pair (tests/vllm_cpu checks it gives rerankd's scores), so
# both sides score the same prompts. Without the template vLLM would score bare query+document concatenations,
# ~80 tokens shorter per pair: faster, and wrong.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
MODEL=${1:-/work/models/qwen3-reranker-4b-random}
OUT=${OUT:-bench/results}
DOCS=${DOCS:-16,64,256}
TOKENS=${TOKENS:-mixed:64-2048}
CONCURRENCY=${CONCURRENCY:-1,8,32}
DUR=${DUR:-60}
VLLM_MEM=${VLLM_MEM:-0.9}  # vLLM's --gpu-memory-utilization; on its CPU build, the share of the memory node
MAX_LEN=${MAX_LEN:-32768}  # both sides: vLLM reserves KV cache for one prompt this long (the config says 40960)
mkdir -p "$OUT"
[ -f "$MODEL/config.json" ] || python -m rerankd.devtools.random_model --shape 4b --out "$MODEL" --dtype bfloat16

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_ready() {  # wait_ready URL PID: until URL answers 200; fails at once if PID exits, after 10 minutes if not
  for _ in $(seq 600); do
    curl -sf "$1" >/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "exited before $1 answered"; exit 1; }
    sleep 1
  done
  echo "not ready after 600 s: $1"; exit 1
}
load() {  # load URL NAME [rerankd bench flags...]
  local url=$1 name=$2; shift 2
  rerankd bench --url "$url" --model "$MODEL" --docs "$DOCS" --doc-tokens "$TOKENS" --concurrency "$CONCURRENCY" \
    --duration "$DUR" --out "$OUT/${DEVICE}_${name}.json" "$@"
}

# On vLLM's CPU build, plain vLLM gets what its CPU guide asks for, computed by the function the vllm backend
# uses for its own engine: tcmalloc and Intel's OpenMP preloaded, and every core (by default vLLM keeps one for
# its front end).
plain_env=()
if [ "$DEVICE" = cpu ]; then
  mapfile -t plain_env < <(python -c 'import os
from rerankd.engine.backends.vllm_backend import cpu_engine_environment
print("\n".join(f"{k}={v}" for k, v in cpu_engine_environment(os.environ).items()))')
fi
env "${plain_env[@]}" MODEL="$MODEL" HOST=127.0.0.1 PORT=8100 bash deploy/vllm/serve.sh --dtype bfloat16 \
  --gpu-memory-utilization "$VLLM_MEM" --max-model-len "$MAX_LEN" &
pids+=($!); wait_ready http://127.0.0.1:8100/health "${pids[-1]}"
load http://127.0.0.1:8100 plain_vllm
cleanup; pids=()

for backend in vllm torch; do
  rerankd serve --model "$MODEL" --backend "$backend" --device "$DEVICE" --dtype bfloat16 --port 8000 \
    --gpu-memory-utilization "$VLLM_MEM" --max-model-len "$MAX_LEN" &
  server=$!; pids+=($server); wait_ready http://127.0.0.1:8000/ready "$server"
  rerankd gateway --upstream http://127.0.0.1:8000 --port 8080 --admin-key bench-admin-key-0123456789abcdef \
    --database-url "sqlite:///$(mktemp -d)/gw.db" &
  pids+=($!); wait_ready http://127.0.0.1:8080/ready "${pids[-1]}"
  KEY=$(curl -sf -X POST http://127.0.0.1:8080/admin/keys -H 'Authorization: Bearer bench-admin-key-0123456789abcdef' \
    -H 'Content-Type: application/json' -d '{"name":"bench"}' | python -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  # Peak RSS of the serving process (with the vllm backend, the model lives in vLLM's engine process instead).
  load http://127.0.0.1:8000 "rerankd_${backend}" --server-pid "$server"
  load http://127.0.0.1:8080 "gateway_${backend}" --api-key "$KEY"
  cleanup; pids=()
done
# Model FLOP utilisation on long documents (GPU): 2 × non-embedding params (3.6e9 for the 4B shape) × tokens/s
# ÷ the measured bf16 matmul peak of this GPU (time a large torch.matmul in bf16 to get it).
