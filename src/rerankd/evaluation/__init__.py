"""Ranking quality evaluation (``rerankd eval``): BEIR data, a BM25 first stage, reranking, IR metrics.

Modules, in the order data flows: ``beir`` (load and check the dataset), ``bm25`` (first stage),
:mod:`rerankd.client` (the rerank API), ``checkpoint`` (resumable runs), ``runner`` (the pipeline),
``metrics`` (ranx), ``report`` (JSON and tables), ``command`` (the CLI). Nothing is re-exported here, so
importing the package costs nothing until a module is used.
"""

__all__: list[str] = []
