"""What re-ranking costs: list prices per million tokens, and the estimate for a run.

Prices are Google's published paid-tier list prices (USD per 1M tokens, prompts under 200k tokens) as of
mid-2025; they change, so every figure made from them is labelled an estimate, and the
vlm_price_in_per_mtok / vlm_price_out_per_mtok parameters override them. Thinking tokens are billed as
output. Models without a listed price (local servers) cost nothing unless the parameters say otherwise.
The Batch API (vlm_mode: batch) bills the same tokens at a share of these prices (vlm_batch_price_factor,
Google's: half); `price_factor` says which share a run pays.
"""
from __future__ import annotations

from typing import Optional

PRICES_AS_OF = "2025-06"
PRICES_PER_MTOK = {  # model id prefix: (input, output)
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.0-flash-lite": (0.075, 0.30),
}
# Tokens Gemini 2.x counts for one image, by media resolution (documented figures; 'unspecified' = default).
IMAGE_TOKENS = {"low": 64, "medium": 256, "high": 256, "unspecified": 258}


def price(model: str, price_in: Optional[float] = None, price_out: Optional[float] = None):
    """(input, output, source) in USD per 1M tokens; the longest matching prefix of the table wins."""
    model = model.removeprefix("models/")
    match = max((p for p in PRICES_PER_MTOK if model.startswith(p)), key=len, default=None)
    table_in, table_out = PRICES_PER_MTOK.get(match, (None, None))
    p_in = price_in if price_in is not None else table_in
    p_out = price_out if price_out is not None else table_out
    if price_in is not None or price_out is not None:
        source = "parameters" + (f" + list price of {match} ({PRICES_AS_OF})" if match else "")
    elif match:
        source = f"list price of {match} ({PRICES_AS_OF})"
    else:
        source = "no price known for this model (free local server?); set vlm_price_*_per_mtok"
    return p_in or 0.0, p_out or 0.0, source


def price_factor(cfg) -> float:
    """The share of the interactive price a run's tokens are billed at: 1, or vlm_batch_price_factor in batch mode."""
    return cfg.vlm_batch_price_factor if cfg.vlm_mode == "batch" else 1.0


def cost_usd(tokens: dict, p_in: float, p_out: float) -> float:
    return (tokens.get("input", 0) * p_in + (tokens.get("output", 0) + tokens.get("thoughts", 0)) * p_out) / 1e6


def typical_request_tokens(k: int, media_resolution: str, text_in: int = 450, text_out: int = 450,
                           thoughts: int = 800) -> dict:
    """A rough token count for one request (k candidates + the query image), for planning before a run.
    Text and thinking figures are assumptions; measure a few queries and use their real counts."""
    return {"input": (k + 1) * IMAGE_TOKENS[media_resolution] + text_in, "output": text_out, "thoughts": thoughts}
