#!/usr/bin/env bash
# GPU readiness in one bounded run on a bare machine with no registry: install, build, serve, bench, parity, table.
#
# Prepare HERE first (PyPI reachable): bash bench/gpu_ready_wheels.sh   (-> .whl/, git-ignored, ~8 MiB)
# Then on the GPU machine (the `run` tool; bench/README.md has the exact call, carry [".whl"]):
#   OUT=$OUT bash bench/gpu_ready.sh
# CPU rehearsal of the very same steps (the tiny shape, a short load, wheels for this python):
#   PY_VERSION=3.11 WHEELS=/tmp/whl311 bash bench/gpu_ready_wheels.sh
#   DEVICE=cpu SHAPE=tiny WHEELS=/tmp/whl311 DOCS=16 DUR=3 LIMIT_SCALE=5 bash bench/gpu_ready.sh
#
# Steps and their budgets on the GPU (seconds; each is killed at its limit, so the whole stays ≤ ~10 min):
#   install 60 · model 180 · card 180 · per server: ready 240 + bench 2×DUR+60 + parity 60 · table 60.
# vLLM rows (rerankd --backend vllm and plain `vllm serve`, deploy/vllm/serve.sh) run only where `import vllm`
# works; elsewhere the table says "skipped: vllm not installed on this machine".
# Knobs: DEVICE (cuda) SHAPE (4b) MODEL OUT (bench/results/gpu_ready) WHEELS (.whl) PYTHON (python3)
#        DOCS (64) TOKENS (240-272) CONCURRENCY (1,8) DUR (30) VLLM_MEM (0.85) MAX_LEN (4096) PEAK_TFLOPS
#        LIMIT_SCALE (1: multiplies every step's time limit).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-4b}
OUT=${OUT:-bench/results/gpu_ready}
WHEELS=${WHEELS:-.whl}
PYTHON=${PYTHON:-python3}
DOCS=${DOCS:-64}
TOKENS=${TOKENS:-240-272}
CONCURRENCY=${CONCURRENCY:-1,8}
DUR=${DUR:-30}
VLLM_MEM=${VLLM_MEM:-0.85}
LIMIT_SCALE=${LIMIT_SCALE:-1}  # multiplies every time limit (the CPU rehearsal on a loaded machine needs more)
MAX_LEN=${MAX_LEN:-4096}  # the workload's prompts are < 400 tokens; a short max length keeps vLLM's start short
work=$(mktemp -d /tmp/gpu-ready.XXXXXX)
MODEL=${MODEL:-$work/qwen3-reranker-$SHAPE-random}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
t_start=$(date +%s)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT
step() {  # step NAME LIMIT_S CMD...: run CMD under a time limit, print how long it took
  local name=$1 limit=$2 t0 rc=0; shift 2; t0=$(date +%s)
  echo "== $name (limit ${limit}s, at +$((t0 - t_start))s)"
  timeout $((limit * LIMIT_SCALE)) "$@" || rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 ))s"
  return "$rc"
}
wait_ready() {  # wait_ready URL PID LIMIT_S: until URL answers 200; fails at once if PID exits
  local t0; t0=$(date +%s)
  for _ in $(seq $(($3 * LIMIT_SCALE))); do
    if "$PYTHON" -c 'import sys, httpx; sys.exit(httpx.get(sys.argv[1], timeout=2).status_code != 200)' "$1" \
        2>/dev/null; then
      echo "== ready: $1 in $(( $(date +%s) - t0 ))s"; return 0
    fi
    kill -0 "$2" 2>/dev/null || { echo "== server exited before $1 answered"; return 1; }
    sleep 1
  done
  echo "== not ready after $(($3 * LIMIT_SCALE)) s: $1"; return 1
}
measure() {  # measure NAME URL PID: bench (concurrency 1 and 8) and parity against the card
  step "bench $1" $((2 * DUR + 60 * 2)) rerankd bench --url "$2" --model "$MODEL" --docs "$DOCS" \
    --doc-tokens "$TOKENS" --concurrency "$CONCURRENCY" --duration "$DUR" --server-pid "$3" --no-plot \
    --out "$OUT/bench_$1.json" || true
  step "parity $1" 60 "$PYTHON" bench/gpu_ready.py parity --card "$OUT/card.json" --url "$2" --name "$1" \
    --out "$OUT" || true
}

