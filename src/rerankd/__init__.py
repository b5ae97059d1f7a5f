"""rerankd: a production reranking service for the Qwen3-Reranker models."""

__version__ = "0.1.0"
__all__ = ["__version__"]
