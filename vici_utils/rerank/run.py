"""Stage 2, end to end: `run_rerank(cfg)` re-ranks each query's top K and writes outputs/<run>/rerank/.

    retrieval/features.npz -> ranking -> top K per query -> backend -> per-query order of the K
        -> fusion with the retrieval order (weighted, vlm, rrf) -> metrics, answers, reasons

No query is ever dropped: one whose answers all failed keeps its retrieval order, recorded with why.
Written files: answer_fused.txt (the `fusion` rule), answer_vlm.txt, reasons.jsonl, metrics.json, and for
network backends cache.jsonl (every answer, appended as it arrives; see cache.py).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..paths import run_dir
from ..progress import progress as progress_bar
from . import fusion, pricing
from .backends import make_backend, redact
from .kreciprocal import kreciprocal_distances
from .limits import RetryPolicy

FEATURE_KEYS = ("query_features", "query_ids", "query_names", "query_paths",
                "gallery_features", "gallery_ids", "gallery_names", "gallery_paths")
ANSWER_K = 10
ANSWER_TEXT = ("summary_ground_image", "summary_satellite_images", "reason")
RESULT_FILES = ("answer_fused.txt", "answer_vlm.txt", "reasons.jsonl", "metrics.json")  # cache.jsonl stays


@dataclass
class QueryOutcome:
    index: int
    name: str
    candidates: list[str]             # the top K gallery names, retrieval order
    order: list[int]                  # the backend's order: retrieval positions, best first
    status: str                       # "ok" or "fallback"
    note: str                         # the model's reason (ok) or why the retrieval order was kept
    answers: list[dict] = field(default_factory=list)  # one per presented order


@dataclass
class RerankResult:
    out_dir: Path
    metrics: dict                     # what metrics.json holds
    outcomes: list[QueryOutcome]
    per_query: pd.DataFrame           # one row per re-ranked query: ranks of the true match, status, reason
    features: dict                    # the arrays of features.npz (paths and names as str)
    ranking: np.ndarray               # retrieval ranking [n_reranked, ng]
    fused: dict                       # rule -> fused ranking [n_reranked, ng]


# --- inputs -------------------------------------------------------------------------------------------------------

def features_path(cfg) -> Path:
    return run_dir(cfg.run_name) / "retrieval" / "features.npz"


def load_features(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no retrieval features. Run notebook 03_retrieval for this run_name first "
                                "(python -m vici_utils run params/default.yaml --only 03).")
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in FEATURE_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}; expected {list(FEATURE_KEYS)} "
                             "(written by vici_utils.retrieval)")
        feats = {k: npz[k] for k in FEATURE_KEYS}
    for k in FEATURE_KEYS:
        if not k.endswith("features"):
            feats[k] = [None if v in ("", "None") else str(v) for v in feats[k].tolist()]
    for side in ("query", "gallery"):
        n = len(feats[f"{side}_features"])
        bad = [k for k in FEATURE_KEYS if k.startswith(side) and len(feats[k]) != n]
        if bad:
            raise ValueError(f"{path}: {bad} do not have one entry per {side} feature ({n})")
    return feats


def _permutations(k: int, n: int, seed: int, query: int) -> list[list[int]]:
    """n presented orders for one query: the retrieval order, then seeded shuffles (distinct where possible)."""
    orders = [list(range(k))]
    rng = np.random.default_rng([seed, query])
    for _ in range(n - 1):
        for _attempt in range(20):
            order = rng.permutation(k).tolist()
            if order not in orders:
                break
        orders.append(order)
    return orders


# --- backends -----------------------------------------------------------------------------------------------------

def _offline_outcomes(cfg, feats, ranking, k) -> list[QueryOutcome]:
    names = feats["gallery_names"]
    if cfg.rerank_backend == "none":
        return [QueryOutcome(q, feats["query_names"][q], [names[g] for g in ranking[q, :k]], list(range(k)), "ok",
                             "retrieval order (rerank_backend: none)") for q in range(len(ranking))]
    final, original = kreciprocal_distances(feats["query_features"], feats["gallery_features"],
                                            cfg.kr_k1, cfg.kr_k2, cfg.kr_lambda)
    label = f"kreciprocal(k1={cfg.kr_k1}, k2={cfg.kr_k2}, lambda={cfg.kr_lambda:g})"
    outcomes = []
    for q in range(len(ranking)):
        cand = ranking[q, :k]
        d, d0 = final[q, cand], original[q, cand]
        order = np.argsort(d, kind="stable").tolist()
        b = order[0]
        note = (f"retrieval #{b + 1} first: k-reciprocal distance {d[b]:.2f} vs original {d0[b]:.2f}"
                + ("" if b == 0 else f" (retrieval #1: {d[0]:.2f} vs {d0[0]:.2f})"))
        candidates = [names[g] for g in cand]
        answer = {"permutation": 0, "presented": candidates, "ranking": [o + 1 for o in order], "ok": True,
                  "cached": False, "model_version": label, "usage": {}, "latency_s": 0.0}
        outcomes.append(QueryOutcome(q, feats["query_names"][q], candidates, order, "ok", note, [answer]))
    return outcomes


def _run_coroutine(coro):
    """asyncio.run, also from inside Jupyter (whose event loop is already running): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _vlm_outcomes(cfg, feats, ranking, k, out_dir: Path, policy: RetryPolicy, show_progress: bool):
    from .ask import Asker, ask_all
    from .cache import AnswerCache
    from .prompt import ImageEncoder, build_request

    backend = make_backend(cfg)
    encoder = ImageEncoder()
    cache = AnswerCache(out_dir / "cache.jsonl")
    orders = {q: _permutations(k, cfg.vlm_permutations, cfg.seed, q) for q in range(len(ranking))}
    jobs = [(q, p) for q in range(len(ranking)) for p in range(cfg.vlm_permutations)]
    g_names, g_paths = feats["gallery_names"], feats["gallery_paths"]

    def build(job):
        q, p = job
        cand = ranking[q, :k]
        return build_request(q, feats["query_names"][q], feats["query_paths"][q], [g_names[g] for g in cand],
                             [g_paths[g] for g in cand], orders[q][p], p, cfg.vlm_image_size, encoder)

    encoder.plan((path for q, p in jobs for path in [feats["query_paths"][q], *(g_paths[g] for g in ranking[q, :k])]),
                 cfg.vlm_image_size)
    bar = progress_bar(total=len(jobs), desc=f"re-ranking ({cfg.rerank_backend} {cfg.vlm_model})",
                       disable=not show_progress)
    asker = Asker(backend, cache, policy, cfg.vlm_rpm)

    def done(job, record):
        bar.update()
        s = asker.stats
        bar.set_postfix(sent=s.sent, cached=s.cached, invalid=s.invalid, gave_up=s.gave_up, refresh=False)

    async def main():
        try:
            return await ask_all(asker, jobs, build, cfg.vlm_concurrency, done)
        finally:
            await backend.aclose()

    try:
        records = _run_coroutine(main())
    finally:
        bar.close()
        cache.close()
        encoder.close()

    outcomes = []
    for q in range(len(ranking)):
        cand = [g_names[g] for g in ranking[q, :k]]
        answers, good = [], []
        for p, order in enumerate(orders[q]):
            r = records[(q, p)]
            answers.append({"permutation": p, "presented": [cand[i] for i in order], "ranking": r.get("ranking"),
                            "ok": r["ok"], "fault": r.get("fault"), "cached": r.get("cached", False),
                            "model_version": r.get("model_version"), "usage": r.get("usage", {}),
                            "latency_s": r.get("latency_s"),
                            **{key: r.get(key) for key in ANSWER_TEXT if r["ok"]}})
            if r["ok"]:
                good.append((fusion.to_positions(r["ranking"], order), r))
        if good:
            rank = fusion.mean_rank([g for g, _ in good], k)
            note = good[0][1].get("reason", "")
            outcomes.append(QueryOutcome(q, feats["query_names"][q], cand, np.argsort(rank).tolist(), "ok", note,
                                         answers))
        else:
            faults = "; ".join(f"order {a['permutation']}: {a['fault']}" for a in answers)
            outcomes.append(QueryOutcome(q, feats["query_names"][q], cand, list(range(k)), "fallback",
                                         f"kept retrieval order: {faults}", answers))
    return outcomes, asker.stats


