"""Run the re-ranker against the loopback servers (tests/fake_vlm_servers.py) and read back what it wrote."""
from vici_utils.params import validate
from vici_utils.rerank import RetryPolicy, stage


RESULTS = ("answer_fused.txt", "answer_reranker.txt", "reasons.jsonl", "metrics.json", "cache.jsonl")


def config(backend, url, **kw):
    raw = {"run_name": "t", "fusion": "weighted",
           "reranker": backend, "vlm_base_url": url if backend == "gemini" else url + "/v1",
           "rerank_top_k": 5, "vlm_rpm": 100000, "vlm_concurrency": 1, "vlm_timeout_s": 5.0, "vlm_max_retries": 2}
    if backend == "openai":
        raw["vlm_model"] = "qwen2.5-vl"
    return validate({**raw, **kw})


def rerank(cfg):
    return stage.rerank(cfg, retry=RetryPolicy(cfg.vlm_max_retries, base_s=0.002, max_s=0.02), show_progress=False)


def rerank_dir(outputs):
    return outputs / "t" / "rerank"


def snapshot(outputs):
    return {name: (rerank_dir(outputs) / name).read_bytes() for name in RESULTS}
