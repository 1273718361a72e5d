"""Batch mode (vlm_mode: batch): the real google-genai client against a loopback Batch + Files API
(tests/fake_batch_server.py), whose answers come from the same oracle as the interactive tests'."""
import json

import nbformat
import pytest

from tests.conftest import VLM_KEY
from tests.fake_batch_server import FakeBatchServer
from tests.fake_vlm_servers import write_tiny_run
from vici_utils import runner
from vici_utils.params import validate
from vici_utils.rerank import RerankError, RetryPolicy, batch, stage
from vici_utils.rerank.batch import BatchAsker, BatchPending

PLANTED = "planted-secret-TOKEN-93be1d"
# what only a batch run's metrics.json has, or has at another value (the price)
BATCH_ONLY = {"mode", "price_factor", "cost_usd", "cost_per_1000_queries_usd", "batch_jobs"}


@pytest.fixture
def server():
    with FakeBatchServer() as s:
        yield s


def config(server, run="t", **kw):
    raw = {"run_name": run, "fusion": "weighted", "reranker": "gemini", "vlm_base_url": server.url,
           "rerank_top_k": 5, "vlm_rpm": 100000, "vlm_concurrency": 1, "vlm_timeout_s": 5.0, "vlm_max_retries": 2,
           "vlm_mode": "batch", "vlm_batch_poll_s": 0.01}
    raw.update(kw)
    return validate(raw)


def rerank(cfg):
    return stage.rerank(cfg, retry=RetryPolicy(cfg.vlm_max_retries, base_s=0.002, max_s=0.02), show_progress=False)


def interactive(outputs, server, script=()):
    """The same tiny run, asked interactively (run 'i'), for comparison."""
    write_tiny_run(outputs, "i", buildings=4, queries_per_building=1, distractors=2)
    server.script = list(script)
    return rerank(config(server, "i", vlm_mode="interactive"))


def book(outputs, run="t"):
    return json.loads((outputs / run / "rerank" / batch.JOB_FILE).read_text())["jobs"]


def assert_same_results(outputs, run="t"):
    """Answer files byte-equal; metrics equal but for the price; reasons equal but for latencies."""
    b, i = outputs / run / "rerank", outputs / "i" / "rerank"
    for name in ("answer_fused.txt", "answer_reranker.txt"):
        assert (b / name).read_bytes() == (i / name).read_bytes(), name
    mb, mi = (json.loads((d / "metrics.json").read_text()) for d in (b, i))
    assert mb["mode"] == "batch" and mi["mode"] == "interactive" and mb["price_factor"] == 0.5
    assert mb["cost_interactive_usd"] == mi["cost_usd"] == mi["cost_interactive_usd"] > 0
    assert mb["cost_usd"] == pytest.approx(0.5 * mi["cost_usd"])
    assert {k: v for k, v in mb.items() if k not in BATCH_ONLY} == {k: v for k, v in mi.items() if k not in BATCH_ONLY}

    def reasons(d):
        rows = [json.loads(line) for line in (d / "reasons.jsonl").read_text().splitlines()]
        for r in rows:
            for a in r["answers"]:
                a.pop("latency_s")
        return rows

    assert reasons(b) == reasons(i)
    return mb


