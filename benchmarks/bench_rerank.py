"""Speed of stage 2 (prints figures; never a timed test).

1. Throughput of the VLM path: 100 queries, top 10, against a loopback server (its own process) that answers
   every request after 1 s, at vlm_concurrency 16 with no rate limit. The client does everything a real run
   does: 384-px JPEG re-encoding of 512-px images (--image-size 0: the original files, as params/paper.yaml
   sends them), the real google-genai / httpx clients, answer checks, the fsynced answer store.
   Goal: <= 10 s (the ideal is 100 / 16 x 1 s = 6.25 s).
2. A rerun of the same job: every answer from the store, no request.
3. k-reciprocal re-ranking on University-1652's shape (2,579 queries x 951 gallery, dim 1024). Goal: seconds.

    python benchmarks/bench_rerank.py [--queries 100] [--concurrency 16] [--latency 1.0] [--image-size 384]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_vlm_servers import FakeVLMServer  # noqa: E402
from vici_utils.params import validate  # noqa: E402
from vici_utils.rerank import rerank  # noqa: E402
from vici_utils.rerank.kreciprocal import kreciprocal_distances  # noqa: E402


def serve(latency: float, urls, stop) -> None:
    with FakeVLMServer(delay_s=latency, ranker=lambda images: list(range(len(images) - 1, 0, -1))) as server:
        urls.put(server.url)
        stop.wait()


def write_features(root: Path, n_queries: int, n_gallery: int, dim: int = 64, seed: int = 0) -> None:
    """A run folder with features.npz over 512-px photo-like JPEGs (blurred noise: realistic JPEG sizes)."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)

    def photo(path):
        noise = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((512, 512)).filter(ImageFilter.GaussianBlur(1.5)).save(path, quality=92)
        return str(path)

    def unit(n):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    g_ids = [f"{i:04d}" for i in range(n_gallery)]
    q_ids = [g_ids[i % n_gallery] for i in range(n_queries)]
    out = root / "bench" / "retrieval"
    out.mkdir(parents=True)
    np.savez(out / "features.npz", query_features=unit(n_queries), query_ids=np.array(q_ids),
             query_names=np.array([f"{b}/q{i}.jpg" for i, b in enumerate(q_ids)]),
             query_paths=np.array([photo(images / f"q{i}.jpg") for i in range(n_queries)]),
             gallery_features=unit(n_gallery), gallery_ids=np.array(g_ids), gallery_names=np.array(g_ids),
             gallery_paths=np.array([photo(images / f"g{i}.jpg") for i in range(n_gallery)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--gallery", type=int, default=150)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--image-size", type=int, default=384, help="vlm_image_size; 0 = the original files")
    args = ap.parse_args()

    workdir = tempfile.TemporaryDirectory(prefix="bench_rerank_")
    tmp = Path(workdir.name)
    os.environ["VICI_OUTPUTS"] = str(tmp)
    os.environ.setdefault("GEMINI_API_KEY", "bench-key")
    write_features(tmp, args.queries, args.gallery)
    ideal = np.ceil(args.queries / args.concurrency) * args.latency

    urls, stop = mp.Queue(), mp.Event()
    server = mp.Process(target=serve, args=(args.latency, urls, stop), daemon=True)
    server.start()
    url = urls.get(timeout=30)
    t = time.perf_counter()
    import google.genai  # noqa: F401  (a one-off per process, not part of the throughput)
    print(f"one-off: importing google-genai took {time.perf_counter() - t:.2f} s (not counted below)")
    try:
        for backend, base, model in (("gemini", url, "gemini-2.5-flash"), ("openai", url + "/v1", "local-vlm")):
            cfg = validate({"run_name": "bench", "reranker": backend, "vlm_base_url": base, "vlm_model": model,
                            "vlm_concurrency": args.concurrency, "vlm_rpm": 1_000_000, "rerank_top_k": 10,
                            "vlm_image_size": args.image_size or None})
            t, cpu = time.perf_counter(), time.process_time()
            result = rerank(cfg, show_progress=False)
            elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
            counts = result.metrics["counts"]
            assert counts["sent"] == args.queries and counts["ok"] == args.queries, counts
            print(f"{backend:7s} {args.queries} queries x top 10, server latency {args.latency:g} s, concurrency "
                  f"{args.concurrency}: {elapsed:.2f} s ({args.queries / elapsed:.1f} queries/s; ideal {ideal:.2f} s; "
                  f"goal <= 10 s: {'met' if elapsed <= 10 else 'MISSED'}; client CPU {cpu:.1f} s, "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
            t = time.perf_counter()
            again = rerank(cfg, show_progress=False)
            assert again.metrics["counts"]["sent"] == 0
            print(f"{backend:7s} rerun from the answer store: {time.perf_counter() - t:.2f} s, 0 requests")
    finally:
        stop.set()
        server.join(timeout=10)
        workdir.cleanup()

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(951, 1024)).astype(np.float32)
    q = centres[rng.integers(0, 701, 2579)] + 1.2 * rng.normal(size=(2579, 1024)).astype(np.float32)
    g = centres + 0.8 * rng.normal(size=(951, 1024)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    t = time.perf_counter()
    kreciprocal_distances(q, g, 20, 6, 0.3)
    print(f"kreciprocal 2,579 x 951 (dim 1024, k1=20, k2=6): {time.perf_counter() - t:.2f} s on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
