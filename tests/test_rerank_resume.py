"""Kill a re-ranking run half-way and resume it: no stored answer is asked for again, only in-flight ones are lost."""
import json
import os
import subprocess
import sys
import time

from tests.fake_vlm_servers import FakeVLMServer, write_tiny_run
from vici_utils.params import validate
from vici_utils.paths import REPO_ROOT
from vici_utils.rerank import RetryPolicy, rerank

KEY = "resume-key-SECRET-51d2"
CHILD = """
import json, sys
from vici_utils.params import validate
from vici_utils.rerank import RetryPolicy, rerank
cfg = validate(json.loads(sys.argv[1]))
rerank(cfg, retry=RetryPolicy(cfg.vlm_max_retries, base_s=0.002), show_progress=False)
"""


def _stored(cache):
    ok = 0
    for line in cache.read_text().splitlines():
        try:
            ok += json.loads(line)["ok"]
        except ValueError:
            pass
    return ok


def test_kill_and_resume_sends_no_stored_request_again(outputs, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    write_tiny_run(outputs, "t", buildings=12, queries_per_building=2)
    cache = outputs / "t" / "rerank" / "cache.jsonl"
    with FakeVLMServer(delay_s=0.1) as server:
        raw = {"run_name": "t", "fusion": "weighted",
               "reranker": "gemini", "vlm_base_url": server.url, "rerank_top_k": 5,
               "vlm_concurrency": 2, "vlm_rpm": 100000, "vlm_max_retries": 2}
        env = {**os.environ, "VICI_OUTPUTS": str(outputs), "GEMINI_API_KEY": KEY, "VICI_HEADLESS": "1"}
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(raw)], cwd=REPO_ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline and not (cache.is_file() and _stored(cache) >= 6):
            time.sleep(0.02)
        child.kill()
        log = child.communicate()[0].decode()
        assert child.returncode == -9, f"the run should still have been going when killed:\n{log}"
        stored, asked_before = _stored(cache), len(server.seen)
        assert 6 <= stored < 24
        assert asked_before - stored <= 2, "a kill may lose only the requests in flight (vlm_concurrency)"
        with open(cache, "a") as f:
            f.write('{"key": "torn-by-the-kill", "ok": tru')

        cfg = validate(raw)
        result = rerank(cfg, retry=RetryPolicy(2, base_s=0.002), show_progress=False)
        resumed = server.seen[asked_before:]
        assert len(resumed) == 24 - stored, "every stored answer was reused, every other request sent once"
        assert len({s.fingerprint for s in resumed}) == len(resumed)
        counts = result.metrics["counts"]
        assert counts["cached"] == stored and counts["sent"] == 24 - stored and counts["ok"] == 24

        again = rerank(cfg, show_progress=False)  # a third run asks nothing at all
        assert len(server.seen) == asked_before + len(resumed) and again.metrics["counts"]["cached"] == 24
    for path in (outputs / "t").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
