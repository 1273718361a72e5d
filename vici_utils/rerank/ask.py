"""Asking a VLM about many queries at once: a pool of workers, a rate limit, retries, and the answer cache.

`vlm_concurrency` workers each hold at most one request in flight and take a token from the
requests-per-minute bucket before every send. Per request:
  1. a stored usable answer is reused (no request at all);
  2. otherwise it is sent; transport failures (429, 5xx, timeouts) are retried with backoff and, if
     they persist, the request gives up for this run (not stored: a rerun tries again);
  3. every answer that arrives is stored, usable or not; an unusable one (empty, fenced, truncated,
     off-schema, bad ranking) is asked again, up to vlm_max_retries times counting earlier runs' tries.
A fatal error (bad key, unknown model) stops every worker; answers already stored stay stored. So does a
long streak of requests that all gave up, which means the server is down rather than one query unlucky.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from .backends import RerankError, redact
from .cache import AnswerCache, request_key
from .limits import RetryPolicy, TokenBucket, TransientError, with_retries
from .prompt import Request
from .schema import AnswerFault, parse_answer

log = logging.getLogger("vici_utils.rerank")

ABORT_AFTER_GIVE_UPS = 10  # consecutive requests that exhausted their transport retries: the server is down


@dataclass
class AskStats:
    sent: int = 0
    cached: int = 0
    invalid: int = 0
    gave_up: int = 0
    retries: int = 0
    tokens: Counter = field(default_factory=Counter)  # this run's requests only
    model_versions: Counter = field(default_factory=Counter)


class Asker:
    def __init__(self, backend, cache: AnswerCache, policy: RetryPolicy, rpm: int):
        self.backend, self.cache, self.policy = backend, cache, policy
        self.bucket = TokenBucket(rpm)
        self.stats = AskStats()
        self._give_up_streak = 0

    async def _send(self, request: Request):
        await self.bucket.acquire()
        self.stats.sent += 1
        return await self.backend.send(request)

    def _on_retry(self, request: Request, attempt: int, err: Exception, wait: float) -> None:
        self.stats.retries += 1
        log.warning(redact(f"{request.query_name} (order {request.permutation}): {err}; "
                           f"retry {attempt}/{self.policy.max_retries} in {wait:.1f} s"))

    async def ask(self, request: Request) -> dict:
        """The answer record for `request` (from the cache or the model), or a give-up record with ok=False."""
        key = request_key(self.backend.settings, request)
        stored = self.cache.answer(key)
        if stored is not None:
            self.stats.cached += 1
            return {**stored, "cached": True}
        faults = [r["fault"] for r in self.cache.faults(key)]
        while len(faults) <= self.policy.max_retries:
            try:
                reply = await with_retries(lambda: self._send(request), self.policy,
                                           lambda a, e, w: self._on_retry(request, a, e, w))
            except TransientError as e:
                self.stats.gave_up += 1
                self._give_up_streak += 1
                if self._give_up_streak >= ABORT_AFTER_GIVE_UPS:
                    raise RerankError(redact(
                        f"{self.backend.name} backend: {self._give_up_streak} requests in a row failed after "
                        f"{self.policy.max_retries + 1} attempts each (last: {e}). The server looks down or "
                        "overloaded; stopping. Stored answers are kept: rerun later to resume.")) from None
                return {"ok": False, "fault": f"transport: {e} (gave up after {self.policy.max_retries + 1} "
                        "attempts)", "cached": False, "key": key}
            self._give_up_streak = 0
            record = self._record(key, request, reply)
            self.cache.put(record)
            if record["ok"]:
                return {**record, "cached": False}
            self.stats.invalid += 1
            faults.append(record["fault"])
            log.warning(redact(f"{request.query_name} (order {request.permutation}): unusable answer, "
                               f"{record['fault']}"))
        return {"ok": False, "fault": f"{faults[-1]} ({len(faults)} unusable answers)", "cached": False, "key": key}

    def _record(self, key: str, request: Request, reply) -> dict:
        self.stats.tokens.update(reply.usage)
        if reply.model_version:
            if reply.model_version not in self.stats.model_versions:
                log.info(f"{self.backend.name}: answers come from model version {reply.model_version}")
            self.stats.model_versions[reply.model_version] += 1
        record = {"key": key, "query": request.query_name, "permutation": request.permutation,
                  "candidates": request.candidates, "ok": False, "fault": None, "finish_reason": reply.finish_reason,
                  "usage": reply.usage, "model_version": reply.model_version,
                  "latency_s": round(reply.latency_s, 3), "time": time.time()}
        try:
            answer = parse_answer(reply.text, len(request.order), reply.finish_reason)
        except AnswerFault as fault:
            record.update(fault=str(fault), text=reply.text[:2000])
            return record
        record.update(ok=True, **answer.model_dump())
        return record


async def ask_all(asker: Asker, jobs: list, build: Callable[[object], Request], concurrency: int,
                  on_done: Optional[Callable[[object, dict], None]] = None) -> dict:
    """Answer every job (built into a Request by `build`, in a thread: JPEG encoding is CPU work) with
    `concurrency` workers; returns {job: record}. A RerankError in any worker stops them all."""
    results: dict = {}
    todo = iter(jobs)  # one shared iterator: each job is taken by exactly one worker

    def prepare():
        job = next(todo, None)
        return None if job is None else (job, asyncio.ensure_future(asyncio.to_thread(build, job)))

    async def worker():
        upcoming = prepare()
        while upcoming is not None:
            job, request = upcoming
            request = await request
            upcoming = prepare()  # encode the next request's images while this one is in flight
            results[job] = await asker.ask(request)
            if on_done:
                on_done(job, results[job])

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(jobs))):
                group.create_task(worker())
    except BaseExceptionGroup as group_error:  # surface the one error that stopped the workers, fatal first
        errors = _leaves(group_error)
        raise next((e for e in errors if isinstance(e, RerankError)), errors[0]) from None
    return results


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    return [x for e in group.exceptions for x in (_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])]
