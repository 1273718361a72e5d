"""Sizes and costs of batch re-ranking (prints figures; sizes are counted, not timed).

A miniature run (20 queries x top 10 over 512-px photo-like JPEGs, as bench_rerank.py makes them) re-ranked
against the loopback Batch + Files API (tests/fake_batch_server.py) with the real google-genai client, three
ways side by side: interactive, one batch job inline, one batch job as a JSONL file with each distinct image
uploaded once. For each: requests, bytes per query as the job carries them (inline: the REST request with
its images base64-encoded; file: the JSONL line, images referenced by URI), images uploaded, tokens, the cost
and what the same tokens cost interactively. Then what a job of University-1652's 2,579 queries would weigh.

    python benchmarks/bench_batch.py [--queries 20] [--image-size 384]   # --image-size 0: the original files
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rerank import write_features  # noqa: E402
from tests.fake_batch_server import FakeBatchServer  # noqa: E402
from vici_utils.params import validate  # noqa: E402
from vici_utils.rerank import rerank  # noqa: E402

U1652_QUERIES, INLINE_LIMIT_MB, FILE_LIMIT_GB = 2579, 20, 2


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--gallery", type=int, default=60)
    ap.add_argument("--image-size", type=int, default=384, help="vlm_image_size; 0 = the original files")
    args = ap.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared machine); "
          "the figures below are sizes and token counts, not times")
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp, FakeBatchServer() as server:
        os.environ["VICI_OUTPUTS"] = tmp
        os.environ.setdefault("GEMINI_API_KEY", "bench-key")
        write_features(Path(tmp), args.queries, args.gallery)
        rows = {}
        for label, mode, inline_mb in (("interactive", "interactive", 20.0), ("batch inline", "batch", 1e6),
                                       ("batch file", "batch", 0.0)):
            run = label.replace(" ", "_")  # a run folder each: each way asks everything afresh
            shutil.copytree(Path(tmp, "bench", "retrieval"), Path(tmp, run, "retrieval"))
            cfg = validate({"run_name": run, "reranker": "gemini", "vlm_base_url": server.url,
                            "vlm_rpm": 1_000_000, "vlm_concurrency": 4, "rerank_top_k": 10, "vlm_mode": mode,
                            "vlm_batch_inline_mb": inline_mb, "vlm_image_size": args.image_size or None})
            m = rerank(cfg, show_progress=False).metrics
            job = (m.get("batch_jobs") or [{}])[-1]
            rows[label] = m
            per_query = job.get("request_bytes_per_query")
            print(f"{label:12s}: {m['counts']['requests']} requests"
                  + (f" in {len(m['batch_jobs'])} job(s), {per_query:,} bytes/query ({job['source']}), "
                     f"{job['images_uploaded']} images uploaded" if job else "")
                  + f"; tokens {dict(m['tokens'])}; cost USD {m['cost_usd']:.5f} "
                  f"(interactive price: {m['cost_interactive_usd']:.5f}; {m['price_per_mtok']['source']})")
            if job:
                whole = per_query * U1652_QUERIES
                print(f"{'':14s}University-1652 ({U1652_QUERIES:,} queries, one order each): {whole / 1e6:,.1f} MB "
                      f"(inline limit {INLINE_LIMIT_MB} MB, file limit {FILE_LIMIT_GB} GB)")
        same = {k: v for k, v in rows["batch file"].items() if k.startswith("R@") or k in ("reranker", "weighted")}
        assert same == {k: v for k, v in rows["interactive"].items() if k in same}, "batch and interactive differ"
        ratio = rows["batch file"]["cost_usd"] / rows["interactive"]["cost_usd"]
        print(f"batch / interactive cost: {ratio:.2f}; metrics of the three runs equal")


if __name__ == "__main__":
    main()
