"""Asking the VLM (rerank/ask.py): seeded permutations, worker errors with their message, an early stop on a
streak of unusable answers, and answers in flight stored when a worker fails."""
import asyncio
import traceback

import pytest

from tests.rerank_runs import config, rerank, rerank_dir
from vici_utils.rerank import RerankError, RetryPolicy
from vici_utils.rerank.ask import Asker, ask_all
from vici_utils.rerank.ask import permutations as _permutations
from vici_utils.rerank.cache import AnswerCache
from vici_utils.rerank.prompt import Request
from vici_utils.u1652 import DatasetError


def test_permutations_start_with_retrieval_order_and_are_seeded():
    orders = _permutations(10, 4, seed=0, query=7)
    assert orders[0] == list(range(10))
    assert len({tuple(o) for o in orders}) == 4 and all(sorted(o) == list(range(10)) for o in orders)
    assert orders == _permutations(10, 4, seed=0, query=7)
    assert orders != _permutations(10, 4, seed=0, query=8)


# --- issue 12: an error in a worker surfaces with its message ---------------------------------------------------
class Raising:
    name, url, settings = "fake", "http://fake", {"backend": "fake"}

    def __init__(self, error):
        self.error = error

    async def send(self, request):
        raise self.error


@pytest.mark.parametrize("error, names", [
    (RerankError("gemini backend: unauthenticated"), "unauthenticated"),
    (TimeoutError(), "TimeoutError"),
    (asyncio.TimeoutError(), "TimeoutError"),
    (KeyError("candidates"), "candidates"),
    (ValueError(""), "ValueError"),
    (DatasetError("/data/x.jpg: cannot read this image"), "x.jpg"),
])
def test_worker_errors_keep_their_message(tmp_path, error, names):
    """Issue 12 (5): an error in a worker surfaces with its message."""
    asker = Asker(Raising(error), AnswerCache(tmp_path / "cache.jsonl"), RetryPolicy(0, base_s=0.001), rpm=100000)
    jobs = list(range(6))

    def build(i):
        return Request(i, f"q{i}", 0, [0, 1], ["a", "b"], ["text"])

    with pytest.raises(BaseException) as e:
        asyncio.run(ask_all(asker, jobs, build, concurrency=3))
    assert str(e.value).strip() and names in str(e.value)
    assert not isinstance(e.value.__context__, BaseExceptionGroup)  # no cycle: the error inside its own group
    assert names in traceback.format_exception_only(e.value)[-1]


# --- issue 22: early stop on a streak of unusable answers, paid answers stored on failure -------------------
@pytest.mark.parametrize("fault, cause", [("invalid_json", "ignores structured output"),
                                          ("duplicates", "does not rank 1..K each once")])
def test_a_streak_of_unusable_answers_stops_early_naming_the_likely_cause(tiny, server, fault, cause):
    """Issue 22.7: prose around the JSON cost vlm_max_retries + 1 paid requests per query before the run failed."""
    server.always = fault
    with pytest.raises(RerankError, match=rf"3 answers in a row were unusable for the same reason .*most likely.*"
                                          rf"{cause}.*vlm_stop_after_unusable") as e:
        rerank(config("gemini", server.url, vlm_max_retries=5, vlm_stop_after_unusable=3))
    assert len(server.seen) == 3 and "\n" not in str(e.value)


def test_answers_in_flight_are_stored_when_a_worker_fails(tiny, server, monkeypatch):
    """Issue 22.6: when one worker failed (a full disk), the others' requests in flight were cancelled: paid for,
    never stored. Now nothing more is sent, the answers in flight arrive and are stored, then the error surfaces."""
    import errno

    server.delay_s = 0.3
    put, calls = AnswerCache.put, []

    def put_once_failing(self, record):
        calls.append(record["key"])
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        put(self, record)

    monkeypatch.setattr(AnswerCache, "put", put_once_failing)
    with pytest.raises(OSError, match="No space left"):
        rerank(config("gemini", server.url, vlm_concurrency=4))
    stored = (rerank_dir(tiny) / "cache.jsonl").read_text().splitlines()
    assert len(server.seen) == 4 and len(stored) == 3  # all paid answers but the one whose write failed
