"""The real Gemini and OpenAI-compatible clients (rerank/backends.py) against loopback servers, with the faults real
APIs produce, and params/paper.yaml's request as VICI sent it."""
import base64
import json
import time

import pytest

from tests.conftest import VLM_KEY
from tests.fake_vlm_servers import FakeVLMServer, write_tiny_run
from tests.rerank_runs import rerank, rerank_dir
from vici_utils.params import load, validate
from vici_utils.paths import REPO_ROOT
from vici_utils.rerank import RerankError, RetryPolicy, load_features, stage

KEY = VLM_KEY
BACKENDS = ["gemini", "openai"]



def config(backend, server, **kw):
    base = server.url if backend == "gemini" else server.url + "/v1"
    raw = {"run_name": "t", "fusion": "weighted",
           "reranker": backend, "vlm_base_url": base, "rerank_top_k": 5, "vlm_rpm": 100000,
           "vlm_concurrency": 1, "vlm_timeout_s": 5.0, "vlm_max_retries": 2}
    if backend == "openai":
        raw["vlm_model"] = "qwen2.5-vl"
    raw.update(kw)
    return validate(raw)


def reasons(outputs):
    return [json.loads(line) for line in (outputs / "t" / "rerank" / "reasons.jsonl").read_text().splitlines()]


def results(outputs):
    """The bytes of the result files (the answer store excepted), by name."""
    return {p.name: p.read_bytes() for p in (outputs / "t" / "rerank").iterdir()
            if p.name in ("answer_fused.txt", "answer_reranker.txt", "reasons.jsonl", "metrics.json")}


def assert_no_secret(folder):
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert KEY.encode() not in p.read_bytes(), f"the API key leaked into {p}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_oracle_server_lifts_r1_to_the_top_k_ceiling(tiny, server, backend):
    result = rerank(config(backend, server))
    m = result.metrics
    assert m["reranker"]["R@1"] == pytest.approx(m["r_at_k_ceiling"]) and m["retrieval"]["R@1"] < m["r_at_k_ceiling"]
    assert m["reranker"]["R@10"] == m["retrieval"]["R@10"] == m["weighted"]["R@10"] == m["rrf"]["R@10"]
    assert m["counts"] == {"ok": 4, "fallback": 0, "requests": 4, "sent": 4, "cached": 0, "invalid_answers": 0,
                           "gave_up": 0, "retries": 0}
    assert len(server.seen) == 4 and all(len(s.images) == 6 for s in server.seen)
    assert all("Satellite image 5:" in s.texts and s.api_key == KEY for s in server.seen)
    assert m["tokens"] == {"input": 4 * (64 * 6 + 300), "output": 4 * 120, "thoughts": 4 * 40}
    assert sum(m["model_versions"].values()) == 4 and "fake" in next(iter(m["model_versions"]))
    if backend == "gemini":
        assert server.seen[0].path == "/v1/models/gemini-2.5-flash:generateContent"
        g = server.seen[0].generation
        assert g["temperature"] == 0 and g["responseMimeType"] == "application/json"
        assert g["mediaResolution"] == "MEDIA_RESOLUTION_LOW" and g["thinkingConfig"]["thinking_budget"] > 0
        assert set(g["responseSchema"]["required"]) >= {"ranking", "reason"}
        assert m["cost_usd"] > 0
    else:
        g = server.seen[0].generation
        assert g["model"] == "qwen2.5-vl" and g["temperature"] == 0
        assert g["response_format"]["type"] == "json_schema"
        assert m["cost_usd"] == 0
    outs = tiny / "t" / "rerank"
    fused = (outs / "answer_fused.txt").read_text().splitlines()
    assert len(fused) == 4 and all(len(line.split("\t")) == 6 for line in fused)
    r = reasons(tiny)
    assert all(x["status"] == "ok" and x["answers"][0]["presented"] == x["candidates"] for x in r)
    hits = [x for x in r if x["true_match_rank"]["retrieval"] <= 5]
    assert all(x["true_match_rank"]["reranker"] == 1 for x in hits)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fault", ["429", "500", "503", "timeout"])
