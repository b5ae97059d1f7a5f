"""A minimal rerank HTTP server around a peer that has none: the model card's code, or a CrossEncoder.

Why: the peer table times text in → scores out over HTTP for every peer, so the peers that ship a server
(rerankd, vLLM, llama.cpp) and those that are libraries (the card's transformers code, sentence-transformers)
are timed the same way. The shim is the standard library's ``http.server``, one request at a time: it adds
milliseconds to requests of tens of seconds, and nothing else (no batching, no queue, no tokenizer pool).

``POST /v1/rerank`` (also ``/rerank``) takes ``{"query", "documents": [str, ...]}`` and answers
``{"results": [{"index", "relevance_score"}], "usage": {"prompt_tokens"}}`` in document order, the shape
rerankd, vLLM and llama.cpp answer; ``GET /health`` is 200 once the model is loaded.

* ``--peer card``: :class:`rerankd.benchmark.reference.CardRecipe` (the model card's code, batches of
  ``--batch``), run from rerankd's own environment.
* ``--peer openvino``: sentence-transformers ``CrossEncoder(..., backend="openvino")`` on the one-logit
  ``Qwen3ForSequenceClassification`` that ``rerankd.benchmark.reference.build_sequence_classifier`` writes
  (its OpenVINO IR exported by ``bench/peers/setup.sh``), pairs split as
  :meth:`rerankd.benchmark.reference.CrossEncoderBaseline.pair` splits them; run from the peers' environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Scorer = Callable[[str, Sequence[str]], tuple[list[float], int]]


def _card_scorer(model: str, dtype: str, batch: int) -> Scorer:
    from rerankd.benchmark.reference import CardRecipe

    card = CardRecipe(model, dtype=dtype)

    def score(query: str, docs: Sequence[str]) -> tuple[list[float], int]:
        tokens = sum(len(ids) for ids in card.prompt_ids(query, docs))
        return card.score(query, docs, batch=batch), tokens

    return score


def _openvino_scorer(model: str, batch: int) -> Scorer:
    from sentence_transformers import CrossEncoder

    from rerankd.benchmark.reference import CrossEncoderBaseline

    encoder = CrossEncoder(model, device="cpu", backend="openvino", max_length=8192)
    tokenizer = encoder.tokenizer

    def score(query: str, docs: Sequence[str]) -> tuple[list[float], int]:
        pairs = [CrossEncoderBaseline.pair(query, d) for d in docs]
        tokens = sum(len(tokenizer(a, b)["input_ids"]) for a, b in pairs)
        out = encoder.predict(pairs, batch_size=batch, show_progress_bar=False)
        return [float(s) for s in out], tokens

    return score


def _handler(score: Scorer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path in ("/health", "/ready"):
                self._answer(200, {"status": "ok"})
            else:
                self._answer(404, {"error": f"no route {self.path}; use POST /v1/rerank or GET /health"})

        def do_POST(self) -> None:
            if self.path not in ("/v1/rerank", "/rerank"):
                self._answer(404, {"error": f"no route {self.path}; use POST /v1/rerank"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                query, docs = body["query"], body["documents"]
                if not isinstance(query, str) or not all(isinstance(d, str) for d in docs):
                    raise TypeError("query must be a string and documents a list of strings")
            except (ValueError, KeyError, TypeError) as exc:
                self._answer(400, {"error": f"bad request body ({exc}); send {{'query': str, 'documents': [str]}}"})
                return
            scores, tokens = score(query, docs)
            self._answer(200, {"results": [{"index": i, "relevance_score": s} for i, s in enumerate(scores)],
                               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", choices=["card", "openvino"], required=True)
    p.add_argument("--model", required=True, help="card: the causal model dir; openvino: the one-logit classifier dir")
    p.add_argument("--dtype", default="float32", help="card only: float32 (the reference), bfloat16")
    p.add_argument("--batch", type=int, default=8, help="pairs per forward (the card's and CrossEncoderBaseline's 8)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the card (0: torch's default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    score = (_card_scorer(args.model, args.dtype, args.batch) if args.peer == "card"
             else _openvino_scorer(args.model, args.batch))
    server = ThreadingHTTPServer((args.host, args.port), _handler(score))
    server.daemon_threads = True
    print(f"shim: {args.peer} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
