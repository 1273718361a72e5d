"""Asking a VLM about many queries at once: a pool of workers, a rate limit, retries, and the answer cache.

`vlm_concurrency` workers each hold at most one request in flight and take a token from the
requests-per-minute bucket before every send. Per request:
  1. a stored usable answer is reused (no request at all);
  2. otherwise it is sent; transport failures (429, 5xx, timeouts, bodies that are not the protocol) are
     retried with backoff and, if they persist, the request gives up for this run (not stored: a rerun
     tries again);
  3. every answer that arrives is stored, usable or not; an unusable one (empty, fenced, truncated,
     off-schema, bad ranking) is asked again, up to vlm_max_retries times in this run. Stored unusable
     answers are kept for the record only: a later run (after the server or model was fixed) asks again.
A fatal error (bad key, unknown model) stops every worker; answers already stored stay stored. So does a
streak of requests that all gave up, which means the server is down (or not speaking the protocol) rather
than one query unlucky, and a streak of vlm_stop_after_unusable answers unusable for the same reason, which
means the prompt, the model or the server is wrong for every query (the message says which is likely).
A stopping run sends nothing more, but the requests already in flight (paid for) are awaited and their
answers stored before the error surfaces.

A retry is "spent" when this run sends a request again after an unusable answer (at most vlm_max_retries per
request and run). Answers stored by earlier runs, usable or not, spend nothing: unusable ones are a record.

`VLMReranker` is the re-ranker interface (rerankers.py) for every network backend: a backend only adds
`send`, `aclose`, `settings` (its cache-key part) and `url` (for messages, no credentials).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from typing import Callable, Optional

import numpy as np

from . import fusion
from .cache import AnswerCache, request_key
from .limits import RetryPolicy, TokenBucket, TransientError, with_retries
from .prompt import ImageEncoder, Request, build_request
from ..redaction import redact
from .rerankers import AskStats, QueryOutcome, Reranked, RerankError, RerankJob
from .schema import AnswerFault, parse_answer

log = logging.getLogger("vici_utils.rerank")

ABORT_AFTER_GIVE_UPS = 10  # consecutive requests that exhausted their transport retries: the server is down
LIKELY_CAUSE = {  # fault kind (schema.AnswerFault) -> what a streak of them most likely means
    "fenced": "the server does not enforce the answer's JSON schema (structured output) and the model writes "
              "markdown: use a server or model that supports response_format / response_schema",
    "invalid_json": "the answers are prose around the JSON or not JSON: the server ignores structured output, or the "
                    "model does not follow the prompt",
    "off_schema": "the JSON has other keys: the server ignores the schema, or the model is too small to follow it",
    "bad_ranking": "the model does not rank 1..K each once: the model (too small?) or the prompt (rerank_top_k too "
                   "many candidates for it)",
    "truncated": "the answers are cut off: the server's output-token limit is too small (or thinking eats it: "
                 "vlm_thinking_budget)",
    "finish": "the model stops early (a safety filter or a refusal): the model or the server's settings",
    "empty": "the server returns no text: the server (or the model) is misconfigured",
    "oversized": "the answers are far longer than asked: the model or the server misbehaves",
}


class Stopped(Exception):
    """Another worker stopped the run: send nothing more."""
ANSWER_TEXT = ("summary_ground_image", "summary_satellite_images", "reason")


class Asker:
    def __init__(self, backend, cache: AnswerCache, policy: RetryPolicy, rpm: int, stop_after_unusable: int = 10,
                 stats: Optional[AskStats] = None):
        self.backend, self.cache, self.policy = backend, cache, policy
        self.bucket = TokenBucket(rpm)
        self.stats = stats if stats is not None else AskStats()
        self.abort_after = ABORT_AFTER_GIVE_UPS  # ask_all lowers it for runs with fewer requests
        self.stop_after_unusable = stop_after_unusable
        self.stopping = False  # set by ask_all when a worker failed: nothing more is sent
        self._give_up_streak = 0
        self._unusable: tuple[str, int] = ("", 0)  # fault kind of the latest unusable answers, how many in a row

    async def _send(self, request: Request):
        await self.bucket.acquire()
        if self.stopping:
            raise Stopped()
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
        faults = []  # this run's unusable answers only: stored ones are a record, not spent retries
        while len(faults) <= self.policy.max_retries:
            try:
                reply = await with_retries(lambda: self._send(request), self.policy,
                                           lambda a, e, w: self._on_retry(request, a, e, w))
            except Stopped:
                return {"ok": False, "fault": "stopped: the run was stopping", "cached": False, "key": key}
            except TransientError as e:
                self.stats.gave_up += 1
                self._give_up_streak += 1
                if self._give_up_streak >= self.abort_after:
                    raise RerankError(redact(
                        f"{self.backend.name} backend at {self.backend.url}: {self._give_up_streak} requests in a "
                        f"row failed after {self.policy.max_retries + 1} attempts each (last: {e}). The server looks "
                        "down, overloaded or not a server of this protocol; stopping. Stored answers are kept: "
                        "rerun later to resume.")) from None
                return {"ok": False, "fault": f"transport: {e} (gave up after {self.policy.max_retries + 1} "
                        "attempts)", "cached": False, "key": key}
            self._give_up_streak = 0
            record = self._record(key, request, reply)
            self.cache.put(record)  # paid for: stored before anything else can fail
            if record["ok"]:
                self._unusable = ("", 0)
                return {**record, "cached": False}
            self.stats.invalid += 1
            faults.append(record["fault"])
            log.warning(redact(f"{request.query_name} (order {request.permutation}): unusable answer, "
                               f"{record['fault']}"))
            self._count_unusable(record["fault"])
        return {"ok": False, "fault": f"{faults[-1]} ({len(faults)} unusable answers)", "cached": False, "key": key}

    def _count_unusable(self, fault: str) -> None:
        kind = fault.split(":", 1)[0]
        streak = self._unusable[1] + 1 if self._unusable[0] == kind else 1
        self._unusable = (kind, streak)
        if streak >= self.stop_after_unusable:
            raise RerankError(redact(
                f"{self.backend.name} backend at {self.backend.url}, model {self.backend.model}: {streak} answers in "
                f"a row were unusable for the same reason ({fault[:300]}); most likely {LIKELY_CAUSE.get(kind, kind)}. "
                "Stopping before spending the rest of the budget (vlm_stop_after_unusable); stored answers are kept."))

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
    `concurrency` workers; returns {job: record}. An error in any worker stops them all (fatal errors
    first), once the requests already in flight have been answered and stored."""
    results: dict = {}
    todo = iter(jobs)  # one shared iterator: each job is taken by exactly one worker
    asker.abort_after = max(1, min(ABORT_AFTER_GIVE_UPS, len(jobs)))

    def prepare():
        job = next(todo, None)
        return None if job is None else (job, asyncio.ensure_future(asyncio.to_thread(build, job)))

    async def worker():
        upcoming = prepare()
        try:
            while upcoming is not None and not asker.stopping:
                job, request = upcoming
                request = await request
                upcoming = prepare()  # encode the next request's images while this one is in flight
                results[job] = await asker.ask(request)
                if on_done:
                    on_done(job, results[job])
        finally:
            if upcoming is not None:  # stopped early: do not leave an encoding future unobserved
                upcoming[1].cancel()

    errors: list[BaseException] = []

    async def guarded():
        try:
            await worker()
        except Exception as e:  # stop the others from sending, but let their requests in flight (paid) arrive
            errors.append(e)
            asker.stopping = True

    await asyncio.gather(*(guarded() for _ in range(min(concurrency, len(jobs)))))
    if errors:  # the one error that stopped the workers, fatal first
        raise _with_message(next((e for e in errors if isinstance(e, RerankError)), errors[0]))
    return results


