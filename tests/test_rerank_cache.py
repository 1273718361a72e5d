"""The answer store (rerank/cache.py): torn lines survived, secrets redacted, answers keyed by server and model."""
import json

import pytest

from tests.fake_vlm_servers import FakeVLMServer
from tests.rerank_runs import config, rerank, rerank_dir
from vici_utils.rerank import RerankError
from vici_utils.rerank.cache import AnswerCache


def test_cache_survives_a_torn_line_and_appends_cleanly(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "k-SECRET-99")
    cache = AnswerCache(tmp_path / "cache.jsonl")
    cache.put({"key": "a", "ok": True, "ranking": [1, 2]})
    cache.put({"key": "b", "ok": False, "fault": "empty: no text"})
    cache.put({"key": "c", "ok": True, "reason": "the key k-SECRET-99 leaked"})
    cache.close()
    with open(tmp_path / "cache.jsonl", "a") as f:
        f.write('{"key": "d", "ok": tr')  # killed mid-write
    again = AnswerCache(tmp_path / "cache.jsonl")
    assert again.torn_lines == 1 and len(again) == 3
    assert again.answer("a")["ranking"] == [1, 2] and again.answer("b") is None and len(again.faults("b")) == 1
    assert "SECRET" not in (tmp_path / "cache.jsonl").read_text()
    assert again.answer("c")["reason"].endswith("[REDACTED] leaked")
    again.put({"key": "d", "ok": True})
    again.close()
    third = AnswerCache(tmp_path / "cache.jsonl")
    assert third.torn_lines == 1 and third.answer("d") == {"key": "d", "ok": True}


def test_stored_answers_belong_to_their_server_and_model(tiny, server):
    """Issue 12 (2): stored answers belong to their server and model."""
    with FakeVLMServer() as wrong:
        wrong.always = "invalid_json"  # the first vlm_base_url pointed at a broken server
        with pytest.raises(RerankError, match="kept their retrieval order"):
            rerank(config("gemini", wrong.url, vlm_stop_after_unusable=100))
    m = rerank(config("gemini", server.url)).metrics  # the user fixes vlm_base_url: every query is asked
    assert len(server.seen) == 4 and m["counts"]["sent"] == 4 and m["counts"]["ok"] == 4
    m = rerank(config("gemini", server.url)).metrics  # the same server again: all from the store
    assert len(server.seen) == 4 and m["counts"]["cached"] == 4
    m = rerank(config("gemini", server.url, vlm_model="gemini-2.5-pro")).metrics  # another model: asked
    assert len(server.seen) == 8 and m["counts"]["sent"] == 4
    stored = [json.loads(x) for x in (rerank_dir(tiny) / "cache.jsonl").read_text().splitlines()]
    assert len({x["key"] for x in stored}) == 12  # 4 queries x (broken server, good server, other model)
