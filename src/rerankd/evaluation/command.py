"""``rerankd eval``: how much does the reranker lift BM25 on your data? (NDCG, MRR, Recall on BEIR-format data.)

With ``--embedding-url`` it also measures a dense first stage (an embedding model's exact top-k) and a hybrid
one (BM25 + dense by reciprocal rank fusion), and ``--first-stage`` picks which of the three is reranked.

Why it talks to the API and not to a model in-process: the number that matters is the one of the
service users actually run: same truncation, same template, same instruction, server or gateway.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm.auto import tqdm

from rerankd.client import RerankAPIError, RerankClient, rerank_url
from rerankd.embedding_client import EmbeddingClient, embeddings_url
from rerankd.evaluation.beir import BeirDataset, DatasetError, load_beir
from rerankd.evaluation.bm25 import LANGUAGES, detect_language
from rerankd.evaluation.checkpoint import Checkpoint, run_key
from rerankd.evaluation.dense import EXACT_MAX_DOCUMENTS, IndexKind, choose_index
from rerankd.evaluation.fusion import DEFAULT_RRF_K
from rerankd.evaluation.report import build_report, format_report, write_json
from rerankd.evaluation.runner import (
    FirstStage,
    RerankRun,
    bm25_first_stage,
    dense_first_stage,
    hybrid_first_stage,
    rerank_run,
)
from rerankd.options import env_option

__all__ = ["eval_command"]

# An evaluation sends thousands of requests over minutes to a service that may restart meanwhile: it rides
# out more refusals than an interactive caller would (each waits Retry-After, or backs off up to 60 s).
EVAL_MAX_RETRIES = 8


class _LinesParamType(click.ParamType):  # type: ignore[type-arg]
    """A string option given many times; its environment variable holds one value per line
    (click would split on whitespace, which cuts an instruction into words)."""

    name = "text"
    envvar_list_splitter = "\n"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return str(value)


def _parse_ks(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated positive integers, e.g. 1,3,5,10") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter(f"{value!r}: expected comma-separated positive integers, e.g. 1,3,5,10")
    return ks


def _parse_reranker(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return rerank_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_embedding_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else embeddings_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _sweep_instructions(values: tuple[str, ...]) -> list[str]:
    """Each value is a file (one instruction per line; blank lines and ``#`` comments skipped) or the text itself."""
    instructions: list[str] = []
    for value in values:
        path = Path(value)
        if path.is_file():
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            found = [ln for ln in lines if ln and not ln.startswith("#")]
            if not found:
                raise click.BadParameter(f"{path}: no instruction in the file (one per line)",
                                         param_hint="'--instruction-sweep'")
            instructions += found
        elif value.strip():
            instructions.append(value.strip())
        else:
            raise click.BadParameter("an empty instruction", param_hint="'--instruction-sweep'")
    return instructions


def _require_eval_extra() -> None:
    missing = [m for m in ("bm25s", "Stemmer", "jieba", "ranx") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"rerankd eval needs {', '.join(missing)}: pip install 'rerankd[eval]'")


@click.command("eval")
@env_option("--dataset", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="BEIR-format folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.")
@env_option("--reranker", required=True, callback=_parse_reranker,
            help="rerankd server or gateway, e.g. http://127.0.0.1:8000 (POST /v1/rerank is appended).")
@env_option("--api-key", default=None, show_default=False, help="Sent as `Authorization: Bearer KEY`.")
@env_option("--top-k", type=click.IntRange(min=1), default=100, help="BM25 candidates reranked per query.")
@env_option("--k", "ks", default="1,3,5,10", callback=_parse_ks,
            help="Cut-offs of NDCG@k, MRR@k and Recall@k, comma-separated.")
@env_option("--split", default="test", help="Which qrels/<split>.tsv to evaluate.")
@env_option("--instruction", default=None, show_default=False,
            help="Task instruction sent with every request (default: the server's default instruction).")
@env_option("--instruction-sweep", multiple=True, type=_LinesParamType(), show_default=False,
            help="Also evaluate this instruction; a FILE holds one per line. Repeatable.")
@env_option("--concurrency", type=click.IntRange(min=1), default=8, help="Requests in flight at once.")
@env_option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
            help="Write the full report as JSON here.")
@env_option("--per-query", is_flag=True, default=False, help="Add each query's metrics to the table and JSON.")
@env_option("--resume/--no-resume", default=True, envvar="RERANKD_RESUME",
            help="Skip queries already scored in the checkpoint file (same settings); --no-resume starts over.")
@env_option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None, show_default=False,
            help="Checkpoint JSONL [default: OUTPUT with .checkpoint.jsonl, or "
                 ".rerankd-eval/DATASET-SPLIT.checkpoint.jsonl].")
@env_option("--model", default=None, show_default=False, help="`model` sent in requests (a gateway may route on it).")
@env_option("--max-queries", type=click.IntRange(min=1), default=None, show_default=False,
            help="Evaluate only the first N judged queries (a quick look at a large dataset).")
