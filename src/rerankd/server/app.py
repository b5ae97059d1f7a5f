"""The inference HTTP app: thin handlers from wire shapes to the engine and back.

The model loads in a background thread after the socket is open, so ``/health`` answers at once and
``/ready`` turns 200 only when a request can really be served (what a Kubernetes startup/readiness
probe needs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rerankd import __version__
from rerankd.admission import AdmissionLimits
from rerankd.engine.config import EngineConfig
from rerankd.engine.engine import RerankEngine, ScoreOutcome, load_engine
from rerankd.errors import ModelNotFoundError, NotReadyError, PayloadTooLargeError
from rerankd.http import HttpMiddleware, known_routes_label, request_id_of
from rerankd.http.disconnect import unless_disconnected
from rerankd.http.errors import ERROR_RESPONSES, TEI_ERROR_RESPONSES, install_error_handlers
from rerankd.observability.metrics import ServerMetrics
from rerankd.observability.tasks import task_of_route
from rerankd.protocol import (
    TENANT_HEADER,
    AnyRerankRequest,
    ModelCard,
    ModelList,
    RerankRequest,
    RerankResponse,
    RerankTask,
    ScoreRequest,
    ScoreResponse,
    TEIRankItem,
    build_rerank_response,
    build_score_response,
    build_tei_response,
    error_dialect_of,
)
from rerankd.runtime import free_memory_releaser, freeze_startup_heap
from rerankd.server.admission import admission_route
from rerankd.server.embed_routes import EMBED_ROUTES, embedding_router, require_task
from rerankd.server.memory import IdleMemoryReturn
from rerankd.server.settings import ServerSettings

__all__ = ["create_server_app"]

log = logging.getLogger(__name__)
T = TypeVar("T")
EngineLoader = Callable[[EngineConfig, ServerMetrics], RerankEngine]

# Route labels of the request metrics (any other path counts as "other"), and the paths --api-key leaves open.
SERVER_ROUTES = frozenset({
    "/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score", "/v1/models", "/health", "/ready",
    "/metrics", "/info", "/docs", "/openapi.json", "/redoc",
}) | EMBED_ROUTES
ROUTE_GROUPS = {"/v1/models/": "/v1/models/{id}"}
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
# A body this large (~250k tokens of text) leaves enough freed memory behind to hand back once idle.
LARGE_BODY_BYTES = 1024 * 1024


class _State:
    """What the handlers share: the engine once loaded, or why it is not."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine: RerankEngine | None = None
        self.load_error: str | None = None
        self.started_at = time.time()

    def ready_engine(self) -> RerankEngine:
        if self.engine is None:
            why = self.load_error or "the model is still loading"
            raise NotReadyError(f"not ready: {why}", retry_after=5)
        return self.engine


def _snapshot_sha(path: str) -> str | None:
    """The revision of a model in the Hugging Face cache (``…/snapshots/<sha>``), else None."""
    parent, name = os.path.split(os.path.normpath(path))
    if os.path.basename(parent) == "snapshots" and len(name) == 40:
        return name
    return None