def test_transport_faults_are_retried(tiny, server, backend, fault):
    server.retry_delay_s = 0.3
    server.hang_s = 1.5
    server.script = [fault, fault]
    t0 = time.perf_counter()
    result = rerank(config(backend, server, vlm_timeout_s=0.4))
    m = result.metrics
    assert m["counts"]["ok"] == 4 and m["counts"]["fallback"] == 0 and m["counts"]["retries"] == 2
    assert len(server.seen) == 6
    if fault == "429":  # the server asked for 0.3 s twice
        assert time.perf_counter() - t0 >= 0.6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fault", ["invalid_json", "fenced", "duplicates", "missing", "empty_safety", "truncated"])
def test_unusable_answers_are_asked_again_and_stored(tiny, server, backend, fault):
    server.script = [fault]
    m = rerank(config(backend, server)).metrics
    assert m["counts"]["ok"] == 4 and m["counts"]["invalid_answers"] == 1 and len(server.seen) == 5
    lines = [json.loads(x) for x in (tiny / "t" / "rerank" / "cache.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and [x["ok"] for x in lines].count(False) == 1
    kind = {"invalid_json": "invalid_json", "fenced": "fenced", "duplicates": "bad_ranking",
            "missing": "bad_ranking", "empty_safety": "finish", "truncated": "truncated"}[fault]
    assert next(x for x in lines if not x["ok"])["fault"].startswith(kind)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_query_that_keeps_failing_keeps_its_retrieval_order(tiny, server, backend):
    server.script = ["duplicates"] * 3  # the first query: 3 bad answers = 1 + vlm_max_retries
    result = rerank(config(backend, server))
    m = result.metrics
    assert m["counts"]["ok"] == 3 and m["counts"]["fallback"] == 1 and m["fallback_reasons"] == {"bad_ranking": 1}
    first = reasons(tiny)[0]
    assert first["status"] == "fallback" and "bad_ranking" in first["fallback_reason"]
    assert first["order"] == first["candidates"]
    assert (result.fused["reranker"][0] == result.ranking[0]).all()
    sent = len(server.seen)
    m = rerank(config(backend, server)).metrics  # stored bad answers are a record, not spent retries: asked again
    assert len(server.seen) == sent + 1 and m["counts"]["ok"] == 4 and m["counts"]["cached"] == 3


def test_transport_give_up_is_not_stored_and_is_retried_next_run(tiny, server):
    server.script = ["500"] * 3
    m = rerank(config("gemini", server)).metrics
    assert m["counts"]["fallback"] == 1 and m["fallback_reasons"] == {"transport": 1} and m["counts"]["gave_up"] == 1
    m = rerank(config("gemini", server)).metrics
    assert m["counts"] == {**m["counts"], "ok": 4, "fallback": 0, "sent": 1, "cached": 3}


@pytest.mark.parametrize("backend", BACKENDS)
def test_retired_model_stops_the_run_with_a_clear_message(tiny, server, backend):
    rerank(config(backend, server))  # an earlier good run: its results stay as they were
    before = results(tiny)
    server.seen.clear()
    cfg = config(backend, server, vlm_model="gemini-2.5-flash-preview-05-20", vlm_concurrency=2)
    with pytest.raises(RerankError, match=r"not found.*gemini-2.5-flash-preview-05-20.*retired") as e:
        rerank(cfg)
    assert "404" in str(e.value) or "not found" in str(e.value)
    assert len(server.seen) <= 2 and results(tiny) == before


def test_rejected_key_and_missing_key_stop_the_run(tiny, server, monkeypatch):
    server.script = ["401"]
    with pytest.raises(RerankError, match="GEMINI_API_KEY"):
        rerank(config("gemini", server))
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(RerankError, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        rerank(config("gemini", server))


def test_unreachable_server_stops_instead_of_silently_keeping_retrieval(outputs, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    write_tiny_run(outputs, "t", buildings=12, queries_per_building=1)
    with FakeVLMServer() as s:
        url = s.url  # closed once the block ends: connection refused
    cfg = validate({"run_name": "t", "fusion": "weighted",
                    "reranker": "gemini", "vlm_base_url": url, "vlm_rpm": 100000,
                    "vlm_max_retries": 0, "rerank_top_k": 5})
    with pytest.raises(RerankError, match="server looks down"):
        rerank(cfg)


def test_concurrency_and_rate_limits(tiny, server):
    server.delay_s = 0.3
    write_tiny_run(tiny, "t", buildings=12, queries_per_building=1)
    rerank(config("gemini", server, vlm_concurrency=4))
    assert server.max_in_flight == 4
    server.seen.clear()
    server.delay_s, server.max_in_flight = 0.0, 0
    rerank(config("gemini", server, vlm_concurrency=4, vlm_rpm=600, vlm_model="other-model"))  # 10 a second
    arrivals = sorted(s.arrived for s in server.seen)
    assert len(arrivals) == 12 and arrivals[-1] - arrivals[0] >= 1.0


def test_permutations_present_shuffled_orders_and_cancel_position_bias(tiny, server):
    server.ranker = lambda images: list(range(1, len(images)))  # always prefers the first-presented image
    m = rerank(config("gemini", server)).metrics
    assert m["position_bias"]["first_presented_picked"] == 1.0
    assert m["reranker"]["R@1"] == m["retrieval"]["R@1"]  # a pure position bias just echoes the retrieval order
    server.seen.clear()
    m = rerank(config("gemini", server, vlm_permutations=3)).metrics
    assert m["counts"]["requests"] == 12 and m["permutations"] == 3
    for x in reasons(tiny):
        presented = [tuple(a["presented"]) for a in x["answers"]]
        assert presented[0] == tuple(x["candidates"]) and len(set(presented)) == 3
    assert len({s.fingerprint for s in server.seen}) == 12 - 4  # the retrieval-order requests were stored


def test_the_key_never_reaches_a_file_or_a_message(tiny, server):
    server.script = ["echo_key"]  # an answer whose reason repeats the key
    rerank(config("gemini", server))
    assert "[REDACTED]" in reasons(tiny)[0]["reason"]
    server.script = ["400_echo_key"]
    with pytest.raises(RerankError) as e:
        rerank(config("gemini", server, vlm_model="another"))
    assert KEY not in str(e.value) and "[REDACTED]" in str(e.value)
    assert_no_secret(tiny / "t")


def test_thinking_is_bounded_per_model_family():
    from google.genai import types

    from vici_utils.rerank.backends import _thinking

    assert _thinking(types, "gemini-2.0-flash", 1024) is None  # rejects a thinking config
    assert _thinking(types, "gemini-2.5-flash", 1024).thinking_budget == 1024
    assert _thinking(types, "gemini-2.5-flash", None) is None  # the server's default
    assert _thinking(types, "gemini-3-flash-preview", 1024).thinking_level == types.ThinkingLevel.LOW


# --- issue 12: a 200 whose body is not the protocol ----------------------------------------------------------
@pytest.mark.parametrize("backend", ["gemini", "openai"])
@pytest.mark.parametrize("fault, start", [("garbage", "<!DOCTYPE html><html><head><title>Welcome to nginx!"),
                                          ("garbage_json", '{"status": "ok", "service": "a web app')])
def test_a_server_answering_garbage_is_down_not_a_source_of_fallbacks(tiny, server, backend, fault, start):
    """Issue 12 (4): a server answering a body that is not the protocol is down."""
    server.always = fault
    with pytest.raises(RerankError) as e:
        rerank(config(backend, server))
    message = str(e.value)
    assert "not the protocol" in message and start in message and server.url.removeprefix("http://") in message
    assert "server looks down" in message and KEY not in message
    assert len(message) < 1200  # the start of the body, not all of it
    assert len(server.seen) == 4 * 3  # 3 attempts each, then the streak of give-ups stops the run
    assert not (rerank_dir(tiny) / "cache.jsonl").exists()  # not an answer: nothing stored


# --- issue 10: params/paper.yaml asks the VLM as VICI's stage_2.py did, checked on the wire -----------------
VLM_KEYS = ("reranker", "vlm_model", "vlm_image_size", "vlm_media_resolution", "vlm_temperature",
            "vlm_thinking_budget")


def paper_vlm(monkeypatch, tmp_path) -> dict:
    monkeypatch.setenv("U1652_ROOT", str(tmp_path))
    return load(REPO_ROOT / "params" / "paper.yaml").subset(VLM_KEYS)


def test_paper_yaml_is_vicis_request(monkeypatch, tmp_path):
    """Issue 10: params/paper.yaml names VICI's VLM request."""
    vlm = paper_vlm(monkeypatch, tmp_path)
    assert vlm == {"reranker": "gemini", "vlm_model": "gemini-2.5-flash", "vlm_image_size": None,
                   "vlm_media_resolution": "unspecified", "vlm_temperature": 0.0, "vlm_thinking_budget": 1024}
    assert "gemini-2.5-flash-preview-05-20" in (REPO_ROOT / "params" / "paper.yaml").read_text()  # said retired


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_the_paper_request_on_the_wire(outputs, monkeypatch, tmp_path, backend):
    """Issue 10: the paper's request on the wire: the files' own bytes, temperature 0, VICI's thinking budget and
    schema order."""
    vlm = paper_vlm(monkeypatch, tmp_path)
    monkeypatch.setenv("GEMINI_API_KEY", "fidelity-key-0123")
    npz = write_tiny_run(outputs, "t", buildings=4, queries_per_building=1, distractors=2)
    feats = load_features(npz)
    with FakeVLMServer() as server:
        raw = {**vlm, "run_name": "t", "fusion": "weighted", "rerank_top_k": 5, "vlm_rpm": 100000, "vlm_concurrency": 1}
        if backend == "openai":
            raw.update(reranker="openai", vlm_model="qwen2.5-vl", vlm_base_url=server.url + "/v1")
        else:
            raw["vlm_base_url"] = server.url
        result = stage.rerank(validate(raw), retry=RetryPolicy(0, base_s=0.001), show_progress=False)
    assert result.metrics["counts"]["ok"] == 4
    paths = {**dict(zip(feats["query_names"], feats["query_paths"])),
             **dict(zip(feats["gallery_names"], feats["gallery_paths"]))}
    for seen, outcome in zip(server.seen, result.outcomes):
        files = [paths[outcome.name], *(paths[c] for c in outcome.candidates)]
        originals = [open(p, "rb").read() for p in files]
        assert seen.images == originals  # the files' own bytes: no downscaling, no re-encoding
        if backend == "gemini":  # as the wire carries them (URL-safe base64)
            assert [s.rstrip("=") for s in seen.encoded] == \
                [base64.urlsafe_b64encode(b).decode().rstrip("=") for b in originals]
        else:
            assert seen.encoded == [base64.b64encode(b).decode() for b in originals]
        assert seen.mimes == ["image/jpeg"] * 6
    g = server.seen[0].generation
    assert g["temperature"] == 0
    if backend == "gemini":
        assert "mediaResolution" not in g and "media_resolution" not in g  # the model's default, not LOW
        thinking = g["thinkingConfig"]
        assert thinking.get("thinkingBudget", thinking.get("thinking_budget")) == 1024
        schema = g["responseSchema"]
        ordering = schema.get("propertyOrdering") or schema.get("property_ordering")
        assert ordering[0] == "ranking" and list(schema["properties"])[0] == "ranking"
    else:
        assert "thinking" not in str(g)  # the protocol has no budget: nothing invented
        assert list(g["response_format"]["json_schema"]["schema"]["properties"])[0] == "ranking"
    answers = [a for o in result.outcomes for a in o.answers]
    assert all(isinstance(a["summary_satellite_images"], list) for a in answers)


def test_the_embedded_default_sends_small_jpegs(outputs, monkeypatch):
    """Issue 10: the embedded default sends small JPEGs at low media resolution."""
    import io

    from PIL import Image

    monkeypatch.setenv("GEMINI_API_KEY", "fidelity-key-0123")
    npz = write_tiny_run(outputs, "t", buildings=2, queries_per_building=1, distractors=1)
    for path in load_features(npz)["query_paths"]:
        Image.open(path).resize((120, 80)).save(path)
    with FakeVLMServer() as server:
        cfg = validate({"run_name": "t", "fusion": "weighted",
                        "reranker": "gemini", "vlm_base_url": server.url, "rerank_top_k": 3,
                        "vlm_image_size": 32, "vlm_rpm": 100000})  # the default, 384, on 32-px-scale data
        stage.rerank(cfg, show_progress=False)
    assert [Image.open(io.BytesIO(s.images[0])).size for s in server.seen] == [(32, 21)] * 2
    assert server.seen[0].generation["mediaResolution"] == "MEDIA_RESOLUTION_LOW"
