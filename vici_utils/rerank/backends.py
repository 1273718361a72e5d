"""Network re-rankers: Gemini (google-genai SDK) and any OpenAI-compatible server (vLLM, Ollama, llama.cpp).

Each backend is a `VLMReranker` (ask.py: the worker pool, the answer store) that sends one `Request` and
returns a `Reply` (text, finish reason, tokens, model version), or raises `TransientError` (worth
retrying), `ProtocolError` (a 200 whose body is not the protocol: retried like a dropped connection,
so a server that keeps answering garbage counts as down) or `RerankError` (stop the run: bad key,
unknown or retired model, malformed request). Keys come from the environment only and never leave this
module except in an HTTP header. Every reply is redacted as it is parsed (a server may echo the key), so
nothing downstream holds a secret; base URLs are shown without credentials (`redact_url`).
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import json
import os
import re
import time
from dataclasses import dataclass, field, fields
from typing import Optional
from urllib.parse import urlsplit

from .ask import VLMReranker
from .limits import TransientError, server_retry_delay
from .prompt import PROMPT_VERSION, ImagePart, Request, image_digest
from ..redaction import expand_secret_refs, redact, redact_url, remember_url_credentials
from .rerankers import RerankError
from .schema import RerankAnswer, json_schema

__all__ = ["GeminiBackend", "OpenAIBackend", "ProtocolError", "RerankError", "Reply", "redact", "redact_url"]

GEMINI_BASE = "https://generativelanguage.googleapis.com"
MAX_OUTPUT_TOKENS = 8192  # leaves room for the JSON after a thinking budget of ~1k tokens
BODY_SHOWN = 200          # characters of an unparseable body quoted in the error
FATAL_STATUS = {400: "bad request", 401: "unauthenticated (API key rejected)", 403: "permission denied",
                404: "not found (unknown or retired model id, or wrong base URL)"}


class ProtocolError(TransientError):
    """A 200 answer whose body is not the protocol (HTML from a proxy, another service's JSON...)."""

    def __init__(self, url: str, body: str, why: str):
        start = redact(body[:BODY_SHOWN]) + (" ..." if len(body) > BODY_SHOWN else "")
        super().__init__(f"{url} answered 200 with a body that is not the protocol ({why}); "
                         f"the body starts: {start!r}. Check vlm_base_url and reranker.")


@dataclass
class Reply:
    """One answer as it arrived, secrets already removed."""
    text: str
    finish_reason: Optional[str]
    usage: dict = field(default_factory=dict)  # input, output, thoughts (output excludes thoughts)
    model_version: Optional[str] = None
    latency_s: float = 0.0

    def __post_init__(self):  # the point where answers enter the program: nothing after holds a key
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                setattr(self, f.name, redact(value))


def _api_key(backend, required: bool) -> Optional[str]:
    for var in backend.key_vars:
        if os.environ.get(var):
            return os.environ[var]
    if required:
        raise RerankError(f"reranker '{backend.name}' needs an API key in the environment: set "
                          f"{' or '.join(backend.key_vars)} (keys are never parameters, so they never end up "
                          "in a notebook). For an offline run use reranker: kreciprocal.")
    return None


def _checked_base_url(url: str, backend: str) -> str:
    """`url` with its ${NAME} references expanded, if it is usable; its credentials (user:password@, sent as
    HTTP Basic auth) become secrets."""
    try:
        url = expand_secret_refs(url)
    except KeyError as e:
        raise RerankError(f"vlm_base_url: {e.args[0]} (set it, or drop the reference)") from None
    remember_url_credentials(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RerankError(f"vlm_base_url '{redact_url(url)}' is not an http(s) URL with a host (reranker "
                          f"'{backend}'; e.g. http://localhost:8000/v1)")
    return url.rstrip("/")


def _fatal_or_transient(backend, model: str, url: str, status: int, message: str, retry_after=None):
    """`backend`: the re-ranker that asked (its name and key variables name the fix)."""
    if status in (408, 409, 429) or status >= 500:
        return TransientError(redact(f"HTTP {status} from {url}: {message}"), retry_after)
    what = FATAL_STATUS.get(status, f"HTTP {status}")
    hint = ""
    if status == 404:
        hint = (f" Check vlm_model='{model}' (retired preview ids such as gemini-2.5-flash-preview-05-20 answer 404; "
                "use a current id such as gemini-2.5-flash) and vlm_base_url.")
    elif status in (401, 403):
        hint = f" Check the key in {' / '.join(backend.key_vars)}."
    return RerankError(redact(f"{backend.name} backend at {url}: {what} for model '{model}': {message}.{hint} "
                              "Stopping the run rather than silently keeping the retrieval order."))


def _thinking(types, model: str, budget: Optional[int]):
    """A bounded thinking allowance, so thoughts cannot eat the output budget (finish reason MAX_TOKENS, no
    JSON). None: the server's default. Gemini 1.x / 2.0 reject a thinking config; Gemini 3 takes a level
    (LOW), 2.5 a token budget (VICI: 1024)."""
    if budget is None or re.search(r"gemini-(1\.|2\.0)", model):
        return None
    if re.search(r"gemini-3", model):
        return types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW)
    return types.ThinkingConfig(thinking_budget=budget)


def _gemini_reply(body: str, url: str, latency: float) -> Reply:
    """A Reply from the raw generateContent body (camelCase, as the REST API writes it)."""
    try:
        data = json.loads(body or "")
    except ValueError:
        raise ProtocolError(url, body or "", "not JSON") from None
    if not isinstance(data, dict) or not ("candidates" in data or "promptFeedback" in data):
        raise ProtocolError(url, body, "no 'candidates' or 'promptFeedback'")
    usage = data.get("usageMetadata") or {}
    tokens = {"input": usage.get("promptTokenCount") or 0, "output": usage.get("candidatesTokenCount") or 0,
              "thoughts": usage.get("thoughtsTokenCount") or 0} if usage else {}
    version = data.get("modelVersion")
    candidates = data.get("candidates") or []
    if not candidates:  # the prompt itself was blocked
        reason = (data.get("promptFeedback") or {}).get("blockReason") or "NO_CANDIDATES"
        return Reply("", f"BLOCKED_{reason}", tokens, version, latency)
    cand = candidates[0] if isinstance(candidates[0], dict) else {}
    parts = (cand.get("content") or {}).get("parts") or []
    text = "".join(p.get("text") or "" for p in parts if isinstance(p, dict) and not p.get("thought"))
    return Reply(text, cand.get("finishReason"), tokens, version, latency)


class GeminiBackend(VLMReranker):
    """google-genai. The SDK's own retries stay off: ours honour RetryInfo and log. The SDK hands back the
    raw body (should_return_http_response) and `_gemini_reply` reads it, so a body that is not the
    protocol is an error naming the server, and the answer is redacted where it arrives.

    The SDK turns a request into JSON in pure Python (pydantic walks, base64, json.dumps: ~50 ms for eleven
    384-px images). On the event loop that would stall every other request's socket I/O, so each call runs
    the SDK's synchronous client in a thread of our own pool instead."""
    label = "a VLM through Google's Gemini API (a key in the environment)"
    key_vars = ("GEMINI_API_KEY", "GOOGLE_API_KEY")

    def __init__(self, cfg):
        from google import genai
        from google.genai import types

        super().__init__(cfg)
        key = _api_key(self, required=True)
        base = _checked_base_url(cfg.vlm_base_url or GEMINI_BASE, self.name)
        self.types = types
        self.model = cfg.vlm_model
        self.url = f"{redact_url(base)} (models/{self.model}:generateContent)"
        self.timeout_s = cfg.vlm_timeout_s
        options = types.HttpOptions(base_url=base if cfg.vlm_base_url else None, timeout=int(cfg.vlm_timeout_s * 1000))
        self.client = genai.Client(api_key=key, http_options=options)
        # spare threads: a timed-out call keeps its thread until the SDK's own timeout (the same) fires
        self.pool = concurrent.futures.ThreadPoolExecutor(2 * cfg.vlm_concurrency, thread_name_prefix=self.name)
        media = {"unspecified": None, "low": types.MediaResolution.MEDIA_RESOLUTION_LOW,
                 "medium": types.MediaResolution.MEDIA_RESOLUTION_MEDIUM,
                 "high": types.MediaResolution.MEDIA_RESOLUTION_HIGH}[cfg.vlm_media_resolution]
        thinking = _thinking(types, self.model, cfg.vlm_thinking_budget)
        self.config = types.GenerateContentConfig(
            temperature=cfg.vlm_temperature, max_output_tokens=MAX_OUTPUT_TOKENS,
            response_mime_type="application/json", response_schema=RerankAnswer, media_resolution=media,
            thinking_config=thinking, should_return_http_response=True)
        # the cache key: everything that shapes the answer, the server included (never its credentials)
        self.settings = {"backend": self.name, "base_url": redact_url(base), "model": self.model,
                         "temperature": cfg.vlm_temperature, "max_output_tokens": MAX_OUTPUT_TOKENS,
                         "thinking": thinking and thinking.model_dump(exclude_none=True),
                         "media_resolution": cfg.vlm_media_resolution, "image_size": cfg.vlm_image_size,
                         "prompt_version": PROMPT_VERSION, "schema": json_schema()}

    def _contents(self, request: Request, uris: Optional[dict] = None):
        """The request's parts for the SDK; an image whose bytes `uris` names (batch.image_digest -> Files API
        URI) is referenced by that URI instead of sent inline."""
        Part = self.types.Part
        uris = uris or {}

        def image(p: ImagePart):
            uri = uris.get(image_digest(p))
            return Part.from_uri(file_uri=uri, mime_type=p.mime) if uri else Part.from_bytes(data=p.data, mime_type=p.mime)

        return [image(p) if isinstance(p, ImagePart) else Part.from_text(text=p) for p in request.parts]

    async def send(self, request: Request) -> Reply:
        import httpx2
        from google.genai import errors

        t0 = time.perf_counter()
        call = functools.partial(self.client.models.generate_content, model=self.model,
                                 contents=self._contents(request), config=self.config)
        try:
            response = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self.pool, call),
                                              timeout=self.timeout_s)
        except errors.APIError as e:
            retry_after = server_retry_delay(getattr(e.response, "headers", None), e.details)
            raise _fatal_or_transient(self, self.model, self.url, e.code or 0,
                                      f"{e.status}: {e.message}", retry_after) from None
        except (asyncio.TimeoutError, httpx2.TimeoutException):
            raise TransientError(f"{self.url}: timed out after {self.timeout_s:g} s") from None
        except httpx2.TransportError as e:
            raise TransientError(redact(f"{self.url}: connection failed: {type(e).__name__}: {e}")) from None
        raw = response.sdk_http_response.body if response.sdk_http_response else None
        return _gemini_reply(raw, self.url, time.perf_counter() - t0)

    async def aclose(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


class OpenAIBackend(VLMReranker):
    """POST {vlm_base_url}/chat/completions with images as data URIs and a JSON-schema response format.
    The protocol has a temperature but no thinking budget, so vlm_thinking_budget does not apply."""
    label = "a VLM behind an OpenAI-compatible server (vlm_base_url: vLLM, Ollama, llama.cpp)"
    key_vars = ("OPENAI_API_KEY",)

    def __init__(self, cfg):
        import httpx

        super().__init__(cfg)
        if not cfg.vlm_base_url:
            raise RerankError(f"reranker '{self.name}' needs vlm_base_url, the server's OpenAI-compatible root "
                              "(e.g. http://localhost:8000/v1 for vLLM, http://localhost:11434/v1 for Ollama)")
        base = _checked_base_url(cfg.vlm_base_url, self.name)
        self.model = cfg.vlm_model
        self.endpoint = f"{base}/chat/completions"
        self.url = redact_url(self.endpoint)
        self.timeout_s = cfg.vlm_timeout_s
        self.temperature = cfg.vlm_temperature
        key = _api_key(self, required=False)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=cfg.vlm_timeout_s,
                                        limits=httpx.Limits(max_connections=cfg.vlm_concurrency + 4))
        # OpenAI's image `detail` is the closest thing to Gemini's media resolution; other servers ignore it.
        self.detail = {"unspecified": None, "low": "low", "medium": "auto", "high": "high"}[cfg.vlm_media_resolution]
        self.settings = {"backend": self.name, "base_url": redact_url(base), "model": self.model,
                         "temperature": self.temperature, "max_tokens": MAX_OUTPUT_TOKENS, "detail": self.detail,
                         "image_size": cfg.vlm_image_size, "prompt_version": PROMPT_VERSION, "schema": json_schema()}

    def _payload(self, request: Request) -> dict:
        content = []
        for p in request.parts:
            if isinstance(p, ImagePart):
                image = {"url": f"data:{p.mime};base64," + base64.b64encode(p.data).decode()}
                if self.detail:
                    image["detail"] = self.detail
                content.append({"type": "image_url", "image_url": image})
            else:
                content.append({"type": "text", "text": p})
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "temperature": self.temperature, "max_tokens": MAX_OUTPUT_TOKENS,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "rerank_answer", "schema": json_schema(), "strict": True}}}

    async def send(self, request: Request) -> Reply:
        import httpx

        t0 = time.perf_counter()
        try:
            r = await asyncio.wait_for(self.client.post(self.endpoint, json=self._payload(request)),
                                       timeout=self.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise TransientError(f"{self.url}: timed out after {self.timeout_s:g} s") from None
        except httpx.TransportError as e:
            raise TransientError(redact(f"{self.url}: connection failed: {type(e).__name__}: {e}")) from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200:
            message = (body.get("error", body) if isinstance(body, dict) else None) or r.text[:300]
            if isinstance(message, dict):
                message = message.get("message", message)
            raise _fatal_or_transient(self, self.model, self.url, r.status_code, str(message),
                                      server_retry_delay(r.headers, body))
        return self._reply(body, r.text, time.perf_counter() - t0)

    def _reply(self, body, raw: str, latency: float) -> Reply:
        if body is None:
            raise ProtocolError(self.url, raw, "not JSON")
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
                or not isinstance(choices[0].get("message"), dict):
            raise ProtocolError(self.url, raw, "no choices[0].message")
        choice = choices[0]
        usage = body.get("usage") or {}
        thoughts = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        tokens = {"input": usage.get("prompt_tokens", 0), "output": usage.get("completion_tokens", 0) - thoughts,
                  "thoughts": thoughts} if usage else {}
        text = choice["message"].get("content") or ""
        return Reply(text, choice.get("finish_reason"), tokens, body.get("model"), latency)

    async def aclose(self) -> None:
        await self.client.aclose()