@pytest.mark.parametrize("inline_mb", [20.0, 0.0, 0.02], ids=["inline", "file", "over_the_inline_limit"])
def test_a_batch_job_gives_the_interactive_results_at_half_price(tiny, server, inline_mb, capsys):
    inter = interactive(tiny, server)
    result = rerank(config(server, vlm_batch_inline_mb=inline_mb))
    m = assert_same_results(tiny)
    assert m["counts"] == {"ok": 4, "fallback": 0, "requests": 4, "sent": 4, "cached": 0, "invalid_answers": 0,
                           "gave_up": 0, "retries": 0}
    assert len(server.created) == 1 and result.metrics["reranker"]["R@1"] == inter.metrics["reranker"]["R@1"]
    [job] = book(tiny)
    assert job["status"] == "ended" and job["state"] == "JOB_STATE_SUCCEEDED" and job["request_count"] == 4
    keys = {json.loads(line)["key"] for line in (tiny / "t" / "rerank" / "cache.jsonl").read_text().splitlines()}
    assert set(job["requests"]) == keys
    source = server.created[0]["batch"]["inputConfig"]
    if inline_mb == 20:
        assert job["source"] == "inline" and server.uploads == []
        sent = source["requests"]["requests"]
        assert [r["metadata"]["key"] for r in sent] == list(job["requests"])
        parts = sent[0]["request"]["contents"][0]["parts"]
        assert sum("inlineData" in p for p in parts) == 6
    else:  # each distinct image uploaded once (4 street photos, 6 tiles), then the JSONL keyed by request
        assert job["source"] == "file" and job["images_uploaded"] == 10
        assert server.uploads == ["image/jpeg"] * 10 + ["jsonl"] and source["fileName"] == job["input_file"]
        lines = [json.loads(x) for x in server.files[job["input_file"]][1].decode().splitlines()]
        assert [x["key"] for x in lines] == list(job["requests"])
        parts = lines[0]["request"]["contents"][0]["parts"]
        assert sum("fileData" in p for p in parts) == 6 and not any("inlineData" in p for p in parts)
        assert not list((tiny / "t" / "rerank").glob(".batch-input-*"))  # the input file is not left behind
    assert m["batch_jobs"][0]["request_bytes"] == job["request_bytes"] > 0
    with capsys.disabled():  # the figures for the note
        print(f"\n[batch {job['source']}] requests {job['request_count']}, bytes/query "
              f"{job['request_bytes_per_query']}, cost {m['cost_usd']:.6f} USD (interactive "
              f"{m['cost_interactive_usd']:.6f}), tokens {m['tokens']}")


def test_a_running_job_is_collected_by_the_next_run_without_a_second_submission(tiny, server):
    interactive(tiny, server)
    server.states = ["BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED"]
    with pytest.raises(BatchPending) as pending:
        rerank(config(server))
    [job] = book(tiny)
    line = str(pending.value)
    assert job["name"] in line and "JOB_STATE_RUNNING" in line and "0/4 requests done" in line
    assert f"submitted {job['submitted']}" in line and "--only 04" in line and "batches.cancel" in line
    assert job["status"] == "running" and not (tiny / "t" / "rerank" / "metrics.json").exists()
    assert pending.value._render_traceback_() == [line]  # what notebook 04 shows: one line

    rerank(config(server))  # the rerun looks at the recorded job: done now
    assert len(server.created) == 1
    assert_same_results(tiny)
    calls = len(server.calls)
    again = rerank(config(server))  # every answer stored: nothing asked at all
    assert len(server.calls) == calls and again.metrics["counts"]["cached"] == 4


def test_a_run_waits_up_to_vlm_batch_wait_s(tiny, server):
    server.states = ["BATCH_STATE_PENDING", "BATCH_STATE_RUNNING", "BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED"]
    m = rerank(config(server, vlm_batch_wait_s=30)).metrics
    assert m["counts"]["ok"] == 4 and len(server.created) == 1
    assert server.calls.count(("GET", "/v1/batches/job1")) == 4


def test_an_expired_job_is_asked_again_within_vlm_max_retries(tiny, server):
    interactive(tiny, server)
    server.next_states = [["BATCH_STATE_EXPIRED"]]  # the first job expires, the next one succeeds
    rerank(config(server))
    assert len(server.created) == 2 and [j["state"] for j in book(tiny)] == ["JOB_STATE_EXPIRED", "JOB_STATE_SUCCEEDED"]
    assert_same_results(tiny)


def test_an_expired_job_without_retries_left_keeps_the_retrieval_order(tiny, server):
    server.next_states = [["BATCH_STATE_EXPIRED"]]
    m = rerank(config(server, vlm_max_retries=0, vlm_max_fallback_share=1.0)).metrics
    assert len(server.created) == 1 and m["counts"]["fallback"] == 4 and m["fallback_reasons"] == {"batch": 4}
    assert m["counts"]["gave_up"] == 4 and m["cost_usd"] == 0


