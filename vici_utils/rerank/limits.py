"""Being a good API citizen: a requests-per-minute token bucket, and retries with backoff and jitter.

Providers answer overload with 429 or 5xx and often say how long to wait (a Retry-After header, or a
google.rpc.RetryInfo `retryDelay` in the error body); we wait at least that long. Otherwise the wait
doubles per attempt with random jitter, so concurrent workers do not retry in lock-step.
"""
from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

MAX_SERVER_DELAY_S = 600.0  # a server asking for more than this is treated as asking for this


class TransientError(Exception):
    """Worth retrying (429, 5xx, timeouts, dropped connections); `retry_after` is the server's wish in s."""

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class RetryPolicy:
    """`max_retries` retries after the first attempt; delays base_s * 2**attempt (capped at max_s),
    each scaled by a random factor in [0.5, 1]. Tests use tiny bases."""
    max_retries: int = 5
    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        backoff = min(self.max_s, self.base_s * 2 ** attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            return min(retry_after, MAX_SERVER_DELAY_S) + backoff * 0.1
        return backoff


class TokenBucket:
    """At most `rpm` acquisitions a minute: tokens refill at rpm/60 a second and the bucket holds at most
    `burst`. The default burst of 1 spaces requests evenly (60/rpm s apart), so no 60-s window ever holds
    more than rpm + 1 of them."""

    def __init__(self, rpm: float, burst: int = 1, clock: Callable[[], float] = time.monotonic):
        self.rate = rpm / 60.0
        self.capacity = float(burst)
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:  # waiters queue here, so tokens go out first come, first served
            while True:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


_DURATION = re.compile(r"^\s*([0-9.]+)\s*s?\s*$")


def server_retry_delay(headers: Any = None, body: Any = None) -> Optional[float]:
    """Seconds a server asked us to wait: `Retry-After: <seconds>` or a google RetryInfo `retryDelay`."""
    value = headers.get("retry-after") if headers is not None else None
    if value and _DURATION.match(str(value)):
        return float(_DURATION.match(str(value)).group(1))
    details = body.get("error", body).get("details", []) if isinstance(body, dict) else []
    for d in details if isinstance(details, list) else []:
        if isinstance(d, dict) and "RetryInfo" in str(d.get("@type", "")):
            m = _DURATION.match(str(d.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


async def with_retries(call: Callable[[], Any], policy: RetryPolicy, on_retry: Callable[[int, Exception, float], None]
                       = lambda attempt, err, wait: None):
    """Await `call()`; on TransientError wait and try again, up to policy.max_retries times, then re-raise."""
    for attempt in range(policy.max_retries + 1):
        try:
            return await call()
        except TransientError as e:
            if attempt == policy.max_retries:
                raise
            wait = policy.delay(attempt, e.retry_after)
            on_retry(attempt + 1, e, wait)
            await asyncio.sleep(wait)
