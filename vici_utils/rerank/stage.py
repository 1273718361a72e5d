"""Stage 2, end to end: `rerank(cfg)` re-ranks each query's top K and writes outputs/<run>/rerank/.

    retrieval/features.npz -> ranking -> top K per query -> re-ranker (registry.RERANKERS)
        -> per-query order of the K -> fusion with the retrieval order (registry.FUSIONS) -> metrics, answers, reasons

No query is ever dropped: one whose answers all failed keeps its retrieval order, recorded with why. But a
run where more than vlm_max_fallback_share of the queries fell back is a failed run: it raises (so the
notebook and the run's manifest fail) and leaves its files in rerank/failed/ for inspection.

Everything is checked before work starts (features, key, server URL, images), and the previous results
are replaced only by complete new ones: written aside, then swapped in. Written files: answer_fused.txt (the
rule the run reports: the `fusion` parameter's, or with fusion: validation the best on the held-out buildings),
answer_reranker.txt (the re-ranker's order alone), reasons.jsonl, metrics.json, and for network re-rankers
cache.jsonl (every answer, appended as it arrives; see cache.py) and, in vlm_mode: batch, batch.json (the jobs;
batch.py).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..answers import CHALLENGE_K, names_from_indices, write_answer_txt
from ..metrics import evaluate_ranking, full_ranking, scalars
from ..run_folder import (ANSWER_FUSED, ANSWER_RERANKED, FEATURES, RERANK, RETRIEVAL, VAL_FEATURES, read_features,
                          stage_dir)
from . import fusion, pricing
from .limits import RetryPolicy
from ..redaction import redact
from .rerankers import QueryOutcome, RerankError, RerankJob, make_reranker

log = logging.getLogger("vici_utils.rerank")

FAILED_DIR = "failed"


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
    return stage_dir(cfg.run_name, RETRIEVAL) / FEATURES


def load_features(path: Path, run_name: str = "<run_name>") -> dict:
    return read_features(path, run_name)  # run_folder owns the file: its keys, writer and reader


# --- outputs ------------------------------------------------------------------------------------------------------

def _publish(out_dir: Path, files: dict, into: Optional[Path] = None) -> None:
    """Write every file (text, redacted; or a function that writes the path it is given) into a fresh folder
    beside the results, then move each into `into` (default: out_dir): a run that fails before this point
    leaves the previous results as they were."""
    into = into or out_dir
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        for name, content in files.items():
            if callable(content):
                content(staging / name)
            else:
                (staging / name).write_text(redact(content))
        into.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(staging / name, into / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def _fused(outcomes: list[QueryOutcome], ranking: np.ndarray, k: int) -> dict:
    """Every fusion rule's full ranking, from the re-ranker's order of each query's top k."""
    reranker_rank = np.empty((len(ranking), k), dtype=np.int64)
    for o in outcomes:
        reranker_rank[o.index, o.order] = np.arange(1, k + 1)
    return {rule: fusion.apply(ranking, fusion.fuse(reranker_rank, rule)) for rule in fusion.FUSIONS}


def validation_features(cfg) -> Optional[dict]:
    """The held-out buildings' retrieval features when fusion: validation (else None), checked before any work."""
    if cfg.fusion != fusion.VALIDATION:
        return None
    path = stage_dir(cfg.run_name, RETRIEVAL) / VAL_FEATURES
    if not path.is_file():
        raise RerankError(f"{path}: no validation features, which fusion: validation chooses its rule on. Run "
                          "notebook 03 again for this run_name (it writes them when val_fraction > 0), or name a "
                          f"rule ({', '.join(fusion.FUSIONS)}).")
    return load_features(path, cfg.run_name)


