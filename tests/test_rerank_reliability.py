"""Issue 12: bad answers, secrets, garbage bodies, worker errors and failed set-ups, against loopback servers."""
import asyncio
import base64
import json
import logging
import traceback

import pytest
from PIL import Image

from tests.conftest import VLM_KEY
from tests.fake_vlm_servers import FakeVLMServer
from vici_utils.params import validate
from vici_utils.rerank import RerankError, RetryPolicy, run_rerank
from vici_utils.rerank.ask import Asker, ask_all
from vici_utils.rerank.cache import AnswerCache
from vici_utils.rerank.prompt import Request
from vici_utils.redaction import redact, redact_url
from vici_utils.u1652 import DatasetError

KEY = VLM_KEY
URL_SECRET = "url-token-SECRET-51e0"
TOKEN = "svc-token-SECRET-88aa"     # any secret-looking variable counts, not only the API keys
RESULTS = ("answer_fused.txt", "answer_vlm.txt", "reasons.jsonl", "metrics.json", "cache.jsonl")



def config(backend, url, **kw):
    raw = {"run_name": "t", "fusion": "weighted",
           "rerank_backend": backend, "vlm_base_url": url if backend == "gemini" else url + "/v1",
           "rerank_top_k": 5, "vlm_rpm": 100000, "vlm_concurrency": 1, "vlm_timeout_s": 5.0, "vlm_max_retries": 2}
    if backend == "openai":
        raw["vlm_model"] = "qwen2.5-vl"
    return validate({**raw, **kw})


def rerank(cfg):
    return run_rerank(cfg, retry=RetryPolicy(cfg.vlm_max_retries, base_s=0.002, max_s=0.02), show_progress=False)


def rerank_dir(outputs):
    return outputs / "t" / "rerank"


def snapshot(outputs):
    return {name: (rerank_dir(outputs) / name).read_bytes() for name in RESULTS}


# --- 2. unusable answers: per server and model, never spent retries, and a mostly-fallback run fails --------------

@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_a_run_of_unusable_answers_fails_and_a_fixed_rerun_asks_again(tiny, server, backend):
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


def test_stored_answers_belong_to_their_server_and_model(tiny, server):
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


