"""A loopback Gemini API with the Batch and Files APIs, as the installed google-genai client calls them.

    POST /upload/{v}/files                       resumable upload, start: answers X-Goog-Upload-URL
    POST /upload-session/{id}                    the bytes ("upload, finalize"): answers {"file": {...}}
    GET  /{v}/files/{id}:download?alt=media      a file's bytes (the results file of a job)
    POST /{v}/models/{model}:batchGenerateContent  create a job: inline requests or a JSONL input file
    GET  /{v}/batches/{id}                       the job (an operation: metadata.state, batchStats, output, error)
    GET  /{v}/batches                            list jobs (operations)
    POST /{v}/batches/{id}:cancel

Every request of a job is answered by this same server's generateContent (FakeVLMServer: the colour oracle
and its scripted faults), asked over loopback when the job ends, so a batch run and an interactive run get
the same answers. Per job, `states` scripts what successive looks report:

    server.states = ["BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED"]   # new jobs: running once, then done
    server.next_states = [[...], [...]]   # for the next jobs created, one list each (then `states`)
    server.reject = "message"             # the next create answers 400 with it
    server.failure = "message"            # a job that ends FAILED says so
    server.drop = {0}                     # request indices left out of the next job's output
"""
from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import re
import threading
import urllib.error
import urllib.request

from tests.fake_vlm_servers import FakeVLMServer