def test_a_cancelled_job_gives_what_it_answered_and_the_rest_is_asked_again(tiny, server):
    interactive(tiny, server)
    server.next_states = [["BATCH_STATE_CANCELLED"]]
    server.drop = {0, 2}  # cancelled before these two were answered
    rerank(config(server))
    assert [j["request_count"] for j in book(tiny)] == [4, 2] and book(tiny)[0]["state"] == "JOB_STATE_CANCELLED"
    assert_same_results(tiny)


def test_every_job_state_of_the_sdk_is_handled():
    from google.genai import types

    for state in types.JobState:
        assert state.name in batch.TERMINAL ^ batch.RUNNING_STATES, f"{state.name}: terminal or not?"
        assert batch.job_state(state.name.replace("JOB_STATE_", "BATCH_STATE_")) == state.name


def test_a_failed_job_names_the_reason_and_a_rerun_submits_again(tiny, server):
    server.next_states = [["BATCH_STATE_FAILED"]]
    server.failure = "line 3 of the input file is not a GenerateContentRequest"
    with pytest.raises(RerankError, match=r"batch job batches/job\d+ failed: line 3 of the input file"):
        rerank(config(server))
    assert book(tiny)[0]["status"] == "ended"
    assert rerank(config(server)).metrics["counts"]["ok"] == 4 and len(server.created) == 2


def test_a_rejected_job_names_the_reason(tiny, server):
    server.reject = "Request payload size exceeds the limit: 20971520 bytes."
    with pytest.raises(RerankError, match=r"batch job was rejected.*bad request.*payload size exceeds the limit"):
        rerank(config(server))
    assert not (tiny / "t" / "rerank" / batch.JOB_FILE).exists()


@pytest.mark.parametrize("follow_up", ["batch", "interactive"])
def test_unusable_answers_are_asked_again_and_equal_the_interactive_run(tiny, server, follow_up):
    interactive(tiny, server, script=["duplicates"])  # interactive: the first answer unusable, asked again
    server.script = ["duplicates"]
    seen = len(server.seen)
    m = rerank(config(server, vlm_batch_follow_up=follow_up)).metrics
    assert m["counts"]["sent"] == 5 and m["counts"]["invalid_answers"] == 1 and m["counts"]["ok"] == 4
    assert len(server.seen) - seen == 5
    assert len(server.created) == (2 if follow_up == "batch" else 1)
    if follow_up == "batch":
        assert [j["request_count"] for j in book(tiny)] == [4, 1]
    assert_same_results(tiny)
    lines = [json.loads(x) for x in (tiny / "t" / "rerank" / "cache.jsonl").read_text().splitlines()]
    assert [x["ok"] for x in lines].count(False) == 1 and next(x for x in lines if not x["ok"])["fault"].startswith(
        "bad_ranking")


def test_a_request_the_job_could_not_answer_goes_into_the_follow_up(tiny, server):
    server.script = ["500"]  # the job's first request fails inside the job: an error entry, no answer
    m = rerank(config(server)).metrics
    assert m["counts"]["ok"] == 4 and [j["request_count"] for j in book(tiny)] == [4, 1]


def test_a_kill_between_submission_and_recording_finds_the_job_again(tiny, server, monkeypatch):
    """The process dies right after batches.create returned, before batch.json holds the job. The rerun finds
    the job by its display name (a digest of its requests) in batches.list and polls it: never paid twice."""
    record = BatchAsker._record

    def killed(self, entry):
        monkeypatch.setattr(BatchAsker, "_record", record)
        raise KeyboardInterrupt

    monkeypatch.setattr(BatchAsker, "_record", killed)
    with pytest.raises(KeyboardInterrupt):
        rerank(config(server))
    assert len(server.created) == 1 and not (tiny / "t" / "rerank" / batch.JOB_FILE).exists()
    m = rerank(config(server)).metrics
    assert len(server.created) == 1 and m["counts"]["ok"] == 4
    [job] = book(tiny)
    assert job["source"] == "adopted" and job["name"] == "batches/job1"


