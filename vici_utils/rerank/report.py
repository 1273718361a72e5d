"""Tables for notebook 04: ours beside the paper's, the top-K ceiling, and what re-ranking costs."""
from __future__ import annotations

import pandas as pd

from .. import paper
from . import pricing, rerankers
from .fusion import FUSIONS
from .prompt import ImageEncoder, Request, build_request
from .run import RerankResult

COLUMNS = ["R@1", "R@5", "R@10"]


def rule_label(rule: str) -> str:
    """'retrieval only', or the fusion rule's own label (fusion.FUSIONS)."""
    return "retrieval only" if rule == "retrieval" else getattr(FUSIONS[rule], "label", rule)


def describe_reranker(cfg) -> str:
    """The re-ranker and its settings in one line (each re-ranker describes itself)."""
    return rerankers.describe(cfg)


def before_after(result: RerankResult, cfg) -> pd.DataFrame:
    """Our rows (retrieval and every fusion rule) and, on University-1652, the paper's rows beside them."""
    reported = result.metrics["headline"]  # the fusion parameter's rule, or the one chosen on validation
    ours = pd.DataFrame([{"source": "this run", "ranking": rule_label(r) + (" *" if r == reported else ""),
                          **{c: result.metrics[r][c] for c in COLUMNS}} for r in ("retrieval", *FUSIONS)])
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


def example_query(result: RerankResult) -> int:
    """A re-ranked query whose true tile is in the shortlist but not first: the case a re-ranker exists for
    (else the first query)."""
    retrieval_rank = result.per_query["rank_retrieval"].to_numpy()
    k = result.metrics["top_k"]
    hits = [q for q, r in enumerate(retrieval_rank) if 1 < r <= k]
    return hits[0] if hits else 0


def example_request(result: RerankResult, cfg, q: int) -> Request:
    """The request a VLM gets for query q, as the run's settings would send it: the prompt text, the ground
    photo and the K candidates in retrieval order."""
    f, k = result.features, result.metrics["top_k"]
    cands = [int(g) for g in result.ranking[q, :k]]
    encoder = ImageEncoder(workers=1)
    try:
        return build_request(q, f["query_names"][q], f["query_paths"][q], [f["gallery_names"][g] for g in cands],
                             [f["gallery_paths"][g] for g in cands], list(range(k)), 0, cfg.vlm_image_size, encoder)
    finally:
        encoder.close()


def parsed_answer(result: RerankResult, q: int) -> dict:
    """What the re-ranker answered for query q, as the run stored it: its ranking of the presented candidates
    (1-based, best first), its reason, and who answered."""
    o = result.outcomes[q]
    answer = o.answers[0] if o.answers else {}
    return {"answered by": answer.get("model_version") or result.metrics["model"], "status": o.status,
            "ranking (candidate numbers, best first)": [i + 1 for i in o.order], "reason": o.note}