def create_server_app(settings: ServerSettings, *, engine_loader: EngineLoader | None = None,
                      on_load_failure: Callable[[str], None] | None = None, model_id: str | None = None) -> FastAPI:
    """Build the app for one model. ``engine_loader`` exists for tests that share one loaded engine.

    ``on_load_failure(reason)`` is called when the model cannot load: ``rerankd serve`` stops its server and
    exits non-zero, so a supervisor sees a failure, not a clean stop. Without it the app keeps answering
    ``/ready`` with 503 and the reason (an app hosted in a test). ``model_id``: ``--model`` as the user gave it
    (``rerankd serve`` resolves it to a directory in ``settings.model``), reported by ``/info``.
    """
    model_id = model_id or settings.model
    metrics = ServerMetrics()
    state = _State(settings, metrics)
    metrics.queue_capacity.set(settings.max_queue)
    loader = engine_loader or load_engine

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            log.info("loading model %s (backend=%s device=%s dtype=%s)",
                     settings.model, settings.backend, settings.device, settings.dtype)
            started = time.perf_counter()
            try:
                engine = await asyncio.to_thread(loader, settings.engine_config(), metrics)
            except Exception as exc:
                state.load_error = f"model failed to load: {exc}"
                log.error("%s", state.load_error)
                if on_load_failure is not None:
                    on_load_failure(state.load_error)
                return
            engine.batcher.start()
            state.engine = engine
            info = engine.info
            metrics.build_info.info({"version": __version__, "model": settings.model_name,
                                     "backend": info.name, "device": info.device, "dtype": info.dtype,
                                     "task": engine.task})
            freeze_startup_heap()  # the model's and libraries' objects: never garbage, no need to rescan
            metrics.model_ready.set(1)
            log.info("model loaded in %.1fs: backend=%s device=%s dtype=%s max_model_len=%d",
                     time.perf_counter() - started, info.name, info.device, info.dtype, info.max_model_len)

        loading = asyncio.create_task(load())
        yield
        metrics.model_ready.set(0)
        loading.cancel()
        if state.engine is not None:
            await state.engine.close()

    app = FastAPI(
        title="rerankd", version=__version__, lifespan=lifespan, responses=ERROR_RESPONSES, redirect_slashes=False,
        description="Qwen3-Reranker scoring: Jina / Cohere / vLLM / TEI rerank APIs.",
    )
    install_error_handlers(app)
    app.add_middleware(
        HttpMiddleware, route_label=known_routes_label(SERVER_ROUTES, ROUTE_GROUPS), metrics=metrics,
        max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout,
        body_deadline=settings.body_deadline, max_concurrent_requests=settings.max_concurrent_requests,
        api_key=settings.api_key, public_paths=PUBLIC_PATHS, task_label=task_of_route,
    )
    app.state.rerankd = state

    served = settings.served_model_names
    # The names a strict server accepts and /v1/models/{id} knows: every served name, and --model as given or
    # resolved, whole or its last part.
    known = {*served, *(name for source in (model_id, settings.model)
                        for name in (source, source.rstrip("/").split("/")[-1]))}

    def unknown_model(name: str) -> ModelNotFoundError:
        names = ", ".join(repr(n) for n in served)
        return ModelNotFoundError(f"model {name!r} is not served here; this server serves {names}", field="model")

    def check_model(name: str | None) -> None:
        """Any ``model`` is accepted (answers name the served model), unless ``--strict-model-names``."""
        if name is not None and settings.strict_model_names and name not in known:
            raise unknown_model(name)

    def check_count(n: int, field: str) -> None:
        if n > settings.max_documents:
            raise PayloadTooLargeError(
                f"`{field}` has {n} items, more than the limit of {settings.max_documents} "
                "(--max-documents); split the request",
                field=field,
            )

    def check_chunks(body: RerankRequest) -> None:
        if body.max_chunks_per_doc is None:
            return
        asked = len(body.documents) * body.max_chunks_per_doc
        if asked > settings.max_chunks_per_request:
            raise PayloadTooLargeError(
                f"{len(body.documents)} `documents` x `max_chunks_per_doc` {body.max_chunks_per_doc} = {asked} "
                f"chunks, more than the limit of {settings.max_chunks_per_request} (--max-chunks-per-request); "
                "lower `max_chunks_per_doc` or send fewer documents", field="max_chunks_per_doc")

    def tenant_of(request: Request) -> str | None:
        return request.headers.get(TENANT_HEADER) if settings.api_key else None

    async def score_tasks(request: Request, tasks: list[RerankTask], priority: int) -> list[ScoreOutcome]:
        engine = state.ready_engine()
        require_task(engine, "rerank")
        return await unless_disconnected(request, engine.score_all(tasks, tenant_of(request), priority=priority))

    # The scoring routes read their body through admission (size bounds before validation and tokenizing).
    limits = AdmissionLimits(max_documents=settings.max_documents, max_request_chars=settings.max_request_chars)
    memory = IdleMemoryReturn(free_memory_releaser(), threshold_bytes=LARGE_BODY_BYTES)
    scoring = APIRouter(route_class=admission_route(limits, memory, dialect_of=error_dialect_of))

    async def rerank(request: Request, body: RerankRequest) -> RerankResponse:
        check_model(body.model)
        check_count(len(body.documents), "documents")
        check_chunks(body)
        (outcome,) = await score_tasks(request, [body.to_task()], body.priority)
        return build_rerank_response(
            body, outcome.raw_scores, outcome.prompt_tokens, settings.model_name, request_id_of(request.scope),
            outcome.chunk_index,
        )

    # exclude_none leaves out an absent `document` (or TEI `text`); it does not reach inside a returned document
    # object, whose null fields come back as the client sent them.
    scoring.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True,
                 summary="Rerank documents (Jina / Cohere / vLLM shape)")(rerank)
    scoring.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True,
                 summary="Rerank documents (Cohere v2 shape)")(rerank)

    @scoring.post("/rerank", response_model=RerankResponse | list[TEIRankItem], response_model_exclude_none=True,
                  responses=TEI_ERROR_RESPONSES,
                  summary="Rerank: Jina/Cohere shape with `documents`, or TEI shape with `texts`")
    async def rerank_any(request: Request, response: Response, body: AnyRerankRequest) -> Any:
        if isinstance(body, RerankRequest):
            return await rerank(request, body)
        check_count(len(body.texts), "texts")
        (outcome,) = await score_tasks(request, [body.to_task()], body.priority)
        # TEI's bare array has no usage field; the gateway's token accounting reads this header instead.
        response.headers["X-Prompt-Tokens"] = str(outcome.prompt_tokens)
        if body.truncate is False and any(outcome.truncated):
            first = outcome.truncated.index(True)
            raise PayloadTooLargeError(
                f"`texts[{first}]` is longer than the model length {state.ready_engine().max_model_len} "
                "tokens allows; shorten it or send `truncate: true`",
                field=f"texts[{first}]",
            )
        return build_tei_response(body, outcome.raw_scores)

    async def score(request: Request, body: ScoreRequest) -> ScoreResponse:
        check_model(body.model)
        tasks, where = body.to_tasks()
        check_count(len(where), "text_2")
        outcomes = await score_tasks(request, tasks, body.priority)
        raw = [outcomes[t].raw_scores[d] for t, d in where]
        tokens = sum(o.prompt_tokens for o in outcomes)
        return build_score_response(raw, tokens, settings.model_name, request_id_of(request.scope))

    scoring.post("/v1/score", response_model=ScoreResponse, summary="Score pairs (vLLM score shape)")(score)
    scoring.post("/score", response_model=ScoreResponse, include_in_schema=False)(score)
    app.include_router(scoring)
    # Token-id inputs: one JSON value per token, within the characters' budget (a token is ~4 characters).
    embed_limits = AdmissionLimits(max_documents=settings.max_documents, max_request_chars=settings.max_request_chars,
                                   extra_values=settings.max_request_chars // 4)
    app.include_router(embedding_router(
        admission_route(embed_limits, memory), ready_engine=state.ready_engine, check_model=check_model,
        check_count=check_count, tenant_of=tenant_of, model_name=settings.model_name, metrics=metrics))

    def model_card(name: str) -> ModelCard:
        max_len = state.engine.max_model_len if state.engine else settings.max_model_len
        return ModelCard(id=name, created=int(state.started_at), max_model_len=max_len)

    @app.get("/v1/models", response_model=ModelList, summary="Served models (OpenAI list): every served name")
    async def models() -> ModelList:
        return ModelList(data=[model_card(name) for name in served])

    @app.get("/v1/models/{model:path}", response_model=ModelCard, summary="One served model (OpenAI model object)")
    async def model_object(model: str) -> ModelCard:
        if model not in known:
            raise unknown_model(model)
        return model_card(model)

    @app.get("/health", summary="200 while the process lives")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="200 when the model is loaded and a request can be served, else 503")
    async def ready() -> JSONResponse:
        engine = state.ready_engine()
        return JSONResponse({"status": "ready", "model": settings.model_name,
                             "queue_depth": engine.batcher.waiting})

    @app.get("/info", summary="Model, limits, version: TEI's fields and rerankd's")
    async def info() -> dict[str, Any]:
        engine = state.engine
        max_len = engine.max_model_len if engine else settings.max_model_len
        dtype = engine.info.dtype if engine else settings.dtype
        task = engine.task if engine else settings.task
        return {
            # Text Embeddings Inference's /info fields (what huggingface_hub and TEI clients read).
            "model_id": model_id,
            "model_sha": _snapshot_sha(settings.model),
            "model_dtype": dtype,
            "served_model_name": settings.model_name,
            "model_type": ({"embedding": {"pooling": "last_token"}} if task == "embed"
                           else {"reranker": {"id2label": {"0": "yes"}, "label2id": {"yes": 0}}}),
            "max_concurrent_requests": settings.max_concurrent_requests,
            "max_input_length": max_len,
            "max_batch_requests": None,
            "max_client_batch_size": settings.max_documents,
            "auto_truncate": True,
            "tokenization_workers": min(32, (os.cpu_count() or 1) + 4),  # asyncio's default thread pool
            "sha": None,
            "docker_label": None,
            # rerankd's own.
            "version": __version__,
            "model": settings.model_name,
            "served_model_names": list(served),
            "strict_model_names": settings.strict_model_names,
            "model_source": settings.model,
            "task": task,
            "dimensions": engine.dimensions if engine else None,
            "ready": engine is not None,
            "backend": engine.info.name if engine else settings.backend,
            "device": engine.info.device if engine else settings.device,
            "dtype": dtype,
            "max_model_len": max_len,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_queue": settings.max_queue,
            "max_documents": settings.max_documents,
            "max_request_chars": settings.max_request_chars,
            "max_request_tokens": settings.max_request_tokens,
            "max_body_bytes": settings.max_body_bytes,
        }

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=True, response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