ANSWERED = {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_CANCELLED"}  # states whose output holds the answers so far


class FakeBatchServer(FakeVLMServer):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.files: dict[str, tuple[str, bytes]] = {}   # "files/ID" -> (mime type, bytes)
        self.sessions: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.created: list[dict] = []                   # every create body, in order
        self.uploads: list[str] = []                    # mime types of finished uploads, in order
        self.calls: list[tuple[str, str]] = []          # (method, path) of every batch/file call
        self.states = ["BATCH_STATE_SUCCEEDED"]
        self.next_states: list[list[str]] = []
        self.reject: str | None = None
        self.failure = "the input file could not be parsed"
        self.drop: set[int] = set()
        self._ids = itertools.count(1)
        self._batch_lock = threading.Lock()

    # --- routing -------------------------------------------------------------------------------------------------
    def dispatch(self, h, method, raw):
        path = h.path.split("?")[0]
        if method == "POST" and re.fullmatch(r"/(v1|v1beta)/models/[^:]+:generateContent", path):
            return super().dispatch(h, method, raw)
        with self._batch_lock:
            self.calls.append((method, path))
            if method == "POST" and re.fullmatch(r"/upload/(v1|v1beta)/files", path):
                return self._upload_start(h, json.loads(raw or b"{}"))
            if method == "POST" and path.startswith("/upload-session/"):
                return self._upload_bytes(h, path.rsplit("/", 1)[1], raw)
            m = re.fullmatch(r"/(v1|v1beta)/files/([^:]+):download", path)
            if method == "GET" and m:
                mime, data = self.files[f"files/{m.group(2)}"]
                return self._send(h, 200, data.decode(), content_type=mime)
            m = re.fullmatch(r"/(v1|v1beta)/models/([^:]+):batchGenerateContent", path)
            if method == "POST" and m:
                return self._create(h, m.group(2), json.loads(raw or b"{}"))
            if method == "GET" and re.fullmatch(r"/(v1|v1beta)/batches", path):
                return self._send(h, 200, {"operations": [self._resource(j) for j in self.jobs.values()]})
            m = re.fullmatch(r"/(v1|v1beta)/(batches/[^:/]+)(:cancel)?", path)
            if m and m.group(2) in self.jobs:
                job = self.jobs[m.group(2)]
                if m.group(3):
                    job["states"] = ["BATCH_STATE_CANCELLED"]
                    return self._send(h, 200, {})
                return self._send(h, 200, self._look(job))
        return super().dispatch(h, method, raw)

    # --- files ---------------------------------------------------------------------------------------------------
    def _upload_start(self, h, body):
        assert h.headers["X-Goog-Upload-Protocol"] == "resumable" and h.headers["X-Goog-Upload-Command"] == "start"
        sid = str(next(self._ids))
        self.sessions[sid] = {"mime": h.headers["X-Goog-Upload-Header-Content-Type"], "data": b"",
                              "size": int(h.headers["X-Goog-Upload-Header-Content-Length"]), "file": body.get("file")}
        return self._send(h, 200, {}, {"X-Goog-Upload-URL": f"{self.url}/upload-session/{sid}",
                                       "X-Goog-Upload-Status": "active"})

    def _upload_bytes(self, h, sid, raw):
        session = self.sessions[sid]
        assert int(h.headers["X-Goog-Upload-Offset"]) == len(session["data"])
        session["data"] += raw
        if "finalize" not in h.headers["X-Goog-Upload-Command"]:
            return self._send(h, 200, {}, {"X-Goog-Upload-Status": "active"})
        assert len(session["data"]) == session["size"]
        name = f"files/up{sid}"
        self.files[name] = (session["mime"], session["data"])
        self.uploads.append(session["mime"])
        return self._send(h, 200, {"file": self._file(name)}, {"X-Goog-Upload-Status": "final"})

    def _file(self, name):
        mime, data = self.files[name]
        return {"name": name, "uri": f"{self.url}/v1beta/{name}", "mimeType": mime, "sizeBytes": str(len(data)),
                "state": "ACTIVE"}

    # --- jobs ----------------------------------------------------------------------------------------------------
    def _create(self, h, model, body):
        self.created.append(body)
        if self.reject:
            message, self.reject = self.reject, None
            return self._send(h, 400, {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}})
        source = body["batch"]["inputConfig"]
        if "fileName" in source:
            mime, data = self.files[source["fileName"]]
            lines = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
            requests = [(x["key"], x["request"]) for x in lines]
        else:
            requests = [((r.get("metadata") or {}).get("key"), r["request"]) for r in source["requests"]["requests"]]
        name = f"batches/job{next(self._ids)}"
        self.jobs[name] = {"name": name, "model": f"models/{model}", "display": body["batch"].get("displayName"),
                           "file": "fileName" in source, "requests": requests, "key": h.headers.get("x-goog-api-key"),
                           "states": list(self.next_states.pop(0) if self.next_states else self.states),
                           "state": "BATCH_STATE_PENDING", "output": None,
                           "created": dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")}
        return self._send(h, 200, self._resource(self.jobs[name]))

    def _look(self, job):
        """The next scripted state; answers computed once, when the job first reports an answered state."""
        if job["states"]:
            job["state"] = job["states"].pop(0) if len(job["states"]) > 1 else job["states"][0]
        if job["state"] in ANSWERED and job["output"] is None:
            job["output"] = self._run(job)
        return self._resource(job)

    def _resource(self, job):
        n = len(job["requests"])
        done = job["state"] in ANSWERED or job["state"] in ("BATCH_STATE_FAILED", "BATCH_STATE_EXPIRED")
        meta = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                "name": job["name"], "model": job["model"], "displayName": job["display"], "state": job["state"],
                "createTime": job["created"], "updateTime": job["created"],
                "batchStats": {"requestCount": str(n), "pendingRequestCount": str(0 if done else n),
                               "successfulRequestCount": str(n if done else 0)}}
        resource = {"name": job["name"], "metadata": meta, "done": done}
        if job["output"] is not None:
            meta["output"] = job["output"]
        if job["state"] == "BATCH_STATE_FAILED":
            resource["error"] = {"code": 3, "message": self.failure}
        return resource

    def _run(self, job):
        """Each request through this server's own generateContent, as the interactive client would send it."""
        results, drop, self.drop = [], self.drop, set()
        for i, (key, request) in enumerate(job["requests"]):
            if i in drop:
                continue
            for part in request["contents"][0]["parts"]:
                if "fileData" in part:  # a Files API reference: the uploaded bytes, inline (JSON takes either case)
                    ref = part.pop("fileData")
                    name = "files/" + (ref.get("fileUri") or ref["file_uri"]).rsplit("/files/", 1)[1]
                    mime, data = self.files[name]
                    part["inlineData"] = {"mimeType": mime, "data": base64.urlsafe_b64encode(data).decode()}
            model = job["model"].removeprefix("models/")
            call = urllib.request.Request(f"{self.url}/v1beta/models/{model}:generateContent",
                                          data=json.dumps(request).encode(), method="POST",
                                          headers={"Content-Type": "application/json", "x-goog-api-key": job["key"]})
            try:
                with urllib.request.urlopen(call, timeout=30) as r:
                    entry = {"response": json.loads(r.read())}
            except urllib.error.HTTPError as e:
                entry = {"error": json.loads(e.read()).get("error")}
            results.append((key, entry))
        if job["file"]:
            name = f"files/out{next(self._ids)}"
            lines = "".join(json.dumps({"key": key, **entry}) + "\n" for key, entry in results)
            self.files[name] = ("application/jsonl", lines.encode())
            return {"responsesFile": name}
        return {"inlinedResponses": {"inlinedResponses": [{**entry, "metadata": {"key": key}} for key, entry in results]}}
