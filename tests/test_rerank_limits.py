"""Rate limit and retries (rerank/limits.py): jittered backoff, the server's delay, a token bucket."""
import asyncio
import time

import pytest

from vici_utils.rerank.limits import RetryPolicy, TokenBucket, TransientError, server_retry_delay, with_retries


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