# 1. rerankd and its missing dependencies, from the carried wheels only, into a private folder that wins imports.
site=$work/site
step install 60 "$PYTHON" -m pip install --quiet --no-deps --no-index --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl
export PYTHONPATH=$site PATH=$site/bin:$PATH TORCHINDUCTOR_CACHE_DIR=$work/inductor
step imports 60 "$PYTHON" -c 'import rerankd, fastapi, uvicorn, pydantic, httptools, torch
print("rerankd from", rerankd.__file__, "| torch", torch.__version__, "| cuda", torch.cuda.is_available())'
[ "$DEVICE" = cuda ] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; }

# 2. The random-weight model of the requested shape (bf16 files).
[ -f "$MODEL/config.json" ] || step model 180 "$PYTHON" -m rerankd.devtools.random_model --shape "$SHAPE" \
  --dtype bfloat16 --out "$MODEL"

# 3. The card's fp32 scores of one fixed request, before any server holds device memory.
step card 180 "$PYTHON" bench/gpu_ready.py card --model "$MODEL" --device "$DEVICE" --docs "$DOCS" \
  --doc-tokens "$TOKENS" --out "$OUT/card.json" || true  # without it the table says n/a for parity

# 4. rerankd, torch backend.
rerankd serve --model "$MODEL" --backend torch --device "$DEVICE" --dtype bfloat16 --port 8000 \
  --max-model-len "$MAX_LEN" >"$OUT/serve_torch.log" 2>&1 &
pids+=($!)
if wait_ready http://127.0.0.1:8000/ready "${pids[-1]}" 240; then measure torch http://127.0.0.1:8000 "${pids[-1]}"
else tail -20 "$OUT/serve_torch.log"; fi
cleanup

# 5. rerankd's vllm backend and plain vLLM, where vLLM is installed.
if "$PYTHON" -c 'import vllm' 2>/dev/null; then
  rerankd serve --model "$MODEL" --backend vllm --device "$DEVICE" --dtype bfloat16 --port 8000 \
    --gpu-memory-utilization "$VLLM_MEM" --max-model-len "$MAX_LEN" >"$OUT/serve_vllm.log" 2>&1 &
  pids+=($!)
  if wait_ready http://127.0.0.1:8000/ready "${pids[-1]}" 240; then measure vllm http://127.0.0.1:8000 "${pids[-1]}"
  else tail -20 "$OUT/serve_vllm.log"; fi
  cleanup
  MODEL="$MODEL" HOST=127.0.0.1 PORT=8100 bash deploy/vllm/serve.sh --dtype bfloat16 \
    --gpu-memory-utilization "$VLLM_MEM" --max-model-len "$MAX_LEN" >"$OUT/serve_plain_vllm.log" 2>&1 &
  pids+=($!)
  if wait_ready http://127.0.0.1:8100/health "${pids[-1]}" 240; then measure plain_vllm http://127.0.0.1:8100 "${pids[-1]}"
  else tail -20 "$OUT/serve_plain_vllm.log"; fi
  cleanup
else
  for name in vllm plain_vllm; do echo "skipped: vllm not installed on this machine" >"$OUT/skipped_$name.txt"; done
  echo "== vllm, plain_vllm: skipped: vllm not installed on this machine"
fi

# 6. The table.
step table 60 "$PYTHON" bench/gpu_ready.py table --dir "$OUT" --model "$MODEL"
echo "== total $(( $(date +%s) - t_start ))s; wrote $OUT/gpu_table.md"