def choose_fusion(cfg, reranker, val_feats: Optional[dict], job: RerankJob) -> dict:
    """The fusion rule this run reports: the `fusion` parameter's, or with fusion: validation the rule with the
    best R@1 (then AP; then registry order) when the same re-ranker re-ranks the held-out validation buildings'
    retrieval. The test set never takes part in the choice."""
    if val_feats is None:
        return {"rule": cfg.fusion, "on": "parameter", "validation": None}
    ranking = full_ranking(val_feats["query_features"], val_feats["gallery_features"])
    val_job = RerankJob(cfg, val_feats, ranking, min(cfg.rerank_top_k, ranking.shape[1]), job.out_dir, job.retry,
                        job.show_progress)
    reranker.check(val_job)
    fused = _fused(reranker.rerank(val_job).outcomes, ranking, val_job.k)
    ids = val_feats["query_ids"], val_feats["gallery_ids"]
    scores = {"retrieval": scalars(evaluate_ranking(ranking, *ids)),
              **{rule: scalars(evaluate_ranking(r, *ids)) for rule, r in fused.items()}}
    best = max(fusion.FUSIONS, key=lambda rule: (scores[rule]["R@1"], scores[rule]["AP"]))  # max keeps the first
    return {"rule": best, "on": fusion.VALIDATION, "queries": len(ranking),
            "validation": {name: {m: s[m] for m in ("R@1", "AP")} for name, s in scores.items()}}


def rerank(cfg, *, retry: Optional[RetryPolicy] = None, show_progress: bool = True) -> RerankResult:
    """Re-rank the run's retrieval with `cfg.reranker` and write outputs/<run_name>/rerank/."""
    # 1. everything that can be checked before any work: inputs, key, server URL, images
    feats = load_features(features_path(cfg), cfg.run_name)
    val_feats = validation_features(cfg)
    reranker = make_reranker(cfg)
    full = full_ranking(feats["query_features"], feats["gallery_features"])
    ng = full.shape[1]
    k = min(cfg.rerank_top_k, ng)
    n_sel = min(len(full), cfg.vlm_max_queries or len(full))
    ranking = full[:n_sel]
    out_dir = stage_dir(cfg.run_name, RERANK)
    job = RerankJob(cfg, feats, ranking, k, out_dir, retry, show_progress)
    reranker.check(job)

    # 2. the work (a network re-ranker appends its answers to out_dir/cache.jsonl as they arrive): the fusion rule
    # first (on the validation buildings, if asked), then the test queries
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = choose_fusion(cfg, reranker, val_feats, job)
    done = reranker.rerank(job)
    outcomes, stats, model = done.outcomes, done.stats, done.model
    fused = _fused(outcomes, ranking, k)

    q_ids, g_ids = feats["query_ids"][:n_sel], feats["gallery_ids"]
    evaluated = {"retrieval": evaluate_ranking(ranking, q_ids, g_ids)}
    evaluated.update({rule: evaluate_ranking(r, q_ids, g_ids) for rule, r in fused.items()})
    if k <= 10 <= ng:  # reordering the top K <= 10 cannot change which images are in the top 10
        for rule in fusion.FUSIONS:
            if not math.isclose(evaluated[rule]["R@10"], evaluated["retrieval"]["R@10"]):
                raise AssertionError(f"fusion '{rule}' changed R@10 ({evaluated['retrieval']['R@10']:.4f} -> "
                                     f"{evaluated[rule]['R@10']:.4f}) although only the top {k} were reordered")

    # 3. the files, in memory first. Answers: every query, the re-ranked ones in their new order, the rest
    # (vlm_max_queries) as retrieved
    files: dict = {}
    g_names = feats["gallery_names"]
    answer_k = min(CHALLENGE_K, ng)  # answer files carry the top 10, as the challenge's
    for name, rule in ((ANSWER_FUSED, chosen["rule"]), (ANSWER_RERANKED, fusion.RERANKER_ONLY)):
        rows = names_from_indices(np.concatenate([fused[rule], full[n_sel:]])[:, :answer_k], g_names)
        files[name] = functools.partial(write_answer_txt, names_per_query=rows, k=answer_k)

    status = Counter(o.status for o in outcomes)
    fallback_kinds = Counter(o.answers[0]["fault"].split(":")[0] for o in outcomes if o.status == "fallback")
    p_in, p_out, price_source = pricing.price(model, cfg.vlm_price_in_per_mtok, cfg.vlm_price_out_per_mtok)
    factor = pricing.price_factor(cfg)  # 1 unless batch mode, which only a network re-ranker has
    used_tokens = Counter()
    for o in outcomes:
        for a in o.answers:
            if a["ok"]:
                used_tokens.update(a["usage"] or {})
    run_tokens = dict(stats.tokens)
    answered = max(status["ok"], 1)
    gallery_truth = dict(zip(g_names, g_ids))
    metrics = {rule: scalars(m) for rule, m in evaluated.items()}
    metrics.update({
        "headline": chosen["rule"],
        "fusion_chosen": chosen,
        "reranked_by": cfg.reranker,  # not "reranker": that key holds the metrics of the fusion rule of that name
        "model": model,
        "model_versions": dict(stats.model_versions),
        "top_k": k,
        "permutations": stats.permutations,
        "queries_reranked": n_sel,
        "queries_total": len(full),
        "r_at_k_ceiling": float(evaluated["retrieval"]["cmc"][k - 1]),
        "counts": {"ok": status["ok"], "fallback": status["fallback"], "requests": stats.requests,
                   "sent": stats.sent, "cached": stats.cached, "invalid_answers": stats.invalid,
                   "gave_up": stats.gave_up, "retries": stats.retries},
        "fallback_reasons": dict(fallback_kinds),
        "max_fallback_share": cfg.vlm_max_fallback_share,
        "tokens": run_tokens,
        "tokens_answers_used": dict(used_tokens),
        "price_per_mtok": {"input": p_in, "output": p_out, "source": price_source},
        "mode": stats.mode,
        "price_factor": factor,
        "cost_usd": factor * pricing.cost_usd(run_tokens, p_in, p_out),
        "cost_interactive_usd": pricing.cost_usd(run_tokens, p_in, p_out),  # the same tokens asked one by one
        "cost_per_1000_queries_usd": factor * pricing.cost_usd(used_tokens, p_in, p_out) / answered * 1000,
        "position_bias": _position_bias(outcomes, gallery_truth, q_ids),
        **done.details,
    })
    files["metrics.json"] = json.dumps(metrics, indent=2, default=_json_default)

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
    files["reasons.jsonl"] = "\n".join(lines) + "\n"

    # 4. a run that mostly kept the retrieval order is not a result: keep it aside and fail loudly
    _check_fallbacks(cfg, metrics, out_dir, files)
    _publish(out_dir, files)
    shutil.rmtree(out_dir / FAILED_DIR, ignore_errors=True)  # an earlier failed attempt, now superseded

    per_query = pd.DataFrame({
        "query": [o.name for o in outcomes], "building": q_ids,
        **{f"rank_{rule}": r for rule, r in ranks.items()},
        "status": [o.status for o in outcomes], "note": [o.note for o in outcomes],
    })
    return RerankResult(out_dir, metrics, outcomes, per_query, feats, ranking, fused)


