#!/usr/bin/env bash
# A plain vLLM server for Qwen3-Reranker, usable as an upstream of the rerankd gateway (deploy/vllm/README.md).
#   MODEL=Qwen/Qwen3-Reranker-4B PORT=8001 deploy/vllm/serve.sh [more vllm serve flags]
# --runner pooling: the model scores, it does not generate (vLLM >= 0.10; older releases spelled it --task score).
# --hf-overrides loads the causal LM as a one-logit classifier: the lm_head rows of "no" and "yes" become
# one row (w_yes - w_no), so the score is sigmoid(logit_yes - logit_no), the model card's number.
# --chat-template builds the model card's prompt around each (query, document) pair; without it vLLM
# scores the bare concatenation query+document and the scores are wrong.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec vllm serve "${MODEL:-Qwen/Qwen3-Reranker-0.6B}" \
  --runner pooling \
  --hf-overrides '{"architectures":["Qwen3ForSequenceClassification"],"classifier_from_token":["no","yes"],"is_original_qwen3_reranker":true}' \
  --chat-template "$here/qwen3_reranker.jinja" \
  --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" \
  "$@"