def test_fallbacks_within_the_accepted_share_only_warn(tiny, server, caplog):
    server.always = "duplicates"
    with caplog.at_level(logging.WARNING, logger="vici_utils.rerank"):
        m = rerank(config("gemini", server.url, vlm_max_fallback_share=1.0, vlm_stop_after_unusable=100)).metrics
    assert m["counts"]["fallback"] == 4 and m["fallback_reasons"] == {"bad_ranking": 4}
    assert any("4 of 4 re-ranked queries" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert (rerank_dir(tiny) / "answer_fused.txt").is_file()


# --- 3. secrets: redacted where answers arrive, URLs shown without credentials ------------------------------------

def test_redact_replaces_current_secret_values(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", TOKEN)
    monkeypatch.setenv("DB_PASSWORD", "short")  # under 8 characters: an ordinary word, left alone
    monkeypatch.setenv("HOME_DIR_NAME", "not-a-secret-at-all")
    text = f"key {KEY}, token {TOKEN}, short, not-a-secret-at-all, http://me:{URL_SECRET}@host:8000/v1"
    assert redact(text) == ("key [REDACTED], token [REDACTED], short, not-a-secret-at-all, "
                            "http://[REDACTED]@host:8000/v1")
    assert redact_url(f"https://me:{URL_SECRET}@example.org:8443/v1?key={KEY}&alt=json") == \
        "https://example.org:8443/v1?key=[REDACTED]&alt=json"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1" and redact_url(None) is None


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_planted_secrets_reach_no_file_and_nothing_in_memory(tiny, server, backend, monkeypatch):
    import matplotlib.text

    from vici_utils.figures import rerank as figures

    monkeypatch.setenv("MY_SERVICE_TOKEN", TOKEN)
    monkeypatch.setenv("VLM_URL_TOKEN", URL_SECRET)
    url = server.url.replace("://", "://user:${VLM_URL_TOKEN}@")  # credentials by reference, as params require
    server.always = "echo_key"  # every answer's reason repeats the key the client sent
    cfg = config(backend, url)
    result = rerank(cfg)
    assert result.metrics["counts"]["ok"] == 4
    assert all(o.note.startswith("you sent me the key") for o in result.outcomes)
    shown = [result.per_query.to_csv(), json.dumps(result.metrics), repr(result.outcomes)]
    fig = figures.wins_and_losses(result, cfg, n=2)
    shown += [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    server.always = "400_echo_key"  # an error that prints the key, from a URL with credentials
    with pytest.raises(RerankError) as e:
        rerank(config(backend, url, vlm_model="another"))
    shown.append(str(e.value))
    assert "127.0.0.1" in str(e.value) and "[REDACTED]" in str(e.value)
    shown += [p.read_text(errors="replace") for p in (tiny / "t").rglob("*") if p.is_file() and p.suffix != ".npz"]
    assert len(shown) > 8
    basic = base64.b64encode(f"user:{URL_SECRET}".encode()).decode()  # how the URL's credentials travel
    for text in shown:
        for secret in (KEY, URL_SECRET, basic, TOKEN):
            assert secret not in text


# --- 4. a 200 whose body is not the protocol -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["gemini", "openai"])
@pytest.mark.parametrize("fault, start", [("garbage", "<!DOCTYPE html><html><head><title>Welcome to nginx!"),
                                          ("garbage_json", '{"status": "ok", "service": "a web app')])
def test_a_server_answering_garbage_is_down_not_a_source_of_fallbacks(tiny, server, backend, fault, start):
    server.always = fault
    with pytest.raises(RerankError) as e:
        rerank(config(backend, server.url))
    message = str(e.value)
    assert "not the protocol" in message and start in message and server.url.removeprefix("http://") in message
    assert "server looks down" in message and KEY not in message
    assert len(message) < 1200  # the start of the body, not all of it
    assert len(server.seen) == 4 * 3  # 3 attempts each, then the streak of give-ups stops the run
    assert not (rerank_dir(tiny) / "cache.jsonl").exists()  # not an answer: nothing stored


# --- 5. an error in a worker surfaces with its message -------------------------------------------------------------

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
    asker = Asker(Raising(error), AnswerCache(tmp_path / "cache.jsonl"), RetryPolicy(0, base_s=0.001), rpm=100000)
    jobs = list(range(6))

    def build(i):
        return Request(i, f"q{i}", 0, [0, 1], ["a", "b"], ["text"])

    with pytest.raises(BaseException) as e:
        asyncio.run(ask_all(asker, jobs, build, concurrency=3))
    assert str(e.value).strip() and names in str(e.value)
    assert not isinstance(e.value.__context__, BaseExceptionGroup)  # no cycle: the error inside its own group
    assert names in traceback.format_exception_only(e.value)[-1]


def test_an_unreadable_image_is_named(tiny, server):
    bad = tiny / "t_images" / "street0000_0.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="street0000_0.jpg: cannot read this image"):
        rerank(config("gemini", server.url))


# --- 6. a failed set-up leaves finished results alone --------------------------------------------------------------

def test_a_failed_setup_leaves_finished_results_byte_identical(tiny, server, monkeypatch):
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
    rerank(config("gemini", server.url))
    before = snapshot(tiny)
    rerank(config("gemini", server.url, rerank_top_k=3))
    after = snapshot(tiny)
    assert all(after[name] != before[name] for name in ("reasons.jsonl", "metrics.json"))
    assert json.loads(after["metrics.json"])["top_k"] == 3
    assert sorted(p.name for p in rerank_dir(tiny).iterdir()) == sorted(RESULTS)


def test_original_images_with_an_unusual_format_are_sent_as_jpeg(tiny, server):
    """vlm_image_size None sends the file's own bytes; a format a VLM may not take is re-encoded at full size."""
    from vici_utils.rerank.prompt import image_bytes

    png, bmp = tiny / "a.png", tiny / "a.bmp"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(png)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(bmp)
    assert image_bytes(str(png), None).data == png.read_bytes() and image_bytes(str(png), None).mime == "image/png"
    converted = image_bytes(str(bmp), None)
    assert converted.mime == "image/jpeg" and Image.open(__import__("io").BytesIO(converted.data)).size == (40, 30)
    small = image_bytes(str(png), 20)
    assert small.mime == "image/jpeg" and Image.open(__import__("io").BytesIO(small.data)).size == (20, 15)


# --- issue 22: oversized answers, early stop on a streak of unusable answers, paid answers stored on failure -------

@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_an_oversized_answer_is_unusable_named_and_never_stored_whole(tiny, server, backend):
    """Issue 22.1: a valid ranking with a 10 MB reason was stored as usable (cache.jsonl 42 MB for 4 queries) and
    then hung notebook 04's figures and every rerun."""
    server.script = ["huge_reason"]
    m = rerank(config(backend, server.url)).metrics
    assert m["counts"]["ok"] == 4 and m["counts"]["invalid_answers"] == 1 and len(server.seen) == 5
    out = rerank_dir(tiny)
    stored = [json.loads(x) for x in (out / "cache.jsonl").read_text().splitlines()]
    bad = [x for x in stored if not x["ok"]]
    assert len(bad) == 1 and bad[0]["fault"].startswith("oversized: answer of 10,00") and "64,000" in bad[0]["fault"]
    assert (out / "cache.jsonl").stat().st_size < 50_000 and (out / "reasons.jsonl").stat().st_size < 50_000
    sent = len(server.seen)
    assert rerank(config(backend, server.url)).metrics["counts"]["cached"] == 4 and len(server.seen) == sent


def test_oversized_fields_are_named():
    from vici_utils.rerank.schema import AnswerFault, parse_answer

    good = {"ranking": [2, 1], "summary_ground_image": "g", "summary_satellite_images": ["a", "b"], "reason": "r"}
    for change, name in (({"reason": "x" * 5000}, "reason is 5,000 characters"),
                         ({"summary_satellite_images": ["a", "x" * 4001]}, r"summary_satellite_images\[1\] is 4,001"),
                         ({"summary_satellite_images": ["a"] * 3}, "3 satellite descriptions for 2 images")):
        with pytest.raises(AnswerFault, match=f"oversized: {name}"):
            parse_answer(json.dumps({**good, **change}), 2)
    assert parse_answer(json.dumps(good), 2).reason == "r"


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
