"""Tables for notebook 04: ours beside the paper's, the top-K ceiling, and what re-ranking costs."""
from __future__ import annotations

import pandas as pd

from .. import paper
from ..registry import FUSIONS
from ..metrics import METRICS, RECALLS
from . import pricing, rerankers
from .prompt import ImageEncoder, Request, build_request
from .stage import RerankResult

def rule_label(rule: str) -> str:
    """'retrieval only', or the fusion rule's own label."""
    return "retrieval only" if rule == "retrieval" else getattr(FUSIONS.load(rule), "label", rule)


def describe_reranker(cfg) -> str:
    """The re-ranker and its settings in one line (each re-ranker describes itself)."""
    return rerankers.describe(cfg)


def before_after(result: RerankResult, cfg) -> pd.DataFrame:
    """Our rows (retrieval and every fusion rule) and, on University-1652, the paper's rows beside them."""
    reported = result.metrics["headline"]  # the fusion parameter's rule, or the one chosen on validation
    ours = pd.DataFrame([{"source": "this run", "ranking": rule_label(r) + (" *" if r == reported else ""),
                          **{c: result.metrics[r][c] for c in METRICS}} for r in ("retrieval", *FUSIONS)])
    if cfg.is_embedded:
        return ours.round(2)
    theirs = pd.DataFrame([{"source": "VICI paper", "ranking": row.vlm, **{c: row[c] for c in RECALLS}}
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


def true_candidate(result: RerankResult, q: int) -> int | None:
    """The number (1-based, in retrieval order as presented) of query q's true tile among its K candidates, or
    None when it is not in the shortlist."""
    rank = int(result.per_query["rank_retrieval"].iloc[q])
    return rank if 0 < rank <= result.metrics["top_k"] else None


def how_it_reasons(cfg) -> str:
    """One sentence on what this run's re-ranker is and how to read its reasons."""
    name = cfg.reranker
    if rerankers.sees_order(name):
        guide = ("a vision-language model answered: its reason is its own explanation of its first choice, in its "
                 "own words (cut short in the figures).")
    else:
        guide = getattr(rerankers.reranker_class(name), "how_to_read",  # an offline re-ranker's own words
                        "its reason is the note it wrote for its first choice.")
    return f"This run re-ranked with {describe_reranker(cfg)}; {guide}"


def chosen_rule(metrics: dict) -> str:
    """Which fusion rule the run reports and how it was chosen: on the validation buildings (metrics.json's
    'fusion_chosen') or by the fusion parameter; never after the fact on the test set."""
    rule = metrics["headline"]
    chosen = metrics.get("fusion_chosen") or {}
    if chosen.get("on") == "validation" and chosen.get("validation"):
        scores = ", ".join(f"{r} {v['R@1']:.1f}" for r, v in chosen["validation"].items())
        how = f"chosen on the held-out validation buildings (R@1 there: {scores}), before the test set was scored"
    else:
        how = "set by the fusion parameter before the run, not picked from the test numbers"
    return (f"The rule this run reports is '{rule}', {how}. The other rules' test numbers are shown for "
            "comparison only: picking the best of them after seeing the test set would flatter the result.")


def own_change(result: RerankResult) -> str:
    """The reported rule's change of R@1 on this run, in queries as well as points."""
    m, pq = result.metrics, result.per_query
    rule = m["headline"]
    before, after = int((pq["rank_retrieval"] == 1).sum()), int((pq[f"rank_{rule}"] == 1).sum())
    d = after - before
    queries = (f"{d:+d} {'query' if abs(d) == 1 else 'queries'} at rank 1 ({before} -> {after} of {len(pq)})" if d
               else f"no query gained or lost rank 1 ({before} of {len(pq)} before and after)")
    change = f"{queries}, {m[rule]['R@1'] - m['retrieval']['R@1']:+.2f} points of R@1"
    return f"This run's stage 2 ('{rule}'): {change}; AP {m['retrieval']['AP']:.2f} -> {m[rule]['AP']:.2f}."