@env_option("--language", type=click.Choice(["auto", *sorted(LANGUAGES)]), default="auto",
            help="BM25 tokenization: stemmer + stopwords, or jieba for zh; auto detects Chinese (CJK) text.")
@env_option("--timeout", type=click.FloatRange(min=1), default=300.0, help="Seconds per rerank request.")
@env_option("--first-stage", type=click.Choice(["bm25", "dense", "hybrid"]), default="bm25",
            help="Which first stage's top-k is reranked; dense and hybrid need --embedding-url.")
@env_option("--embedding-url", default=None, show_default=False, callback=_parse_embedding_url,
            help="rerankd embedding server or gateway, e.g. http://127.0.0.1:8001 (POST /v1/embeddings is "
                 "appended): adds the dense and hybrid first stages to the report.")
@env_option("--embedding-api-key", default=None, show_default=False,
            help="Key for --embedding-url [default: --api-key].")
@env_option("--embedding-model", default=None, show_default=False, help="`model` sent in embedding requests.")
@env_option("--embedding-instruction", default=None, show_default=False,
            help="Instruction queries are embedded with (documents get none) [default: the server's, the "
                 "Qwen3-Embedding card's web-search instruction].")
@env_option("--embedding-dimensions", type=click.IntRange(min=1), default=None, show_default=False,
            help="`dimensions` of embedding requests (Matryoshka: the first N components, re-normalised).")
@env_option("--embedding-batch-size", type=click.IntRange(min=1), default=64,
            help="Texts per embedding request (halved for the run if the server answers 413).")
@env_option("--dense-index", type=click.Choice(["auto", "exact", "hnsw"]), default="auto",
            help=f"Dense search: exact cosine (numpy) or a faiss HNSW graph; auto is exact up to "
                 f"{EXACT_MAX_DOCUMENTS:,} documents.")
@env_option("--rrf-k", type=click.FloatRange(min=0), default=float(DEFAULT_RRF_K),
            help="Reciprocal rank fusion constant of the hybrid stage: score = sum of 1 / (k + rank).")
def eval_command(**flags: Any) -> None:
    """Measure the lift of reranking over BM25 (NDCG@k, MRR@k, Recall@k) on a BEIR-format dataset; with
    --embedding-url also over a dense and a hybrid (BM25 + dense, RRF) first stage."""
    started = time.monotonic()
    _require_eval_extra()
    if flags["first_stage"] != "bm25" and flags["embedding_url"] is None:
        raise click.BadParameter(f"{flags['first_stage']} needs embeddings: pass --embedding-url",
                                 param_hint="'--first-stage'")
    try:
        dataset = load_beir(flags["dataset"], flags["split"]).limit(flags["max_queries"])
    except DatasetError as exc:
        raise click.BadParameter(str(exc), param_hint="'--dataset'") from None
    sweep = _sweep_instructions(flags["instruction_sweep"])
    instructions = list(dict.fromkeys([flags["instruction"], *sweep]))
    ks: list[int] = flags["ks"]
    top_k: int = flags["top_k"]
    language = flags["language"]
    if language == "auto":
        language = detect_language(dataset.corpus_texts + list(dataset.queries.values()))
    if ks[-1] > top_k:
        click.echo(f"note: --k {ks[-1]} is above --top-k {top_k}: both runs hold only {top_k} documents",
                   err=True)
    if dataset.unknown_corpus_ids:
        click.echo(f"note: {len(dataset.unknown_corpus_ids)} judged document id(s) are not in corpus.jsonl "
                   "(they count as relevant but can never be retrieved)", err=True)

    checkpoint_path = flags["checkpoint"] or (
        flags["output"].with_suffix(".checkpoint.jsonl") if flags["output"]
        else Path(".rerankd-eval") / f"{dataset.name}-{dataset.split}.checkpoint.jsonl")
    index: IndexKind | None = None
    if flags["embedding_url"] is not None:
        try:
            index, index_note = choose_index(flags["dense_index"], len(dataset.corpus_ids))
        except ModuleNotFoundError as exc:
            raise click.BadParameter(str(exc), param_hint="'--dense-index'") from None
        if index_note:
            click.echo(f"note: {index_note}", err=True)
    embed_info: dict[str, Any] = {}
    try:
        # One tiny request first: a wrong URL, key or model fails in a second, not after BM25 indexing.
        served_model = asyncio.run(_preflight(flags))
        if flags["embedding_url"] is not None:
            embed_info["embedding_model"] = asyncio.run(_preflight_embedder(flags))
        t0 = time.monotonic()
        # BM25 runs outside the event loop, so Ctrl-C stops it at once instead of at the next await.
        bm25 = bm25_first_stage(dataset, language, top_k, ks)
        click.echo(f"BM25 ({language}): top-{top_k} of {len(dataset.corpus_ids)} documents for "
                   f"{len(dataset.queries)} queries, retrieved and evaluated in {time.monotonic() - t0:.1f}s",
                   err=True)
        stages = [bm25]
        if index is not None:
            t0 = time.monotonic()
            query_vectors, document_vectors, counts = asyncio.run(_embed_dataset(flags, dataset))
            embed_seconds = time.monotonic() - t0
            t0 = time.monotonic()
            dense = dense_first_stage(dataset, query_vectors, document_vectors, top_k, ks, index)
            stages += [dense, hybrid_first_stage(dataset, bm25, dense, top_k, ks, flags["rrf_k"])]
            click.echo(f"dense: {len(dataset.corpus_ids)} documents and {len(dataset.queries)} queries embedded "
                       f"({document_vectors.shape[1]} dimensions) in {embed_seconds:.1f}s; {index} top-{top_k} "
                       f"search and RRF fusion in {time.monotonic() - t0:.1f}s", err=True)
            embed_info.update(embedding_url=flags["embedding_url"],
                              embedding_instruction=flags["embedding_instruction"],
                              embedding_dimensions=int(document_vectors.shape[1]), dense_index=index,
                              rrf_k=flags["rrf_k"], **counts)
        first_stage = next(stage for stage in stages if stage.name == flags["first_stage"])
        runs, client_info = asyncio.run(_rerank_all(flags, dataset, first_stage, language, ks, instructions,
                                                    checkpoint_path))
    except RerankAPIError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished queries are saved in {checkpoint_path}; run the same command "
                   "again to resume", err=True)
        sys.exit(130)
    settings = {
        "dataset": dataset.name, "dataset_path": str(dataset.path), "split": dataset.split,
        "queries": len(dataset.queries), "documents": len(dataset.corpus_ids), "language": language,
        "top_k": top_k, "ks": ks, "reranker": flags["reranker"], "model": served_model, **client_info,
        "checkpoint": str(checkpoint_path), **embed_info,
    }
    report = build_report(settings=settings, queries=dataset.queries, first_stage=first_stage, runs=runs, ks=ks,
                          per_query=flags["per_query"], stages=stages)
    report["seconds"] = round(time.monotonic() - started, 2)
    click.echo(format_report(report))
    if flags["output"]:
        write_json(report, flags["output"])
        click.echo(f"\nreport written to {flags['output']}", err=True)


