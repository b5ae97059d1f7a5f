"""Prometheus metrics of the inference server, named by room and quantity under ``rerankd_``.

Why a class holding its own registry: several apps (tests, ``rerankd up`` helpers) may live in one
process, and prometheus-client's global registry refuses a second metric of the same name. Each app
gets its own :class:`ServerMetrics` and serves that registry at ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.registry import Collector

from rerankd.observability.gpu import GpuCollector

__all__ = ["LATENCY_BUCKETS", "ServerMetrics"]

# Fine enough around 5 ms – 2 s for a meaningful p99; coarse tail for long documents on CPU.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5,
    0.75, 1.0, 1.5, 2.5, 3.5, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0,
)
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000)
_TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 1048576)


class ServerMetrics:
    """Every metric ``rerankd serve`` exports. Attribute names follow the metric names."""

    def __init__(self, registry: CollectorRegistry | None = None, *, gpu: Collector | None = None) -> None:
        """``gpu``: the collector of ``rerankd_gpu_*`` series (default: NVML, silent without a GPU)."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.gpu = gpu if gpu is not None else GpuCollector()
        r.register(self.gpu)
        self.build_info = Info("rerankd_build", "Version, model, task (rerank or embed), backend, dtype and device.",
                               registry=r)
        self.requests_total = Counter(
            "rerankd_requests_total", "HTTP requests answered, by route, status code and task (rerank, embed; "
            "empty for other routes).", ["route", "status", "task"], registry=r,
        )
        self.request_duration_seconds = Histogram(
            "rerankd_request_duration_seconds", "Time from request received to response sent, by route and task.",
            ["route", "task"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.request_documents = Histogram(
            "rerankd_request_documents", "Documents per scoring request, inputs per embedding request (task).",
            ["task"], buckets=_COUNT_BUCKETS, registry=r,
        )
        self.request_tokens = Histogram(
            "rerankd_request_tokens", "Prompt tokens per scoring or embedding request (task).", ["task"],
            buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.truncated_documents_total = Counter(
            "rerankd_truncated_documents_total", "Documents cut to fit the model length.", registry=r,
        )
        self.inflight_requests = Gauge(
            "rerankd_inflight_requests", "Scoring requests accepted and not yet answered.", registry=r,
        )
        self.queue_depth = Gauge(
            "rerankd_queue_depth", "Scoring requests waiting for the model.", registry=r,
        )
        # What an endpoint picker (llm-d router, Gateway API Inference Extension) reads per replica, the way it
        # reads vLLM's num_requests_waiting / num_requests_running / kv_cache_usage_perc: docs/observability.md.
        self.requests_running = Gauge(
            "rerankd_requests_running", "Scoring requests with rows in or through the model and rows still to "
                                        "score (rerankd_queue_depth counts those not started).", registry=r,
        )
        self.inflight_tokens = Gauge(
            "rerankd_inflight_tokens", "Row tokens (prefix + document) of waiting and running requests not scored "
                                       "yet.", registry=r,
        )
        self.token_utilization_ratio = Gauge(
            "rerankd_token_utilization_ratio", "rerankd_inflight_tokens / --max-batch-tokens, at most 1: 1 means a "
                                               "new request waits at least one full forward pass.", registry=r,
        )
        self.queue_capacity = Gauge(
            "rerankd_queue_capacity", "--max-queue: waiting requests allowed before 503.", registry=r,
        )
        self.queue_time_seconds = Histogram(
            "rerankd_queue_time_seconds", "Time a request waited before its first pair reached the model.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inference_time_seconds = Histogram(
            "rerankd_inference_time_seconds", "Time of one forward pass (one micro-batch).",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "rerankd_batch_size", "Pairs per forward pass.", buckets=_COUNT_BUCKETS, registry=r,
        )
        self.batch_requests = Histogram(
            "rerankd_batch_requests", "Distinct requests sharing one forward pass.",
            buckets=_COUNT_BUCKETS, registry=r,
        )
        self.batch_tokens = Histogram(
            "rerankd_batch_tokens", "Tokens per forward pass.", buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.pairs_total = Counter("rerankd_pairs_total", "Rows run through the model: query-document pairs scored "
                                                          "(a reranker), inputs embedded (an embedder).", registry=r)
        # The embedding task's own counts (rerankd_build_info's `task` label says which task a server runs).
        self.embeddings_total = Counter(
            "rerankd_embeddings_total", "Inputs embedded (the embedding routes).", registry=r)
        self.embedding_tokens_total = Counter(
            "rerankd_embedding_tokens_total", "Tokens of the inputs embedded, as billed.", registry=r)
        self.tokens_total = Counter("rerankd_tokens_total", "Prompt tokens scored.", registry=r)
        self.errors_total = Counter(
            "rerankd_errors_total", "Errors answered, by type (validation, overloaded, backend, ...).",
            ["type"], registry=r,
        )
        # The one type the engine counts today; created at 0 so rate() reads 0, not "no data", until it fails.
        self.errors_total.labels(type="backend")
        self.cancelled_requests_total = Counter(
            "rerankd_cancelled_requests_total", "Requests dropped because the client went away.", registry=r,
        )
        self.model_ready = Gauge(
            "rerankd_model_ready", "1 when the model is loaded and requests can be served.", registry=r,
        )
        self.compiled_kernels_ready = Gauge(
            "rerankd_compiled_kernels_ready",
            "1 while the torch backend's fused forward with compiled CPU kernels serves; 0 while another forward "
            "does (transformers' forward while they compile in the background, with --compile off, after a failed "
            "compile, or another backend).", registry=r,
        )
        self.score_cache_hits_total = Counter(
            "rerankd_score_cache_hits_total", "Pairs whose score came from the exact score cache.", registry=r,
        )
        self.score_cache_misses_total = Counter(
            "rerankd_score_cache_misses_total", "Pairs looked up in the score cache and computed.", registry=r,
        )
        self.score_cache_evictions_total = Counter(
            "rerankd_score_cache_evictions_total", "Score cache entries dropped, least recently used first.",
            registry=r,
        )
        self.score_cache_entries = Gauge(
            "rerankd_score_cache_entries", "Scores held by the exact score cache.", registry=r,
        )
        self.score_cache_capacity = Gauge(
            "rerankd_score_cache_capacity", "--score-cache-entries when the cache is on, else 0.", registry=r,
        )