def test_ctrl_c_while_waiting_leaves_the_job_recorded_and_says_how_to_cancel(tiny, server, monkeypatch):
    server.states = ["BATCH_STATE_RUNNING"]

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt) as e:
        rerank(config(server, vlm_batch_wait_s=60))
    assert "stays recorded" in str(e.value) and "keeps running on the server" in str(e.value)
    assert "batches.cancel(name='batches/job1')" in str(e.value)
    assert book(tiny)[0]["status"] == "running"


@pytest.mark.parametrize("inline_mb", [20.0, 0.0], ids=["inline", "file"])
def test_the_key_and_planted_secrets_reach_no_file(tiny, server, monkeypatch, inline_mb):
    monkeypatch.setenv("VICI_PLANTED_TOKEN", PLANTED)
    server.script = ["echo_key"]  # an answer whose text repeats the key the client sent
    server.failure = f"quota project {PLANTED} rejected the job"
    server.next_states = [["BATCH_STATE_FAILED"]]
    with pytest.raises(RerankError) as e:
        rerank(config(server, vlm_batch_inline_mb=inline_mb))
    assert PLANTED not in str(e.value) and "[REDACTED]" in str(e.value)
    rerank(config(server, vlm_batch_inline_mb=inline_mb))
    reasons = [json.loads(x) for x in (tiny / "t" / "rerank" / "reasons.jsonl").read_text().splitlines()]
    assert any("[REDACTED]" in r["reason"] for r in reasons)
    assert VLM_KEY not in json.dumps(server.created)  # the key travels in a header only
    files = [p for p in (tiny / "t").rglob("*") if p.is_file()]
    assert any(p.name == batch.JOB_FILE for p in files)
    for p in files:
        assert VLM_KEY.encode() not in p.read_bytes() and PLANTED.encode() not in p.read_bytes(), p


@pytest.mark.parametrize("backend", ["openai", "kreciprocal"])
def test_batch_mode_needs_the_gemini_backend(tiny, server, backend):
    with pytest.raises(RerankError, match=f"vlm_mode: batch needs .*reranker: gemini.*not '{backend}'"):
        rerank(config(server, reranker=backend, vlm_base_url=server.url + "/v1", vlm_model="qwen2.5-vl"))


def test_the_runner_knows_the_pending_exception():
    assert runner.WAITING_ERRORS == {BatchPending.__name__}


def test_notebook_04_says_waiting_in_one_line_and_a_rerun_collects(tiny, server):
    """Through the runner: a job still running ends the run with status 'waiting' (not a failure); the same
    command later collects it and notebook 04 shows the batch price beside the interactive one."""
    from vici_utils.params import load

    cfg = load(None, {"run_name": "t", "reranker": "gemini", "vlm_base_url": server.url, "rerank_top_k": 5,
                      "vlm_rpm": 100000, "vlm_mode": "batch", "vlm_max_fallback_share": 1.0, "fusion": "weighted"})
    server.states = ["BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED"]
    lines = []
    manifest = runner.run(cfg, only=["04"], log=lines.append)
    [entry] = manifest["notebooks"]
    assert manifest["status"] == entry["status"] == runner.WAITING and "batches/job1" in entry["waiting"]
    assert json.loads((tiny / "t" / "run.json").read_text())["status"] == runner.WAITING
    assert any("waiting" in line and "JOB_STATE_RUNNING" in line for line in lines)
    nb = nbformat.read(tiny / "t" / "04_rerank.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0]["traceback"] == [entry["waiting"]]  # one line, no traceback

    manifest = runner.run(cfg, only=["04"], log=lines.append)
    assert manifest["status"] == "ok" and len(server.created) == 1
    nb = nbformat.read(tiny / "t" / "04_rerank.ipynb", as_version=4)
    shown = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "batch price, USD" in shown and "asked interactively" in shown