# --- outputs ------------------------------------------------------------------------------------------------------

def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(redact(text))
    os.replace(tmp, path)


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _position_bias(outcomes: list[QueryOutcome], gallery_truth: dict, query_ids: list) -> dict:
    """How often the first-presented candidate is the model's pick, against how often it is the right one."""
    picks, truths = Counter(), Counter()
    n = 0
    for o in outcomes:
        for a in o.answers:
            if not a["ok"] or not a["ranking"]:
                continue
            n += 1
            picks[a["ranking"][0]] += 1
            truth = [s for s, name in enumerate(a["presented"], 1) if gallery_truth.get(name) == query_ids[o.index]]
            if truth:
                truths[truth[0]] += 1
    return {"answers": n, "first_presented_picked": picks[1] / n if n else None,
            "first_presented_correct": truths[1] / n if n else None,
            "picked_slot_counts": dict(sorted(picks.items())), "correct_slot_counts": dict(sorted(truths.items()))}


def run_rerank(cfg, *, retry: Optional[RetryPolicy] = None, show_progress: bool = True) -> RerankResult:
    """Re-rank the run's retrieval with `cfg.rerank_backend` and write outputs/<run_name>/rerank/."""
    from ..answers import names_from_indices, write_answer_txt
    from ..metrics import evaluate_ranking, full_ranking, scalars

    feats = load_features(features_path(cfg))
    full = full_ranking(feats["query_features"], feats["gallery_features"])
    ng = full.shape[1]
    k = min(cfg.rerank_top_k, ng)
    n_sel = min(len(full), cfg.vlm_max_queries or len(full))
    ranking = full[:n_sel]
    out_dir = run_dir(cfg.run_name) / "rerank"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:  # a run that stops early must not leave an earlier run's results looking current
        (out_dir / name).unlink(missing_ok=True)

    stats = None
    if cfg.rerank_backend in ("none", "kreciprocal"):
        outcomes = _offline_outcomes(cfg, feats, ranking, k)
        model = cfg.rerank_backend if cfg.rerank_backend == "none" else outcomes[0].answers[0]["model_version"]
    else:
        policy = retry or RetryPolicy(max_retries=cfg.vlm_max_retries)
        outcomes, stats = _vlm_outcomes(cfg, feats, ranking, k, out_dir, policy, show_progress)
        model = cfg.vlm_model

    vlm_rank = np.empty((n_sel, k), dtype=np.int64)
    for o in outcomes:
        vlm_rank[o.index, o.order] = np.arange(1, k + 1)
    fused = {rule: fusion.apply(ranking, fusion.fuse(vlm_rank, rule)) for rule in fusion.RULES}

    q_ids, g_ids = feats["query_ids"][:n_sel], feats["gallery_ids"]
    evaluated = {"retrieval": evaluate_ranking(ranking, q_ids, g_ids)}
    evaluated.update({rule: evaluate_ranking(r, q_ids, g_ids) for rule, r in fused.items()})
    if k <= 10 <= ng:  # reordering the top K <= 10 cannot change which images are in the top 10
        for rule in fusion.RULES:
            if not math.isclose(evaluated[rule]["R@10"], evaluated["retrieval"]["R@10"]):
                raise AssertionError(f"fusion '{rule}' changed R@10 ({evaluated['retrieval']['R@10']:.4f} -> "
                                     f"{evaluated[rule]['R@10']:.4f}) although only the top {k} were reordered")

    # answers: every query, the re-ranked ones in their new order, the rest (vlm_max_queries) as retrieved
    g_names = feats["gallery_names"]
    answer_k = min(ANSWER_K, ng)
    for name, rule in (("answer_fused.txt", cfg.fusion), ("answer_vlm.txt", "vlm")):
        rows = np.concatenate([fused[rule], full[n_sel:]])[:, :answer_k]
        write_answer_txt(out_dir / name, names_from_indices(rows, g_names), k=answer_k)

    status = Counter(o.status for o in outcomes)
    fallback_kinds = Counter(o.answers[0]["fault"].split(":")[0] for o in outcomes if o.status == "fallback")
    p_in, p_out, price_source = pricing.price(model, cfg.vlm_price_in_per_mtok, cfg.vlm_price_out_per_mtok)
    used_tokens = Counter()
    for o in outcomes:
        for a in o.answers:
            if a["ok"]:
                used_tokens.update(a["usage"] or {})
    run_tokens = dict(stats.tokens) if stats else {}
    answered = max(status["ok"], 1)
    gallery_truth = dict(zip(g_names, g_ids))
    metrics = {rule: scalars(m) for rule, m in evaluated.items()}
    metrics.update({
        "headline": cfg.fusion,
        "backend": cfg.rerank_backend,
        "model": model,
        "model_versions": dict(stats.model_versions) if stats else {},
        "top_k": k,
        "permutations": cfg.vlm_permutations if stats else 1,
        "queries_reranked": n_sel,
        "queries_total": len(full),
        "r_at_k_ceiling": float(evaluated["retrieval"]["cmc"][k - 1]),
        "counts": {"ok": status["ok"], "fallback": status["fallback"],
                   "requests": sum(len(o.answers) for o in outcomes) if stats else 0,
                   "sent": stats.sent if stats else 0, "cached": stats.cached if stats else 0,
                   "invalid_answers": stats.invalid if stats else 0, "gave_up": stats.gave_up if stats else 0,
                   "retries": stats.retries if stats else 0},
        "fallback_reasons": dict(fallback_kinds),
        "tokens": run_tokens,
        "tokens_answers_used": dict(used_tokens),
        "price_per_mtok": {"input": p_in, "output": p_out, "source": price_source},
        "cost_usd": pricing.cost_usd(run_tokens, p_in, p_out),
        "cost_per_1000_queries_usd": pricing.cost_usd(used_tokens, p_in, p_out) / answered * 1000,
        "position_bias": _position_bias(outcomes, gallery_truth, q_ids),
    })
    _write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=_json_default))

    ranks = {rule: m["first_match_rank"] for rule, m in evaluated.items()}
    lines = []
    for o in outcomes:
        lines.append(json.dumps({
            "query": o.name, "index": o.index, "building": q_ids[o.index], "status": o.status,
            "candidates": o.candidates, "order": [o.candidates[i] for i in o.order],
            "reason" if o.status == "ok" else "fallback_reason": o.note,
            "true_match_rank": {rule: int(r[o.index]) for rule, r in ranks.items()},
            "answers": o.answers,
        }, ensure_ascii=False, default=_json_default))
    _write_text(out_dir / "reasons.jsonl", "\n".join(lines) + "\n")

    per_query = pd.DataFrame({
        "query": [o.name for o in outcomes], "building": q_ids,
        **{f"rank_{rule}": r for rule, r in ranks.items()},
        "status": [o.status for o in outcomes], "note": [o.note for o in outcomes],
    })
    return RerankResult(out_dir, metrics, outcomes, per_query, feats, ranking, fused)


def metrics_table(result: RerankResult) -> pd.DataFrame:
    """R@1 / R@5 / R@10 / AP of the retrieval and of each fusion rule, in %."""
    rows = ["retrieval", *fusion.RULES]
    return pd.DataFrame([{k: result.metrics[r][k] for k in ("R@1", "R@5", "R@10", "AP")} for r in rows],
                        index=pd.Index(rows, name="ranking")).round(2)
