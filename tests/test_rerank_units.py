"""Stage-2 building blocks: answer checks, fusion, rate limit and retries, the answer store, k-reciprocal, prices."""
import asyncio
import json
import time

import numpy as np
import pytest

from vici_utils.rerank import fusion, pricing
from vici_utils.rerank.cache import AnswerCache
from vici_utils.rerank.kreciprocal import kreciprocal_distances
from vici_utils.rerank.limits import RetryPolicy, TokenBucket, TransientError, server_retry_delay, with_retries
from vici_utils.rerank.ask import permutations as _permutations
from vici_utils.rerank.schema import AnswerFault, json_schema, parse_answer

GOOD = {"ranking": [3, 1, 2, 5, 4], "summary_ground_image": "a red house",
        "summary_satellite_images": ["roof 1", "roof 2", "roof 3", "roof 4", "roof 5"], "reason": "red roof"}


# --- answers ------------------------------------------------------------------------------------------------------

def test_parse_answer_accepts_a_permutation():
    answer = parse_answer(json.dumps(GOOD), 5, "STOP")
    assert answer.ranking == [3, 1, 2, 5, 4] and answer.reason == "red roof"
    assert parse_answer(json.dumps(GOOD), 5, "stop").ranking == [3, 1, 2, 5, 4]


@pytest.mark.parametrize("text, finish, kind", [
    ("", "STOP", "empty"),
    ("", "SAFETY", "finish"),
    (json.dumps(GOOD), "RECITATION", "finish"),
    ("", "BLOCKED_SAFETY", "finish"),
    ("```json\n" + json.dumps(GOOD) + "\n```", "STOP", "fenced"),
    ("Here you go: " + json.dumps(GOOD), "STOP", "invalid_json"),
    (json.dumps(GOOD)[:40], "MAX_TOKENS", "truncated"),
    (json.dumps(GOOD)[:40], "length", "truncated"),
    (json.dumps({**GOOD, "ranking": "3,1,2,5,4"}), "STOP", "off_schema"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "reason"}), "STOP", "off_schema"),
    (json.dumps([3, 1, 2, 5, 4]), "STOP", "off_schema"),
    (json.dumps({**GOOD, "ranking": [3, 3, 2, 5, 4]}), "STOP", "bad_ranking"),
    (json.dumps({**GOOD, "ranking": [3, 1, 2, 5]}), "STOP", "bad_ranking"),
    (json.dumps({**GOOD, "ranking": [0, 1, 2, 3, 4]}), "STOP", "bad_ranking"),
    (json.dumps({**GOOD, "ranking": [3, 1, 2, 5, 4, 6]}), "STOP", "bad_ranking"),
])
def test_parse_answer_names_each_fault(text, finish, kind):
    with pytest.raises(AnswerFault) as e:
        parse_answer(text, 5, finish)
    assert e.value.kind == kind


def test_bad_ranking_message_says_what_is_wrong():
    with pytest.raises(AnswerFault, match=r"duplicates \[3\], missing \[1\]"):
        parse_answer(json.dumps({**GOOD, "ranking": [3, 3, 2, 5, 4]}), 5)


def test_json_schema_is_closed_and_complete():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"ranking", "summary_ground_image", "summary_satellite_images", "reason"}
    assert schema["properties"]["ranking"]["items"]["type"] == "integer"


# --- fusion -------------------------------------------------------------------------------------------------------

def test_to_positions_maps_presented_slots_back():
    order = [2, 0, 3, 1]                      # slot 1 shows retrieval position 2, ...
    assert fusion.to_positions([2, 1, 4, 3], order) == [0, 2, 1, 3]


def test_mean_rank_aggregates_orders_with_retrieval_tiebreak():
    rank = fusion.mean_rank([[0, 1, 2], [1, 0, 2]], 3)  # 0 and 1 tie on mean rank 1.5: position 0 wins
    assert rank.tolist() == [1, 2, 3]
    rank = fusion.mean_rank([[2, 1, 0], [2, 0, 1], [1, 2, 0]], 3)
    assert rank.tolist() == [3, 2, 1]


def test_fusion_rules_on_a_hand_example():
    vlm_rank = np.array([[4, 3, 1, 2]])  # the model puts retrieval #3 first, retrieval #1 last
    assert fusion.fuse(vlm_rank, "vlm").tolist() == [[2, 3, 1, 0]]
    # weighted: sums 5, 5, 4, 6 -> #3, then #1 and #2 tie at 5 (retrieval order), then #4
    assert fusion.fuse(vlm_rank, "weighted").tolist() == [[2, 0, 1, 3]]
    # rrf: 1/64+1/61, 1/63+1/62, 1/61+1/63, 1/62+1/64 -> #1 (.032018), #3 (.032266)...
    scores = [1 / (60 + v) + 1 / (60 + r) for v, r in zip([4, 3, 1, 2], [1, 2, 3, 4])]
    assert fusion.fuse(vlm_rank, "rrf").tolist() == [list(np.argsort(-np.array(scores), kind="stable"))]
    with pytest.raises(ValueError, match="fusion .max. is not registered.*.weighted., .vlm., .rrf."):
        fusion.fuse(vlm_rank, "max")


