"""Stage 2: re-rank each query's top K with a vision-language model (or offline), fuse with the retrieval order.

    from vici_utils.rerank import rerank
    result = rerank(cfg)   # writes outputs/<run_name>/rerank/

Modules: rerankers (the re-ranker interface), backends (Gemini, OpenAI-compatible), kreciprocal
(the offline re-ranker), verifier (the learned offline re-ranker), ask (the worker pool of network re-rankers),
prompt (what the model is asked and shown), schema (the answer and its checks), limits (rate limit, retries), cache
(stored answers), fusion (the fusion rules), pricing, stage (the stage itself: inputs, fusion, files), report (notebook tables), batch
(vlm_mode: batch, the Gemini Batch API). Every re-ranker and fusion rule is registered by name in
vici_utils.registry. Names are imported on first use, so `import vici_utils.rerank` alone loads no backend's SDK.
"""
from importlib import import_module

_EXPORTS = {"rerank": "stage", "RerankResult": "stage", "load_features": "stage",
            "RerankError": "rerankers", "make_reranker": "rerankers", "RetryPolicy": "limits",
            "BatchPending": "batch"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