def _check_fallbacks(cfg, metrics: dict, out_dir: Path, files: dict) -> None:
    n, fell_back = metrics["queries_reranked"], metrics["counts"]["fallback"]
    if not fell_back:
        return
    share = fell_back / max(n, 1)
    kinds = ", ".join(f"{kind}: {count}" for kind, count in metrics["fallback_reasons"].items())
    what = (f"{fell_back} of {n} re-ranked queries ({100 * share:.0f}%) kept their retrieval order because the "
            f"re-ranker gave no usable answer ({kinds})")
    if share <= cfg.vlm_max_fallback_share:
        log.warning(f"{what}; within vlm_max_fallback_share = {cfg.vlm_max_fallback_share:g}, so the results stand. "
                    "A rerun asks again for those queries.")
        return
    _publish(out_dir, files, into=out_dir / FAILED_DIR)
    message = redact(
        f"RE-RANKING FAILED: {what}, more than vlm_max_fallback_share = {cfg.vlm_max_fallback_share:g}. These are "
        f"not re-ranking results: they are kept apart in {out_dir / FAILED_DIR} (see reasons.jsonl there), and the "
        "previous results, if any, are unchanged. Fix the cause (vlm_base_url, vlm_model, the server) and rerun: "
        "unusable answers are asked again. To accept the fallbacks, set vlm_max_fallback_share: 1.")
    log.error(message)
    raise RerankError(message)

