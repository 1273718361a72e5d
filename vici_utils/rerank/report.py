"""Tables for notebook 04: ours beside the paper's, the top-K ceiling, and what re-ranking costs."""
from __future__ import annotations

import pandas as pd

from .. import paper
from . import pricing
from .fusion import RULES
from .run import RerankResult

COLUMNS = ["R@1", "R@5", "R@10"]
RULE_LABELS = {"retrieval": "retrieval only", "weighted": "fused: vlm rank + retrieval rank (VICI)",
               "vlm": "re-ranker order only", "rrf": "fused: reciprocal rank fusion"}


def describe_reranker(cfg) -> str:
    if cfg.rerank_backend == "kreciprocal":
        return f"k-reciprocal (k1={cfg.kr_k1}, k2={cfg.kr_k2}, lambda={cfg.kr_lambda:g})"
    if cfg.rerank_backend == "none":
        return "none"
    perms = f", {cfg.vlm_permutations} orders" if cfg.vlm_permutations > 1 else ""
    return f"{cfg.rerank_backend} {cfg.vlm_model} (top {cfg.rerank_top_k}{perms})"


def before_after(result: RerankResult, cfg) -> pd.DataFrame:
    """Our rows (retrieval and every fusion rule) and, on University-1652, the paper's rows beside them."""
    ours = pd.DataFrame([{"source": "this run", "ranking": RULE_LABELS[r] + (" *" if r == cfg.fusion else ""),
                          **{c: result.metrics[r][c] for c in COLUMNS}} for r in ("retrieval", *RULES)])
    if cfg.is_embedded:
        return ours.round(2)
    theirs = pd.DataFrame([{"source": "VICI paper", "ranking": row.vlm, **{c: row[c] for c in COLUMNS}}
                           for _, row in paper.VLMS.iterrows()])
    return pd.concat([ours, theirs], ignore_index=True).round(2)


def ceiling(result: RerankResult) -> pd.Series:
    """How much of the room above retrieval R@1 the headline rule used: the true match must be in the top K."""
    m = result.metrics
    r1, top = m["retrieval"]["R@1"], m["r_at_k_ceiling"]
    best = m[m["headline"]]["R@1"]
    return pd.Series({"retrieval R@1": r1, f"ceiling = retrieval R@{m['top_k']}": top,
                      f"{m['headline']} R@1": best,
                      "share of the gap closed (%)": 100 * (best - r1) / (top - r1) if top > r1 else float("nan"),
                      }).round(2)


def cost_table(result: RerankResult, cfg) -> pd.DataFrame:
    """This run's measured cost per 1,000 queries (if it called a paid model) and list-price estimates for
    the Gemini models at this run's settings (top K, media resolution, presented orders)."""
    rows = []
    m = result.metrics
    if m["tokens_answers_used"]:
        rows.append({"model": f"{m['model']} (measured in this run)", "per request tokens in/out": "measured",
                     "USD per 1,000 queries": round(m["cost_per_1000_queries_usd"], 3),
                     "price source": m["price_per_mtok"]["source"]})
    typical = pricing.typical_request_tokens(m["top_k"], cfg.vlm_media_resolution)
    for model in ("gemini-2.5-flash-lite", "gemini-2.5-flash", "gemini-2.5-pro"):
        p_in, p_out, source = pricing.price(model)
        per_query = pricing.cost_usd(typical, p_in, p_out) * cfg.vlm_permutations
        rows.append({"model": f"{model} (estimate)",
                     "per request tokens in/out": f"{typical['input']}/{typical['output'] + typical['thoughts']}",
                     "USD per 1,000 queries": round(per_query * 1000, 3), "price source": source})
    return pd.DataFrame(rows)
