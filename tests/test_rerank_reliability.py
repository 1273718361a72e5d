"""Issue 12: bad answers and failed set-ups against loopback servers. The tests left here guard rerank/run.py,
whose test file was being edited in parallel (issue 20.5); they belong in test_rerank_run.py, the others moved to
their units' files."""
import json
import logging

import pytest

from tests.conftest import VLM_KEY
from tests.rerank_runs import RESULTS, config, rerank, rerank_dir, snapshot
from vici_utils.rerank import RerankError

KEY = VLM_KEY


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_a_run_of_unusable_answers_fails_and_a_fixed_rerun_asks_again(tiny, server, backend):
    """Issue 12 (2), for test_rerank_run.py: a run of unusable answers fails; a fixed rerun asks again."""
    server.always = "empty"  # 200, finish STOP, no text: every answer unusable
    with pytest.raises(RerankError, match=r"4 of 4 re-ranked queries .*empty: 4.*vlm_max_fallback_share") as e:
        rerank(config(backend, server.url, vlm_stop_after_unusable=100))  # the share rule, not the early stop
    assert "failed" in str(e.value)
    out = rerank_dir(tiny)
    assert not (out / "metrics.json").exists() and not (out / "answer_fused.txt").exists()
    failed = [json.loads(x) for x in (out / "failed" / "reasons.jsonl").read_text().splitlines()]
    assert [x["status"] for x in failed] == ["fallback"] * 4  # kept apart, for inspection
    stored = [json.loads(x) for x in (out / "cache.jsonl").read_text().splitlines()]
    assert len(stored) == 12 and not any(x["ok"] for x in stored)  # 3 tries each, kept for the record

    server.always, sent = None, len(server.seen)  # the server is fixed: the same requests are asked again
    m = rerank(config(backend, server.url)).metrics
    assert len(server.seen) == sent + 4 and m["counts"]["ok"] == 4 and m["counts"]["sent"] == 4
    assert (out / "metrics.json").is_file() and not (out / "failed").exists()


def test_fallbacks_within_the_accepted_share_only_warn(tiny, server, caplog):
    """Issue 12 (2), for test_rerank_run.py: fallbacks within vlm_max_fallback_share only warn."""
    server.always = "duplicates"
    with caplog.at_level(logging.WARNING, logger="vici_utils.rerank"):
        m = rerank(config("gemini", server.url, vlm_max_fallback_share=1.0, vlm_stop_after_unusable=100)).metrics
    assert m["counts"]["fallback"] == 4 and m["fallback_reasons"] == {"bad_ranking": 4}
    assert any("4 of 4 re-ranked queries" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert (rerank_dir(tiny) / "answer_fused.txt").is_file()


def test_a_failed_setup_leaves_finished_results_byte_identical(tiny, server, monkeypatch):
    """Issue 12 (6), for test_rerank_run.py: a failed set-up leaves finished results alone."""
    rerank(config("gemini", server.url))
    before, sent = snapshot(tiny), len(server.seen)

    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(RerankError, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        rerank(config("gemini", server.url, vlm_model="other"))
    assert snapshot(tiny) == before
    monkeypatch.setenv("GEMINI_API_KEY", KEY)

    with pytest.raises(RerankError, match="vlm_base_url 'ftp://example.org' is not an http"):
        rerank(config("gemini", "ftp://example.org"))
    (tiny / "t_images" / "sat0001.jpg").unlink()
    with pytest.raises(RerankError, match=r"1 image\(s\) .* missing, e.g. .*sat0001.jpg"):
        rerank(config("gemini", server.url, vlm_model="other"))
    (tiny / "t" / "retrieval" / "features.npz").unlink()
    with pytest.raises(FileNotFoundError, match="features.npz"):
        rerank(config("gemini", server.url, vlm_model="other"))
    assert snapshot(tiny) == before and len(server.seen) == sent  # nothing asked, nothing replaced
    assert not list(rerank_dir(tiny).glob(".staging-*"))


def test_results_are_replaced_whole_by_a_complete_run(tiny, server):
    """Issue 12 (6), for test_rerank_run.py: results are replaced whole by a complete run."""
    rerank(config("gemini", server.url))
    before = snapshot(tiny)
    rerank(config("gemini", server.url, rerank_top_k=3))
    after = snapshot(tiny)
    assert all(after[name] != before[name] for name in ("reasons.jsonl", "metrics.json"))
    assert json.loads(after["metrics.json"])["top_k"] == 3
    assert sorted(p.name for p in rerank_dir(tiny).iterdir()) == sorted(RESULTS)
