#!/usr/bin/env bash
# GPU comparison: rerankd (vllm and torch backends, direct and through the gateway) vs plain `vllm serve`.
#
# NOT RUN YET: the session that wrote this had no GPU lent to it. It is the recipe for the issue-7 GPU
# goals; run it on a CUDA machine with `pip install -e '.[vllm,bench,gateway]'` and record what it prints.
#
#   bash bench/gpu_compare.sh [MODEL_DIR]     (default: builds the 4B shape with random weights)
#
# Plain vLLM needs the Qwen3-Reranker overrides (sequence classification from the yes/no tokens). Its
# /v1/rerank does not apply the reranker prompt template, so its prompts are ~80 tokens shorter than
# rerankd's per pair: compare pairs/s at equal p99 and say so.
set -euo pipefail
MODEL=${1:-/work/models/qwen3-reranker-4b-random}
OUT=${OUT:-bench/results}
DOCS=${DOCS:-16,64,256}
TOKENS=${TOKENS:-mixed:64-2048}
DUR=${DUR:-60}
[ -f "$MODEL/config.json" ] || python -m rerankd.devtools.random_model --shape 4b --out "$MODEL" --dtype bfloat16

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_ready() { for _ in $(seq 600); do curl -sf "$1" >/dev/null && return 0; sleep 1; done; echo "not ready: $1"; exit 1; }

vllm serve "$MODEL" --port 8100 --served-model-name plain --enable-prefix-caching \
  --hf-overrides '{"architectures":["Qwen3ForSequenceClassification"],"classifier_from_token":["no","yes"],"is_original_qwen3_reranker":true}' &
pids+=($!); wait_ready http://127.0.0.1:8100/health
rerankd bench --url http://127.0.0.1:8100 --model "$MODEL" --docs "$DOCS" --doc-tokens "$TOKENS" \
  --concurrency 1,8,32 --duration "$DUR" --out "$OUT/gpu_plain_vllm.json"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

for backend in vllm torch; do
  rerankd serve --model "$MODEL" --backend "$backend" --device cuda --dtype bfloat16 --port 8000 &
  server=$!; pids+=($server); wait_ready http://127.0.0.1:8000/ready
  rerankd gateway --upstream http://127.0.0.1:8000 --port 8080 --admin-key bench-admin \
    --database-url "sqlite:///$(mktemp -d)/gw.db" &
  pids+=($!); wait_ready http://127.0.0.1:8080/health
  KEY=$(curl -sf -X POST http://127.0.0.1:8080/admin/keys -H 'Authorization: Bearer bench-admin' \
    -H 'Content-Type: application/json' -d '{"name":"bench"}' | python -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  rerankd bench --url http://127.0.0.1:8000 --model "$MODEL" --docs "$DOCS" --doc-tokens "$TOKENS" \
    --concurrency 1,8,32 --duration "$DUR" --server-pid "$server" --out "$OUT/gpu_rerankd_${backend}.json"
  rerankd bench --url http://127.0.0.1:8080 --api-key "$KEY" --model "$MODEL" --docs "$DOCS" --doc-tokens "$TOKENS" \
    --concurrency 1,8,32 --duration "$DUR" --out "$OUT/gpu_gateway_${backend}.json"
  cleanup; pids=()
done
# Model FLOP utilisation on long documents: 2 × non-embedding params (3.6e9 for the 4B shape) × tokens/s
# ÷ the measured bf16 matmul peak of this GPU (time a large torch.matmul in bf16 to get it).