def test_apply_reorders_only_the_top_k():
    ranking = np.array([[5, 3, 9, 1, 0, 2, 4, 6, 7, 8]])
    out = fusion.apply(ranking, np.array([[2, 0, 1]]))
    assert out.tolist() == [[9, 5, 3, 1, 0, 2, 4, 6, 7, 8]]


def test_permutations_start_with_retrieval_order_and_are_seeded():
    orders = _permutations(10, 4, seed=0, query=7)
    assert orders[0] == list(range(10))
    assert len({tuple(o) for o in orders}) == 4 and all(sorted(o) == list(range(10)) for o in orders)
    assert orders == _permutations(10, 4, seed=0, query=7)
    assert orders != _permutations(10, 4, seed=0, query=8)


# --- limits -------------------------------------------------------------------------------------------------------

def test_backoff_grows_with_jitter_and_honours_the_server():
    policy = RetryPolicy(max_retries=5, base_s=1.0, max_s=10.0)
    for attempt, top in [(0, 1), (1, 2), (2, 4), (5, 10)]:
        waits = [policy.delay(attempt) for _ in range(200)]
        assert top / 2 <= min(waits) and max(waits) <= top and len(set(waits)) > 100
    assert 7.0 <= policy.delay(0, retry_after=7.0) <= 7.1