def _client(flags: dict[str, Any]) -> RerankClient:
    return RerankClient(flags["reranker"], api_key=flags["api_key"], model=flags["model"],
                        concurrency=flags["concurrency"], timeout=flags["timeout"], max_retries=EVAL_MAX_RETRIES)


async def _preflight(flags: dict[str, Any]) -> str | None:
    """The served model's name, as the preflight request's answer gives it."""
    async with _client(flags) as client:
        await client.preflight()
        return client.served_model


def _embedder(flags: dict[str, Any]) -> EmbeddingClient:
    return EmbeddingClient(flags["embedding_url"], api_key=flags["embedding_api_key"] or flags["api_key"],
                           model=flags["embedding_model"], dimensions=flags["embedding_dimensions"],
                           batch_size=flags["embedding_batch_size"], concurrency=flags["concurrency"],
                           timeout=flags["timeout"], max_retries=EVAL_MAX_RETRIES)


async def _preflight_embedder(flags: dict[str, Any]) -> str | None:
    """The embedding model's served name; a wrong URL, key, model or task (a reranker there) fails here."""
    async with _embedder(flags) as client:
        await client.preflight()
        return client.served_model


async def _embed_dataset(flags: dict[str, Any], dataset: BeirDataset) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Query vectors (with the instruction) and document vectors (without), in dataset order; request counts."""
    async with _embedder(flags) as client:
        with tqdm(total=len(dataset.corpus_texts), desc="embed corpus", unit="doc", disable=None,
                  dynamic_ncols=True) as bar:
            documents = await client.embed_all(dataset.corpus_texts, query=False, progress=bar.update)
        queries = await client.embed_all(list(dataset.queries.values()), query=True,
                                         instruction=flags["embedding_instruction"])
        return queries, documents, {"embedding_requests": client.requests_sent, "embedding_retries": client.retries}


async def _rerank_all(flags: dict[str, Any], dataset: BeirDataset, first_stage: FirstStage, language: str,
                      ks: list[int], instructions: list[str | None],
                      checkpoint_path: Path) -> tuple[list[RerankRun], dict[str, Any]]:
    """One reranked run per instruction, sharing the checkpoint; also the request and retry counts."""
    runs: list[RerankRun] = []
    async with _client(flags) as client:
        with Checkpoint(checkpoint_path, resume=flags["resume"]) as checkpoint:
            if checkpoint.skipped_lines:
                click.echo(f"note: {checkpoint.skipped_lines} unreadable line(s) in {checkpoint_path} ignored",
                           err=True)
            for instruction in instructions:
                key = run_key(dataset=str(dataset.path.resolve()), split=dataset.split, top_k=flags["top_k"],
                              language=language, model=flags["model"], instruction=instruction)
                run = await rerank_run(client, dataset, first_stage, ks, instruction=instruction,
                                       checkpoint=checkpoint, run_key=key)
                if run.resumed:
                    click.echo(f"resumed {run.resumed} finished queries from {checkpoint_path}", err=True)
                runs.append(run)
        info = {"requests": client.requests_sent, "retries": client.retries}
    return runs, info
