"""Prices (rerank/pricing.py): the table by longest model prefix, overrides, costs and typical tokens."""
import pytest

from vici_utils.rerank import pricing


def test_price_table_longest_prefix_and_overrides():
    assert pricing.price("gemini-2.5-flash-lite")[:2] == (0.10, 0.40)
    assert pricing.price("models/gemini-2.5-flash-preview-05-20")[:2] == (0.30, 2.50)
    assert pricing.price("gemini-2.5-flash", price_out=1.0)[:2] == (0.30, 1.0)
    p_in, p_out, source = pricing.price("qwen2.5-vl-7b")
    assert (p_in, p_out) == (0.0, 0.0) and "no price known" in source
    tokens = {"input": 1_000_000, "output": 100_000, "thoughts": 100_000}
    assert pricing.cost_usd(tokens, 0.3, 2.5) == pytest.approx(0.8)
    assert pricing.typical_request_tokens(10, "low")["input"] == 11 * 64 + 450