def test_server_retry_delay_from_header_or_retry_info():
    assert server_retry_delay({"retry-after": "3"}) == 3.0
    body = {"error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
                                               {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                "retryDelay": "17.5s"}]}}
    assert server_retry_delay({}, body) == 17.5
    assert server_retry_delay({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, {"error": {}}) is None


def test_with_retries_retries_transient_errors_then_gives_up():
    calls, retried = [], []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("HTTP 503", retry_after=0.0)
        return "ok"

    policy = RetryPolicy(max_retries=2, base_s=0.001)
    assert asyncio.run(with_retries(flaky, policy, lambda a, e, w: retried.append(a))) == "ok"
    assert retried == [1, 2]
    calls.clear()
    with pytest.raises(TransientError):
        asyncio.run(with_retries(flaky, RetryPolicy(max_retries=1, base_s=0.001)))
    assert len(calls) == 2


def test_token_bucket_spaces_requests_to_the_rate():
    async def stamps(bucket, n):
        out = []
        for _ in range(n):
            await bucket.acquire()
            out.append(time.perf_counter())
        return out

    t = asyncio.run(stamps(TokenBucket(rpm=600, burst=1), 6))  # 10 a second
    assert t[-1] - t[0] >= 0.45
    t = asyncio.run(stamps(TokenBucket(rpm=600, burst=3), 3))  # a burst goes at once
    assert t[-1] - t[0] < 0.05


# --- the answer store ---------------------------------------------------------------------------------------------

def test_cache_survives_a_torn_line_and_appends_cleanly(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "k-SECRET-99")
    cache = AnswerCache(tmp_path / "cache.jsonl")
    cache.put({"key": "a", "ok": True, "ranking": [1, 2]})
    cache.put({"key": "b", "ok": False, "fault": "empty: no text"})
    cache.put({"key": "c", "ok": True, "reason": "the key k-SECRET-99 leaked"})
    cache.close()
    with open(tmp_path / "cache.jsonl", "a") as f:
        f.write('{"key": "d", "ok": tr')  # killed mid-write
    again = AnswerCache(tmp_path / "cache.jsonl")
    assert again.torn_lines == 1 and len(again) == 3
    assert again.answer("a")["ranking"] == [1, 2] and again.answer("b") is None and len(again.faults("b")) == 1
    assert "SECRET" not in (tmp_path / "cache.jsonl").read_text()
    assert again.answer("c")["reason"].endswith("[REDACTED] leaked")
    again.put({"key": "d", "ok": True})
    again.close()
    third = AnswerCache(tmp_path / "cache.jsonl")
    assert third.torn_lines == 1 and third.answer("d") == {"key": "d", "ok": True}


# --- k-reciprocal -------------------------------------------------------------------------------------------------

def _kreciprocal_by_the_book(q, g, k1, k2, lam):
    """Loop-by-loop k-reciprocal re-ranking as described in the paper, for comparison."""
    f = np.concatenate([q, g]).astype(np.float64)
    n, nq = len(f), len(q)
    d = ((f[:, None] - f[None]) ** 2).sum(-1)
    d = d / d.max(1, keepdims=True)
    rank = np.argsort(d, axis=1, kind="stable")

    def reciprocal(i, k):
        return [c for c in rank[i, :k + 1] if i in rank[c, :k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        members = set(r)
        for c in r:
            rc = reciprocal(c, int(np.around(k1 / 2)))
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                members |= set(rc)
        members = sorted(members)
        w = np.exp(-d[i, members])
        v[i, members] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.array([[1 - (s := np.minimum(v[i], v[nq + j]).sum()) / (2 - s) for j in range(n - nq)]
                        for i in range(nq)])
    return (1 - lam) * jaccard + lam * d[:nq, nq:]


@pytest.mark.parametrize("k1, k2", [(5, 3), (8, 1), (20, 6)])
def test_kreciprocal_matches_the_paper_algorithm(k1, k2):
    rng = np.random.default_rng(k1)
    centres = rng.normal(size=(8, 16))
    q = centres[rng.integers(0, 8, 30)] + 0.7 * rng.normal(size=(30, 16))
    g = np.concatenate([centres + 0.7 * rng.normal(size=(8, 16)), rng.normal(size=(5, 16))])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    final, original = kreciprocal_distances(q, g, k1, k2, 0.3, centre=False)
    np.testing.assert_allclose(final, _kreciprocal_by_the_book(q, g, k1, k2, 0.3), atol=1e-5)
    assert original.shape == (30, 13) and 0 <= original.min() and original.max() <= 1 + 1e-6
    centred = lambda x: (x - x.mean(0)) / np.linalg.norm(x - x.mean(0), axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(kreciprocal_distances(q, g, k1, k2, 0.3)[0],
                               _kreciprocal_by_the_book(centred(q), centred(g), k1, k2, 0.3), atol=1e-5)


def test_centring_lets_kreciprocal_bridge_a_modality_gap():
    """Four street photos per building, a gap between the towers: raw k-reciprocal neighbours of a photo are
    other photos; centred, they include its tile, and re-ranking the top 10 lifts R@1."""
    from vici_utils.metrics import evaluate_ranking, full_ranking

    rng = np.random.default_rng(1)
    nb, dim = 120, 64
    centres = np.zeros((nb + 40, dim))
    centres[:, :56] = rng.normal(size=(nb + 40, 56)) * 0.4
    gap = np.zeros((2, dim))
    gap[0, 56:60], gap[1, 60:64] = 1.5, 1.5
    q = np.repeat(centres[:nb], 4, 0) + gap[0] + 0.55 * rng.normal(size=(4 * nb, dim))
    g = centres + gap[1] + 0.25 * rng.normal(size=(nb + 40, dim))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    g = (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)
    q_ids, g_ids = np.repeat(np.arange(nb), 4).astype(str).tolist(), np.arange(nb + 40).astype(str).tolist()
    ranking = full_ranking(q, g)

    def r1_after(centre):
        final, _ = kreciprocal_distances(q, g, 20, 6, 0.3, centre=centre)
        top = ranking[:, :10]
        order = np.argsort(np.take_along_axis(final, top, 1), axis=1, kind="stable")
        return evaluate_ranking(fusion.apply(ranking, order), q_ids, g_ids)["R@1"]

    before = evaluate_ranking(ranking, q_ids, g_ids)["R@1"]
    assert r1_after(centre=False) < before < before + 3 < r1_after(centre=True)


# --- prices -------------------------------------------------------------------------------------------------------

def test_price_table_longest_prefix_and_overrides():
    assert pricing.price("gemini-2.5-flash-lite")[:2] == (0.10, 0.40)
    assert pricing.price("models/gemini-2.5-flash-preview-05-20")[:2] == (0.30, 2.50)
    assert pricing.price("gemini-2.5-flash", price_out=1.0)[:2] == (0.30, 1.0)
    p_in, p_out, source = pricing.price("qwen2.5-vl-7b")
    assert (p_in, p_out) == (0.0, 0.0) and "no price known" in source
    tokens = {"input": 1_000_000, "output": 100_000, "thoughts": 100_000}
    assert pricing.cost_usd(tokens, 0.3, 2.5) == pytest.approx(0.8)
    assert pricing.typical_request_tokens(10, "low")["input"] == 11 * 64 + 450


def test_thinking_is_bounded_per_model_family():
    from google.genai import types

    from vici_utils.rerank.backends import _thinking

    assert _thinking(types, "gemini-2.0-flash", 1024) is None  # rejects a thinking config
    assert _thinking(types, "gemini-2.5-flash", 1024).thinking_budget == 1024
    assert _thinking(types, "gemini-2.5-flash", None) is None  # the server's default
    assert _thinking(types, "gemini-3-flash-preview", 1024).thinking_level == types.ThinkingLevel.LOW
