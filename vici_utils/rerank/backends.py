"""Network backends: Gemini (google-genai SDK) and any OpenAI-compatible server (vLLM, Ollama, llama.cpp).

Each backend sends one `Request` and returns a `Reply` (text, finish reason, tokens, model version), or
raises `TransientError` (worth retrying) or `RerankError` (stop the run: bad key, unknown or retired
model, malformed request). Keys come from the environment only and never leave this module except in
an HTTP header; `redact` scrubs them from anything we write, in case a server echoes one back.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import os
import re
import time
from dataclasses import dataclass, field
from typing import Optional

from .limits import TransientError, server_retry_delay
from .prompt import PROMPT_VERSION, Request
from .schema import RerankAnswer, json_schema

KEY_VARS = {"gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"), "openai": ("OPENAI_API_KEY",)}
ALL_KEY_VARS = tuple(v for names in KEY_VARS.values() for v in names)

TEMPERATURE = 0.0
MAX_OUTPUT_TOKENS = 8192
THINKING_BUDGET = 1024  # enough to compare 10 images; leaves MAX_OUTPUT_TOKENS room for the JSON itself
FATAL_STATUS = {400: "bad request", 401: "unauthenticated (API key rejected)", 403: "permission denied",
                404: "not found (unknown or retired model id, or wrong base URL)"}


class RerankError(RuntimeError):
    """The run cannot go on (bad key, unknown model, unreachable server...); the message says what to do."""


def redact(text: str) -> str:
    """`text` with every API key from the environment replaced by ***."""
    for var in ALL_KEY_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


@dataclass
class Reply:
    text: str
    finish_reason: Optional[str]
    usage: dict = field(default_factory=dict)  # input, output, thoughts (output excludes thoughts)
    model_version: Optional[str] = None
    latency_s: float = 0.0


def _api_key(backend: str, required: bool) -> Optional[str]:
    for var in KEY_VARS[backend]:
        if os.environ.get(var):
            return os.environ[var]
    if required:
        raise RerankError(f"rerank_backend '{backend}' needs an API key in the environment: set "
                          f"{' or '.join(KEY_VARS[backend])} (keys are never parameters, so they never end up "
                          "in a notebook). For an offline run use rerank_backend: kreciprocal.")
    return None


def _fatal_or_transient(backend: str, model: str, base: str, status: int, message: str, retry_after=None):
    if status in (408, 409, 429) or status >= 500:
        return TransientError(f"HTTP {status}: {message}", retry_after)
    what = FATAL_STATUS.get(status, f"HTTP {status}")
    hint = ""
    if status == 404:
        hint = (f" Check vlm_model='{model}' (retired preview ids such as gemini-2.5-flash-preview-05-20 answer 404; "
                "use a current id such as gemini-2.5-flash) and vlm_base_url.")
    elif status in (401, 403):
        hint = f" Check the key in {' / '.join(KEY_VARS[backend])}."
    return RerankError(redact(f"{backend} backend at {base}: {what} for model '{model}': {message}.{hint} "
                              "Stopping the run rather than silently keeping the retrieval order."))


def _thinking(types, model: str):
    """A bounded thinking allowance, so thoughts cannot eat the output budget (finish reason MAX_TOKENS, no
    JSON). Gemini 1.x / 2.0 reject a thinking config; Gemini 3 takes a level, 2.5 a token budget."""
    if re.search(r"gemini-(1\.|2\.0)", model):
        return None
    if re.search(r"gemini-3", model):
        return types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW)
    return types.ThinkingConfig(thinking_budget=THINKING_BUDGET)


class GeminiBackend:
    """google-genai. The SDK's own retries stay off: ours honour RetryInfo and log.

    The SDK turns a request into JSON in pure Python (pydantic walks, base64, json.dumps: ~50 ms for eleven
    384-px images). On the event loop that would stall every other request's socket I/O, so each call runs
    the SDK's synchronous client in a thread of our own pool instead."""
    name = "gemini"

    def __init__(self, cfg):
        from google import genai
        from google.genai import types

        self.types = types
        # spare threads: a timed-out call keeps its thread until the SDK's own timeout (the same) fires
        self.pool = concurrent.futures.ThreadPoolExecutor(2 * cfg.vlm_concurrency, thread_name_prefix="gemini")
        self.model = cfg.vlm_model
        self.base = cfg.vlm_base_url or "https://generativelanguage.googleapis.com"
        self.timeout_s = cfg.vlm_timeout_s
        options = types.HttpOptions(base_url=cfg.vlm_base_url, timeout=int(cfg.vlm_timeout_s * 1000))
        self.client = genai.Client(api_key=_api_key("gemini", required=True), http_options=options)
        media = {"unspecified": None, "low": types.MediaResolution.MEDIA_RESOLUTION_LOW,
                 "medium": types.MediaResolution.MEDIA_RESOLUTION_MEDIUM,
                 "high": types.MediaResolution.MEDIA_RESOLUTION_HIGH}[cfg.vlm_media_resolution]
        thinking = _thinking(types, self.model)
        self.config = types.GenerateContentConfig(
            temperature=TEMPERATURE, max_output_tokens=MAX_OUTPUT_TOKENS, response_mime_type="application/json",
            response_schema=RerankAnswer, media_resolution=media, thinking_config=thinking)
        self.settings = {"backend": self.name, "model": self.model, "temperature": TEMPERATURE,
                         "max_output_tokens": MAX_OUTPUT_TOKENS,
                         "thinking": thinking and thinking.model_dump(exclude_none=True),
                         "media_resolution": cfg.vlm_media_resolution, "image_size": cfg.vlm_image_size,
                         "prompt_version": PROMPT_VERSION, "schema": json_schema()}

    def _contents(self, request: Request):
        Part = self.types.Part
        return [Part.from_bytes(data=p, mime_type="image/jpeg") if isinstance(p, bytes) else Part.from_text(text=p)
                for p in request.parts]

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
            raise _fatal_or_transient(self.name, self.model, self.base, e.code or 0,
                                      f"{e.status}: {e.message}", retry_after) from None
        except (asyncio.TimeoutError, httpx2.TimeoutException):
            raise TransientError(f"timed out after {self.timeout_s:g} s") from None
        except httpx2.TransportError as e:
            raise TransientError(f"connection failed: {type(e).__name__}: {e}") from None
        latency = time.perf_counter() - t0
        usage = response.usage_metadata
        tokens = {"input": usage.prompt_token_count or 0, "output": usage.candidates_token_count or 0,
                  "thoughts": usage.thoughts_token_count or 0} if usage else {}
        if not response.candidates:  # the prompt itself was blocked
            feedback = response.prompt_feedback
            reason = feedback.block_reason if feedback and feedback.block_reason else "NO_CANDIDATES"
            return Reply("", f"BLOCKED_{getattr(reason, 'value', reason)}", tokens, response.model_version, latency)
        cand = response.candidates[0]
        parts = cand.content.parts if cand.content and cand.content.parts else []
        text = "".join(p.text for p in parts if p.text and not p.thought)
        finish = getattr(cand.finish_reason, "value", cand.finish_reason)
        return Reply(text, finish, tokens, response.model_version, latency)

    async def aclose(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


class OpenAIBackend:
    """POST {vlm_base_url}/chat/completions with images as data URIs and a JSON-schema response format."""
    name = "openai"

    def __init__(self, cfg):
        import httpx

        if not cfg.vlm_base_url:
            raise RerankError("rerank_backend 'openai' needs vlm_base_url, the server's OpenAI-compatible root "
                              "(e.g. http://localhost:8000/v1 for vLLM, http://localhost:11434/v1 for Ollama)")
        self.model = cfg.vlm_model
        self.base = cfg.vlm_base_url.rstrip("/")
        self.timeout_s = cfg.vlm_timeout_s
        key = _api_key("openai", required=False)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=cfg.vlm_timeout_s,
                                        limits=httpx.Limits(max_connections=cfg.vlm_concurrency + 4))
        # OpenAI's image `detail` is the closest thing to Gemini's media resolution; other servers ignore it.
        self.detail = {"unspecified": None, "low": "low", "medium": "auto", "high": "high"}[cfg.vlm_media_resolution]
        self.settings = {"backend": self.name, "model": self.model, "temperature": TEMPERATURE,
                         "max_tokens": MAX_OUTPUT_TOKENS, "detail": self.detail, "image_size": cfg.vlm_image_size,
                         "prompt_version": PROMPT_VERSION, "schema": json_schema()}

    def _payload(self, request: Request) -> dict:
        content = []
        for p in request.parts:
            if isinstance(p, bytes):
                image = {"url": "data:image/jpeg;base64," + base64.b64encode(p).decode()}
                if self.detail:
                    image["detail"] = self.detail
                content.append({"type": "image_url", "image_url": image})
            else:
                content.append({"type": "text", "text": p})
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "temperature": TEMPERATURE, "max_tokens": MAX_OUTPUT_TOKENS,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "rerank_answer", "schema": json_schema(), "strict": True}}}

    async def send(self, request: Request) -> Reply:
        import httpx

        t0 = time.perf_counter()
        try:
            r = await asyncio.wait_for(self.client.post(f"{self.base}/chat/completions", json=self._payload(request)),
                                       timeout=self.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise TransientError(f"timed out after {self.timeout_s:g} s") from None
        except httpx.TransportError as e:
            raise TransientError(f"connection failed: {type(e).__name__}: {e}") from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200:
            message = (body.get("error", body) if isinstance(body, dict) else None) or r.text[:300]
            if isinstance(message, dict):
                message = message.get("message", message)
            raise _fatal_or_transient(self.name, self.model, self.base, r.status_code, str(message),
                                      server_retry_delay(r.headers, body))
        if not isinstance(body, dict) or not body.get("choices"):
            return Reply("", "NO_CHOICES", {}, None, time.perf_counter() - t0)
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        thoughts = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        tokens = {"input": usage.get("prompt_tokens", 0), "output": usage.get("completion_tokens", 0) - thoughts,
                  "thoughts": thoughts} if usage else {}
        text = (choice.get("message") or {}).get("content") or ""
        return Reply(text, choice.get("finish_reason"), tokens, body.get("model"), time.perf_counter() - t0)

    async def aclose(self) -> None:
        await self.client.aclose()


BACKENDS = {"gemini": GeminiBackend, "openai": OpenAIBackend}


def make_backend(cfg):
    if cfg.rerank_backend not in BACKENDS:
        raise ValueError(f"rerank_backend '{cfg.rerank_backend}' has no network client (have {sorted(BACKENDS)})")
    return BACKENDS[cfg.rerank_backend](cfg)
