"""Loopback VLM servers for tests: Gemini's generateContent and OpenAI's /v1/chat/completions.

The real clients (google-genai, httpx) talk to these over 127.0.0.1, so the tests exercise the same code paths
as a real run. The server answers like an oracle that sees colour: it decodes the images it receives and ranks
the candidates by how close their mean colour is to the ground photo's (the test data give each building its
own colour). Faults are scripted per request, in arrival order:

    server.script = ["429", "500", "invalid_json"]   # the next three requests fail so, then normal answers
    server.always = "invalid_json"                  # every request without a scripted fault fails so

Faults: 429 (with Retry-After and RetryInfo), 500, 503, timeout (hang past the client timeout), invalid_json,
fenced, duplicates, missing, empty_safety (no text, finish reason SAFETY), empty (no text, finish STOP),
truncated (MAX_TOKENS / length), 404, 401, echo_key (an answer whose text repeats the key the client sent),
400_echo_key (an error that does), garbage (200 with an HTML page), garbage_json (200 with JSON of another
protocol).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


@dataclass
class Seen:
    """One request as the server saw it."""
    path: str
    model: str
    api_key: str
    texts: list
    images: list          # raw JPEG bytes, in order
    fingerprint: str      # hash of images and text, in order
    fault: str | None
    generation: dict      # generationConfig (Gemini) or the request body minus messages (OpenAI)
    arrived: float        # time.perf_counter() on arrival
    mimes: list           # the images' MIME types, in order
    encoded: list         # the images as the wire carried them (base64 text), in order


def _mean_colour(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)


def oracle_ranking(images: list) -> list:
    """1-based candidate numbers, best first: nearest mean colour to the first image (the ground photo)."""
    query, cands = _mean_colour(images[0]), [_mean_colour(b) for b in images[1:]]
    dist = [float(np.linalg.norm(c - query)) for c in cands]
    return [int(i) + 1 for i in np.argsort(dist, kind="stable")]


class FakeVLMServer:
    def __init__(self, delay_s: float = 0.0, hang_s: float = 3.0, ranker=oracle_ranking, retry_delay_s: float = 0.01):
        self.delay_s, self.hang_s, self.ranker, self.retry_delay_s = delay_s, hang_s, ranker, retry_delay_s
        self.script: list = []
        self.always: str | None = None
        self.seen: list[Seen] = []
        self.retired_models = {"gemini-2.5-flash-preview-05-20"}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.dispatch(self, "POST", raw)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def do_GET(self):
                server.dispatch(self, "GET", self.rfile.read(int(self.headers.get("Content-Length", 0))))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # a hung 'timeout' handler must not hold up shutdown
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def dispatch(self, h: BaseHTTPRequestHandler, method: str, raw: bytes) -> None:
        """Route one request (tests/fake_batch_server.py adds the Batch and Files APIs)."""
        if method != "POST":
            return self._send(h, 404, {"error": {"code": 404, "message": f"no route {h.path}", "status": "NOT_FOUND"}})
        return self.handle(h, json.loads(raw or b"{}"))

    # --- parsing ------------------------------------------------------------------------------------------------
    @staticmethod
    def _gemini_parts(body: dict):
        texts, images, mimes, encoded = [], [], [], []
        for part in body["contents"][0]["parts"]:
            if "text" in part:
                texts.append(part["text"])
            data = part.get("inlineData") or part.get("inline_data")
            if data:
                raw = data["data"]
                images.append(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
                mimes.append(data.get("mimeType") or data.get("mime_type"))
                encoded.append(raw)
        return texts, images, mimes, encoded

    @staticmethod
    def _openai_parts(body: dict):
        texts, images, mimes, encoded = [], [], [], []
        for part in body["messages"][0]["content"]:
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                head, raw = part["image_url"]["url"].split(",", 1)
                images.append(base64.b64decode(raw))
                mimes.append(head.removeprefix("data:").removesuffix(";base64"))
                encoded.append(raw)
        return texts, images, mimes, encoded

    def handle(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        gemini = re.match(r"^/(v1|v1beta)/models/([^:]+):generateContent$", h.path)
        openai = h.path.rstrip("/").endswith("/chat/completions")
        if not (gemini or openai):
            return self._send(h, 404, {"error": {"code": 404, "message": f"no route {h.path}", "status": "NOT_FOUND"}})
        texts, images, mimes, encoded = self._gemini_parts(body) if gemini else self._openai_parts(body)
        model = gemini.group(2) if gemini else body.get("model", "")
        key = h.headers.get("x-goog-api-key") or h.headers.get("Authorization", "").removeprefix("Bearer ")
        digest = hashlib.sha256()
        for part in images:
            digest.update(hashlib.sha256(part).digest())
        digest.update("\n".join(texts).encode())
        arrived = time.perf_counter()
        with self.lock:
            fault = self.script.pop(0) if self.script else self.always
            generation = (body.get("generationConfig", {}) if gemini
                          else {k: v for k, v in body.items() if k != "messages"})
            self.seen.append(Seen(h.path, model, key, texts, images, digest.hexdigest(), fault, generation,
                                  arrived, mimes, encoded))
        if self.delay_s:
            time.sleep(self.delay_s)
        if fault == "timeout":
            time.sleep(self.hang_s)
            return self._send(h, 504, {"error": {"code": 504, "message": "too late", "status": "DEADLINE_EXCEEDED"}})
        if fault == "garbage":
            page = "<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body>" + "x" * 400
            return self._send(h, 200, page, content_type="text/html")
        if fault == "garbage_json":
            return self._send(h, 200, {"status": "ok", "service": "a web app, not a VLM", "echo": key})
        if model in self.retired_models or fault == "404":
            return self._send(h, 404, {"error": {"code": 404, "message": f"models/{model} is not found for API "
                                                 "version v1, or is not supported for generateContent.",
                                                 "status": "NOT_FOUND"}})
        errors = {"429": (429, "RESOURCE_EXHAUSTED", "quota exceeded"), "500": (500, "INTERNAL", "internal error"),
                  "503": (503, "UNAVAILABLE", "overloaded"), "401": (401, "UNAUTHENTICATED", "API key not valid"),
                  "400_echo_key": (400, "INVALID_ARGUMENT", f"API key {key} not valid. Please pass a valid API key.")}
        if fault in errors:
            code, status, message = errors[fault]
            error = {"code": code, "message": message, "status": status}
            if code == 429:
                error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                     "retryDelay": f"{self.retry_delay_s}s"}]
            headers = {"Retry-After": str(self.retry_delay_s)} if code == 429 else {}
            return self._send(h, code, {"error": error}, headers)

        k = len(images) - 1
        ranking = self.ranker(images)
        answer = {"ranking": ranking, "summary_ground_image": "a street with buildings",
                  "summary_satellite_images": [f"rooftop {i + 1}, compared by colour" for i in range(k)],
                  "reason": f"image {ranking[0]} has the closest colour"}
        finish = "STOP"
        if fault == "duplicates":
            answer["ranking"] = [ranking[0]] * 2 + ranking[2:]
        elif fault == "missing":
            answer["ranking"] = ranking[:-1]
        elif fault == "huge_reason":  # a valid ranking with a 10 MB reason
            answer["reason"] = "because " * 1_250_000
        elif fault == "echo_key":
            answer["reason"] = f"you sent me the key {key}"
        text = json.dumps(answer)
        if fault == "invalid_json":
            text = "Sure! Here is the ranking: " + text
        elif fault == "fenced":
            text = "```json\n" + text + "\n```"
        elif fault == "empty_safety":
            text, finish = "", "SAFETY"
        elif fault == "empty":
            text = ""
        elif fault == "truncated":
            text, finish = text[: len(text) // 2], "MAX_TOKENS"
        return self._answer(h, bool(gemini), model, text, finish, len(images))

    # --- responses ----------------------------------------------------------------------------------------------
    def _answer(self, h, gemini: bool, model: str, text: str, finish: str, n_images: int) -> None:
        prompt_tokens, out_tokens, thoughts = 64 * n_images + 300, 120, 40
        if gemini:
            parts = [{"text": text}] if text else []
            return self._send(h, 200, {
                "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}],
                "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                                  "thoughtsTokenCount": thoughts,
                                  "totalTokenCount": prompt_tokens + out_tokens + thoughts},
                "modelVersion": f"{model}-fake-001"})
        finish = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter"}[finish]
        return self._send(h, 200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "model": f"{model}-fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text or None},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens + thoughts,
                      "total_tokens": prompt_tokens + out_tokens + thoughts,
                      "completion_tokens_details": {"reasoning_tokens": thoughts}}})

    @staticmethod
    def _send(h, code: int, payload, headers: dict | None = None, content_type: str = "application/json") -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass


def write_tiny_run(outputs_root, run_name: str = "t", buildings: int = 12, queries_per_building: int = 2,
                   distractors: int = 2, dim: int = 16, noise: float = 0.9, seed: int = 0):
    """A run folder with retrieval/features.npz over tiny solid-colour JPEGs, one colour per building, so the
    oracle server can tell the true match. Features are noisy copies of the gallery's: retrieval is imperfect
    (the true match is often 2nd-5th), which is what re-ranking is for. Returns the npz path."""
    from pathlib import Path

    rng = np.random.default_rng(seed)
    root = Path(outputs_root)
    images = root / f"{run_name}_images"
    images.mkdir(parents=True, exist_ok=True)
    n_gallery = buildings + distractors
    colours = rng.integers(0, 256, size=(n_gallery, 3))
    gallery = rng.normal(size=(n_gallery, dim))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    g_names, g_ids, g_paths = [], [], []
    for b in range(n_gallery):
        path = images / f"sat{b:04d}.jpg"
        Image.new("RGB", (24, 24), tuple(int(c) for c in colours[b])).save(path)
        g_names.append(f"sat{b:04d}")
        g_ids.append(f"{b:04d}")
        g_paths.append(str(path))
    q_feats, q_names, q_ids, q_paths = [], [], [], []
    for b in range(buildings):
        for j in range(queries_per_building):
            path = images / f"street{b:04d}_{j}.jpg"
            Image.new("RGB", (30, 20), tuple(int(c) for c in colours[b])).save(path)
            f = gallery[b] + noise * rng.normal(size=dim)
            q_feats.append(f / np.linalg.norm(f))
            q_names.append(f"{b:04d}/street{j}.jpg")
            q_ids.append(f"{b:04d}")
            q_paths.append(str(path))
    out = root / run_name / "retrieval" / "features.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, query_features=np.asarray(q_feats, np.float32), query_ids=np.asarray(q_ids),
             query_names=np.asarray(q_names), query_paths=np.asarray(q_paths),
             gallery_features=gallery.astype(np.float32), gallery_ids=np.asarray(g_ids),
             gallery_names=np.asarray(g_names), gallery_paths=np.asarray(g_paths))
    return out
