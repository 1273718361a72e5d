"""Re-ranking through the Gemini Batch API (vlm_mode: batch): the same requests, answers and answer store as
interactive mode, asked as one job at the batch price, and resumable by job id.

    run 1:  requests without a usable stored answer -> one job (client.batches.create) -> recorded in
            rerank/batch.json the moment it exists -> one look (or vlm_batch_wait_s of looks) -> BatchPending
    run 2:  the recorded job is looked at, not submitted again; once it has ended its answers are read once,
            each through the same validation (ask.Asker._record) into the same store (cache.jsonl)
            -> unusable or missing answers: a follow-up job (or interactive requests), within vlm_max_retries

Size. A job whose requests, images inlined, stay under vlm_batch_inline_mb (the API takes 20 MB inline) is
sent inline. A larger one goes as a JSONL file (one line per request, keyed by the request's answer-store
key) through the Files API, and so does each distinct image, once, referenced by URI: University-1652's
2,579 queries show 11 images each but only ~3,500 distinct ones, so uploading each once keeps the file at a
few kB a request where inlined images would need ~0.4 MB (384 px) to several MB (full size) a request, far
over the 2 GB file limit.

A job is named by a digest of what it asks (its display name). A run killed between submission and
recording finds its job again by that name (client.batches.list) on the rerun, so no job is paid twice.

The SDK's BatchJob leaves out what the Gemini API says about progress (batchStats) and why a job failed
(the operation's error), and parses answers into objects; the raw job resource, fetched through the SDK's
own client, has all three, and its answers go through `backends._gemini_reply`, the parser of interactive
answers.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from ..run_folder import write_json
from .ask import Asker, ask_all, run_coroutine
from .backends import GeminiBackend, ProtocolError, _fatal_or_transient, _gemini_reply
from .cache import AnswerCache, request_key
from .limits import RetryPolicy, TransientError
from .prompt import ImageEncoder, ImagePart, Request, image_digest
from ..redaction import redact
from .rerankers import AskStats, Reranked, RerankError, RerankJob

log = logging.getLogger("vici_utils.rerank")

JOB_FILE = "batch.json"  # rerank/batch.json: every job of the run folder, newest last
MB = 1_000_000
RUNNING, ENDED = "running", "ended"
# JobState names (google.genai.types.JobState) by what they mean for us
DONE_STATES = {"JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED"}
LOST_STATES = {"JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}  # answers present are read; the rest asked again
FAILED_STATES = {"JOB_STATE_FAILED"}                        # the server says why: the run stops with that
TERMINAL = DONE_STATES | LOST_STATES | FAILED_STATES
RUNNING_STATES = {"JOB_STATE_UNSPECIFIED", "JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING",
                  "JOB_STATE_CANCELLING", "JOB_STATE_PAUSED", "JOB_STATE_UPDATING"}  # look again later


class BatchPending(Exception):
    """The batch job has not ended yet. Not a failure: the run ends with status 'waiting', and rerunning the same
    command (python -m vici_utils run PARAMS --only 04) collects the answers."""

    def _render_traceback_(self):  # IPython (notebook 04) shows this one line instead of a traceback
        return [str(self)]


def cancel_hint(name: str) -> str:
    return (f"to cancel it: python -c \"from google import genai; genai.Client().batches.cancel(name='{name}')\" "
            "(GEMINI_API_KEY set)")


def job_state(state: Optional[str]) -> str:
    """The SDK's JobState name of the Gemini API's BATCH_STATE_* (as google.genai maps them)."""
    from google.genai import types

    name = "JOB_STATE_" + (state or "UNSPECIFIED").removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")
    return types.JobState[name].name if name in types.JobState.__members__ else name


@dataclass
class Status:
    """One look at a job."""
    state: str                 # a JobState name
    stats: dict                # batchStats as the API gives them (requestCount, successfulRequestCount, ...)
    error: Optional[str]       # why a failed job failed
    output: dict               # metadata.output: inlinedResponses or responsesFile

    def progress(self) -> str:
        s = self.stats
        if not s.get("requestCount"):
            return ""
        done = int(s.get("successfulRequestCount", 0)) + int(s.get("failedRequestCount", 0))
        return f", {done}/{s['requestCount']} requests done"


class JobBook:
    """rerank/batch.json: the jobs of this run folder, written atomically after every change."""

    def __init__(self, path: Path):
        self.path = path
        self.jobs: list[dict] = json.loads(path.read_text())["jobs"] if path.is_file() else []

    def save(self) -> None:
        write_json(self.path, {"jobs": self.jobs})

    def active(self) -> Optional[dict]:
        return next((j for j in reversed(self.jobs) if j["status"] == RUNNING), None)

    def attempts(self, key: str) -> int:
        """How many ended jobs held this request."""
        return sum(key in j["requests"] for j in self.jobs if j["status"] == ENDED)


class GeminiBatchBackend(GeminiBackend):
    """reranker: gemini with vlm_mode: batch (registry.BATCH_RERANKERS): GeminiBackend's requests, cache
    key and answer parsing, asked through the Batch API."""

    def rerank(self, job: RerankJob) -> Reranked:
        return BatchAsker(self, job).rerank()


class BatchAsker:
    """One batch-mode re-ranking (see the module docstring); `rerank()` returns what VLMReranker.rerank does."""

    def __init__(self, backend, job: RerankJob):
        self.backend, self.job, self.cfg = backend, job, job.cfg
        self.client, self.types = backend.client, backend.types
        self.policy = job.retry or RetryPolicy(max_retries=self.cfg.vlm_max_retries)
        self.book = JobBook(job.out_dir / JOB_FILE)
        self.faults: dict[str, str] = {}  # key -> why this run has no usable answer for it (last reason)

    # --- the flow ---------------------------------------------------------------------------------------------
    def rerank(self) -> Reranked:
        cfg = self.cfg
        encoder = ImageEncoder()
        self.cache = AnswerCache(self.job.out_dir / "cache.jsonl")
        try:
            orders, items, self.build = self.backend.plan(self.job, encoder)
            self.asker = Asker(self.backend, self.cache, self.policy, cfg.vlm_rpm,  # validation, records, stats
                               stats=AskStats.asking(cfg, len(items)))
            # every request is built once to find its key (the key hashes the image bytes). Without a recorded
            # job still to collect, those without a usable answer go into a new job: they are kept whole, each
            # distinct image once; of the others only the metadata are kept.
            self.requests, self.ready, images = {}, {}, {}
            submitting = self.book.active() is None
            for item in items:
                request = self.build(item)
                key = request_key(self.backend.settings, request)
                self.requests[item] = (key, replace(request, parts=[]))
                if submitting and self.cache.answer(key) is None:
                    self.ready[key] = replace(request, parts=[images.setdefault(image_digest(p), p)
                                                              if isinstance(p, ImagePart) else p for p in request.parts])
            self.keys = {key: item for item, (key, _) in self.requests.items()}
            stored_before = {key for key in self.keys if self.cache.answer(key) is not None}
            self.asker.stats.cached = len(stored_before)
            try:
                self._work(time.monotonic() + cfg.vlm_batch_wait_s)
            except KeyboardInterrupt:
                active = self.book.active()
                if active is None:
                    raise
                raise KeyboardInterrupt(
                    f"interrupted; batch job {active['name']} stays recorded in {self.book.path} and keeps running "
                    f"on the server: rerun the same command to collect it, or {cancel_hint(active['name'])}") from None
        finally:
            self.cache.close()
            encoder.close()
            self.backend.pool.shutdown(wait=False, cancel_futures=True)
            self.client.close()
        missing = [k for k in self.keys if self.cache.answer(k) is None and self.faults.get(k, "").startswith("batch:")]
        self.asker.stats.gave_up += len(missing)  # like transport give-ups: not stored, asked again by a rerun
        records = {}
        for item, (key, _) in self.requests.items():
            stored = self.cache.answer(key)
            if stored is not None:
                records[item] = {**stored, "cached": key in stored_before}
            else:
                records[item] = {"ok": False, "cached": False, "key": key,
                                 "fault": self.faults.get(key, "no answer yet")}
        outcomes = [self.backend._outcome(self.job, q, orders[q], [records[(q, p)] for p in range(len(orders[q]))])
                    for q in orders]
        jobs = [{k: j[k] for k in ("name", "state", "source", "submitted", "request_count", "request_bytes",
                                   "request_bytes_per_query", "images_uploaded")} for j in self.book.jobs]
        return Reranked(outcomes, self.backend.model, self.asker.stats, {"batch_jobs": jobs})

    def _work(self, deadline: float) -> None:
        """Collect the recorded job, submit what still needs an answer, repeat until nothing is left to ask or
        a job is still running when the wait is over (BatchPending)."""
        while True:
            active = self.book.active()
            if active is not None:
                status = self._look(active)
                while status.state not in TERMINAL:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise BatchPending(self._pending_line(active, status))
                    time.sleep(min(self.cfg.vlm_batch_poll_s, left))
                    status = self._look(active)
                self._collect(active, status)
                continue
            needed = [key for key in self.keys if self.cache.answer(key) is None
                      and self.book.attempts(key) <= self.cfg.vlm_max_retries]
            if not needed:
                return
            if self.cfg.vlm_batch_follow_up == "interactive" and any(self.book.attempts(k) for k in needed):
                return self._ask_interactively(needed)
            self._submit(needed)

    def _pending_line(self, active: dict, status: Status) -> str:
        return (f"batch job {active['name']} ({active['request_count']} requests): {status.state}"
                f"{status.progress()}, submitted {active['submitted']}. Not finished yet: rerun the same command "
                f"later to collect the answers (python -m vici_utils run PARAMS --only 04), or {cancel_hint(active['name'])}")

    # --- talking to the API -----------------------------------------------------------------------------------
    def _call(self, what: str, fn):
        """fn() with the run's retry policy for transient HTTP errors; fatal ones stop the run naming the reason."""
        from google.genai import errors

        for attempt in range(self.policy.max_retries + 1):
            try:
                return fn()
            except errors.APIError as e:
                err = _fatal_or_transient(self.backend, self.backend.model, f"{self.backend.url} ({what})",
                                          e.code or 0, f"{e.status}: {e.message}")
            except Exception as e:  # connection failures of either HTTP library the SDK may use
                if type(e).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore"):
                    raise
                err = TransientError(redact(f"{self.backend.url} ({what}): {type(e).__name__}: {e}"))
            if isinstance(err, RerankError) or attempt == self.policy.max_retries:
                raise err if isinstance(err, RerankError) else RerankError(f"{err}; gave up after {attempt + 1} "
                                                                           "attempts. Rerun later to resume.")
            wait = self.policy.delay(attempt)
            log.warning(f"{err}; retry {attempt + 1}/{self.policy.max_retries} in {wait:.1f} s")
            time.sleep(wait)

    def _look(self, active: dict) -> Status:
        """One GET of the job resource, as batches.get makes it, read raw (see the module docstring)."""
        response = self._call("batches.get", lambda: self.client._api_client.request("get", active["name"], {}))
        try:
            raw = json.loads(response.body or "{}")
        except ValueError:
            raise ProtocolError(self.backend.url, response.body or "", "a batch job that is not JSON") from None
        meta = raw.get("metadata") or {}
        error = raw.get("error") or meta.get("error")
        state = job_state(meta.get("state"))
        if state not in TERMINAL | RUNNING_STATES:
            log.warning(f"batch job {active['name']} is in state {state}, which this version does not know; "
                        "treating it as still running")
        return Status(state, meta.get("batchStats") or {},
                      redact(error.get("message", str(error))) if isinstance(error, dict) else error,
                      meta.get("output") or {})

    # --- submitting -------------------------------------------------------------------------------------------
    def _submit(self, keys: list[str]) -> None:
        """One job for these requests, recorded at once; or, found by its display name, the job an earlier run
        submitted for exactly these requests and was killed before recording."""
        display = "vici-" + hashlib.sha256("\n".join([self.cfg.run_name, *sorted(keys)]).encode()).hexdigest()[:24]
        adopted = self._find(display)
        if adopted is None:
            source, src, sizes, uploaded = self._inline(keys) or self._file(keys, display)
            try:
                created = self._call("batches.create", lambda: self.client.batches.create(
                    model=self.backend.model, src=src, config={"display_name": display}))
            except RerankError as e:
                raise RerankError(f"the batch job was rejected: {e}") from None
            name, submitted = created.name, (created.create_time or dt.datetime.now(dt.timezone.utc)).isoformat()
        else:
            (name, submitted), source, src, sizes, uploaded = adopted, "adopted", None, [], 0
            log.warning(f"batch job {name} was submitted by an earlier run that stopped before recording it; "
                        "using it instead of submitting again")
        queries = len({self.keys[k][0] for k in keys})
        self._record({"name": name, "display_name": display, "status": RUNNING, "state": "JOB_STATE_PENDING",
                      "source": source, "input_file": src if isinstance(src, str) else None,
                      "submitted": submitted, "request_count": len(keys), "request_bytes": sum(sizes),
                      "request_bytes_per_query": round(sum(sizes) / queries) if sizes else None,
                      "images_uploaded": uploaded, "requests": {k: list(self.keys[k]) for k in keys}})
        log.info(f"batch job {name}: {len(keys)} requests ({source}, {sum(sizes) / MB:.2f} MB) submitted")
        self.ready.clear()

    def _request(self, key: str) -> Request:
        """The whole request (images included): kept from the first pass, or built again (a follow-up)."""
        return self.ready.get(key) or self.build(self.keys[key])

    def _config(self):
        return self.backend.config.model_copy(update={"should_return_http_response": None})

    def _inline(self, keys: list[str]):
        """("inline", the requests, their sizes, 0) while the whole job stays under vlm_batch_inline_mb, else None."""
        entries, sizes, limit = [], [], self.cfg.vlm_batch_inline_mb * MB
        for key in keys:
            entry = self.types.InlinedRequest(model=self.backend.model, config=self._config(), metadata={"key": key},
                                              contents=self.backend._contents(self._request(key)))
            sizes.append(len(json.dumps(self._rest(entry)["request"])))
            if sum(sizes) > limit:
                return None
            entries.append(entry)
        return "inline", entries, sizes, 0

    def _file(self, keys: list[str], display: str):
        """("file", the uploaded JSONL's name, its line sizes, images uploaded): one line per request, keyed by
        its answer-store key, each distinct image uploaded once (vlm_concurrency at a time), referenced by URI."""
        requests = {key: self._request(key) for key in keys}
        images = {image_digest(p): p for r in requests.values() for p in r.parts if isinstance(p, ImagePart)}

        def upload(item):
            digest, part = item
            return digest, self._call("files.upload", lambda: self.client.files.upload(
                file=io.BytesIO(part.data), config={"mime_type": part.mime, "display_name": digest[:32]})).uri

        with ThreadPoolExecutor(self.cfg.vlm_concurrency, thread_name_prefix="upload") as pool:
            uris = dict(pool.map(upload, images.items()))
        sizes = []
        fd, path = tempfile.mkstemp(prefix=".batch-input-", suffix=".jsonl", dir=self.job.out_dir)
        try:
            with os.fdopen(fd, "w") as lines:
                for key, request in requests.items():
                    entry = self.types.InlinedRequest(model=self.backend.model, config=self._config(),
                                                      contents=self.backend._contents(request, uris))
                    line = json.dumps({"key": key, "request": self._rest(entry)["request"]}) + "\n"
                    lines.write(line)
                    sizes.append(len(line))
            uploaded = self._call("files.upload", lambda: self.client.files.upload(
                file=path, config={"mime_type": "jsonl", "display_name": display}))
        finally:
            os.unlink(path)
        return "file", uploaded.name, sizes, len(uris)

    def _record(self, entry: dict) -> None:
        """Recorded the moment the job exists (a kill before this line: the rerun finds it by display name)."""
        self.book.jobs.append(entry)
        self.book.save()

    def _find(self, display: str) -> Optional[tuple[str, str]]:
        """(name, submitted) of a live job of this display name that no record holds."""
        recorded = {j["name"] for j in self.book.jobs}
        for job in self._call("batches.list", lambda: list(self.client.batches.list(config={"page_size": 100}))):
            state = job.state.name if job.state is not None else ""
            if job.display_name == display and job.name not in recorded and state not in FAILED_STATES | LOST_STATES:
                return job.name, job.create_time.isoformat() if job.create_time else ""
        return None

    def _rest(self, entry) -> dict:
        """An InlinedRequest as the REST API carries it (the SDK's own conversion, as batches.create does)."""
        from google.genai import _common, batches

        return _common.encode_unserializable_types(
            _common.convert_to_dict(batches._InlinedRequest_to_mldev(self.client._api_client, entry)))

    # --- collecting -------------------------------------------------------------------------------------------
    def _collect(self, active: dict, status: Status) -> None:
        """Read an ended job once: every answer through the interactive validation into the store."""
        answers = self._answers(active, status)
        for key in active["requests"]:
            item = self.keys.get(key)
            if item is None or self.cache.answer(key) is not None:  # not this run's; or read before a kill
                continue
            entry = answers.get(key)
            if entry is None or "response" not in entry:
                why = ((entry or {}).get("error") or (entry or {}).get("status")
                       or f"no answer in the job (it ended {status.state})")
                self.faults[key] = f"batch: {redact(json.dumps(why) if isinstance(why, dict) else str(why))}"
                continue
            self.asker.stats.sent += 1
            try:
                reply = _gemini_reply(json.dumps(entry["response"]), f"{self.backend.url} ({active['name']})", 0.0)
            except ProtocolError as e:
                self.faults[key] = f"batch: {e}"
                continue
            record = self.asker._record(key, self.requests[item][1], reply)
            self.cache.put(record)
            if not record["ok"]:
                self.asker.stats.invalid += 1
                self.faults[key] = f"{record['fault']} ({self.book.attempts(key) + 1} unusable answers)"
                log.warning(f"{record['query']} (order {item[1]}): unusable batch answer, {record['fault']}")
        active.update(status=ENDED, state=status.state, ended_stats=status.stats)
        self.book.save()
        if status.state in FAILED_STATES:
            raise RerankError(f"batch job {active['name']} failed: {status.error or 'the server gave no reason'}. "
                              "Answers it holds are stored; rerun to submit the rest again.")
        if status.state in LOST_STATES:
            log.warning(f"batch job {active['name']} ended {status.state}: the requests without an answer are "
                        "asked again, within vlm_max_retries")

    def _answers(self, active: dict, status: Status) -> dict:
        """key -> {"response": raw generateContent body} or {"error": ...}, whatever the job's output holds."""
        out = status.output
        if out.get("responsesFile"):
            data = self._call("files.download", lambda: self.client.files.download(file=out["responsesFile"]))
            found = {}
            for line in data.decode().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    found[entry.get("key")] = entry
            return found
        inlined = (out.get("inlinedResponses") or {}).get("inlinedResponses") or []
        keys = list(active["requests"])
        if len(inlined) == len(keys) and not any((r.get("metadata") or {}).get("key") for r in inlined):
            return dict(zip(keys, inlined))  # no keys echoed: the API keeps the requests' order
        return {r["metadata"]["key"]: r for r in inlined if (r.get("metadata") or {}).get("key")}

    # --- interactive follow-up --------------------------------------------------------------------------------
    def _ask_interactively(self, keys: list[str]) -> None:
        used = max(self.book.attempts(k) for k in keys)
        asker = self.asker
        asker.policy = replace(self.policy, max_retries=max(0, self.cfg.vlm_max_retries - used))
        items = [tuple(self.keys[k]) for k in keys]

        for record in run_coroutine(ask_all(asker, items, self.build, self.cfg.vlm_concurrency)).values():
            if not record["ok"]:
                self.faults[record["key"]] = record["fault"]
