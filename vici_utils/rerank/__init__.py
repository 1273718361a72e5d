"""Stage 2: re-rank each query's top K with a vision-language model (or offline), fuse with the retrieval order.

    from vici_utils.rerank import run_rerank
    result = run_rerank(cfg)   # writes outputs/<run_name>/rerank/

Modules: prompt (what the model is asked and shown), schema (the answer and its checks), backends (Gemini,
OpenAI-compatible), limits (rate limit, retries), cache (stored answers), ask (the worker pool),
kreciprocal (the offline re-ranker), fusion, pricing, run (orchestration).
"""
from .backends import RerankError
from .limits import RetryPolicy
from .run import RerankResult, load_features, metrics_table, run_rerank

__all__ = ["RerankError", "RerankResult", "RetryPolicy", "load_features", "metrics_table", "run_rerank"]