def _with_message(error: BaseException) -> BaseException:
    """`error`, or a RerankError that says what it was when its own message is empty (TimeoutError())."""
    if str(error).strip():
        return error
    wrapped = RerankError(f"re-ranking stopped by {type(error).__name__} (no message: {error!r}) in a worker; "
                          "the chained traceback shows where")
    wrapped.__cause__ = error
    return wrapped


def run_coroutine(coro):
    """asyncio.run, also from inside Jupyter (whose event loop is already running): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def permutations(k: int, n: int, seed: int, query: int) -> list[list[int]]:
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


class VLMReranker:
    """A re-ranker that asks a vision-language model over the network (see rerankers.Reranker). Subclasses
    set model, url and settings in __init__ (checking keys and URLs there) and implement send/aclose; `name` is
    the name the run chose it by (reranker), for messages and the cache key."""
    name: str
    model: str
    url: str           # the endpoint, for messages (no credentials)
    settings: dict     # everything that shapes an answer: part of every cache key
    sees_order = True  # the candidates reach the model in an order it may favour (position bias)

    def __init__(self, cfg):
        self.cfg = cfg
        self.name = cfg.reranker

    @staticmethod
    def describe(cfg) -> str:
        perms = f", {cfg.vlm_permutations} orders" if cfg.vlm_permutations > 1 else ""
        return f"{cfg.reranker} {cfg.vlm_model} (top {cfg.rerank_top_k}{perms})"

    async def send(self, request: Request):
        raise NotImplementedError

    async def aclose(self) -> None:
        pass

    def _paths(self, job: RerankJob):
        f = job.features
        return {q: [f["query_paths"][q], *(f["gallery_paths"][g] for g in job.ranking[q, :job.k])]
                for q in range(len(job.ranking))}

    def check(self, job: RerankJob) -> None:
        """Every image the run will send exists (before any request is paid for)."""
        missing = sorted({p for paths in self._paths(job).values() for p in paths if not p or not os.path.isfile(p)},
                         key=str)
        if missing:
            raise RerankError(f"{len(missing)} image(s) listed in retrieval/features.npz are missing, e.g. "
                              f"{', '.join(map(str, missing[:3]))}. Restore the dataset (data_root) or rerun "
                              "notebook 03_retrieval for this run.")

    def plan(self, job: RerankJob, encoder: ImageEncoder):
        """The run's requests: (orders {query: presented orders}, items [(query, permutation)], build(item) ->
        Request). Interactive and batch mode (batch.py) ask the same requests."""
        cfg, f, k = job.cfg, job.features, job.k
        paths = self._paths(job)
        orders = {q: permutations(k, cfg.vlm_permutations, cfg.seed, q) for q in paths}
        items = [(q, p) for q in paths for p in range(cfg.vlm_permutations)]

        def build(item):
            q, p = item
            candidate_paths = paths[q][1:]
            return build_request(q, f["query_names"][q], paths[q][0], job.candidates(q), candidate_paths,
                                 orders[q][p], p, cfg.vlm_image_size, encoder)

        encoder.plan((path for q, _ in items for path in paths[q]), cfg.vlm_image_size)
        return orders, items, build

    def rerank(self, job: RerankJob) -> Reranked:
        from ..progress import progress as progress_bar

        cfg = job.cfg
        policy = job.retry or RetryPolicy(max_retries=cfg.vlm_max_retries)
        encoder = ImageEncoder()
        cache = AnswerCache(job.out_dir / "cache.jsonl")
        orders, jobs, build = self.plan(job, encoder)
        bar = progress_bar(total=len(jobs), desc=f"re-ranking ({self.name} {self.model})",
                           disable=not job.show_progress)
        asker = Asker(self, cache, policy, cfg.vlm_rpm, cfg.vlm_stop_after_unusable, AskStats.asking(cfg, len(jobs)))

        def done(item, record):
            bar.update()
            s = asker.stats
            bar.set_postfix(sent=s.sent, cached=s.cached, invalid=s.invalid, gave_up=s.gave_up, refresh=False)

        async def main():
            try:
                return await ask_all(asker, jobs, build, cfg.vlm_concurrency, done)
            finally:
                await self.aclose()

        try:
            records = run_coroutine(main())
        finally:
            bar.close()
            cache.close()
            encoder.close()
        outcomes = [self._outcome(job, q, orders[q], [records[(q, p)] for p in range(len(orders[q]))])
                    for q in orders]
        return Reranked(outcomes, self.model, asker.stats)

    @staticmethod
    def _outcome(job: RerankJob, q: int, orders: list[list[int]], records: list[dict]) -> QueryOutcome:
        """One query's answers (one per presented order) aggregated by mean rank, or its retrieval order."""
        cand = job.candidates(q)
        answers, good = [], []
        for p, (order, r) in enumerate(zip(orders, records)):
            answers.append({"permutation": p, "presented": [cand[i] for i in order], "ranking": r.get("ranking"),
                            "ok": r["ok"], "fault": r.get("fault"), "cached": r.get("cached", False),
                            "model_version": r.get("model_version"), "usage": r.get("usage", {}),
                            "latency_s": r.get("latency_s"),
                            **{key: r.get(key) for key in ANSWER_TEXT if r["ok"]}})
            if r["ok"]:
                good.append((fusion.to_positions(r["ranking"], order), r))
        name = job.features["query_names"][q]
        if good:
            rank = fusion.mean_rank([g for g, _ in good], job.k)
            return QueryOutcome(q, name, cand, np.argsort(rank).tolist(), "ok", good[0][1].get("reason", ""), answers)
        faults = "; ".join(f"order {a['permutation']}: {a['fault']}" for a in answers)
        return QueryOutcome(q, name, cand, list(range(job.k)), "fallback", f"kept retrieval order: {faults}", answers)
