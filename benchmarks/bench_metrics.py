"""Speed of the retrieval metric and of faiss search (prints figures; never a timed test).

1. The official street -> satellite metric on University-1652's shape (2,579 queries of 701 buildings against a
   951-image gallery: the 701 buildings plus 250 distractors), on one CPU core, vectorised (vici_utils.metrics)
   against a per-query loop in the style of VICI's evaluator (metrics.evaluate_loop: per query a torch
   product, argsort, good and junk by argwhere, CMC and AP), timed in the same run. Goal: <= 50 ms and >= 100x the loop.
2. Exact faiss search (IndexFlatIP) over a synthetic 1M x 1024 gallery on every core (--threads), in queries per second, and
   optionally HNSW (approximate) on a smaller gallery, with its recall against exact search.

    python benchmarks/bench_metrics.py [--dim 512] [--gallery 1000000] [--queries 128] [--hnsw 20000]
"""
from __future__ import annotations

import os

# Thread pools are sized when numpy / torch / faiss load, and OpenBLAS cannot be resized afterwards: the metric
# runs here on one thread, and the search part in a child process started with VICI_BENCH_THREADS set.
THREADS = int(os.environ.get("VICI_BENCH_THREADS", "1"))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import argparse
import subprocess
import sys
import time

import faiss
import numpy as np
import torch

from vici_utils import metrics

torch.set_num_threads(THREADS)
faiss.omp_set_num_threads(THREADS)


def best_of(fn, repeats: int) -> float:
    """Fastest wall time of `repeats` calls, in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def university1652_like(dim: int, seed: int = 0):
    """Features and ids shaped like the street -> satellite test: noisy queries of their building's satellite."""
    rng = np.random.default_rng(seed)
    buildings = [f"{i:04d}" for i in range(951)]
    gallery = normalised(rng.standard_normal((951, dim), dtype=np.float32))
    owner = np.sort(np.concatenate([np.arange(701), rng.integers(0, 701, 2579 - 701)]))  # every building asked
    queries = normalised(gallery[owner] + 6.0 * rng.standard_normal((2579, dim), dtype=np.float32) / np.sqrt(dim))
    return queries.astype(np.float32), gallery, [buildings[i] for i in owner], buildings


def bench_metric(dim: int) -> None:
    q, g, qid, gid = university1652_like(dim)
    scores = q @ g.T
    print(f"metric: {len(q)} queries x {len(g)} gallery ({len(set(qid))} query buildings + "
          f"{len(g) - len(set(qid))} distractors), dim {dim}, 1 thread")

    m = metrics.evaluate(q, g, qid, gid)
    cmc, ap = metrics.evaluate_loop(lambda i: g @ q[i], qid, gid)
    assert np.allclose(m["cmc"], cmc) and abs(m["AP"] - ap) < 1e-6, "vectorised and loop metrics disagree"
    print(f"  R@1 {m['R@1']:.2f}  R@5 {m['R@5']:.2f}  R@10 {m['R@10']:.2f}  AP {m['AP']:.2f} (both agree)")

    qt, gt = torch.from_numpy(q), torch.from_numpy(g)
    rows = [  # the loop scores a query as VICI's evaluator does: gallery @ query in torch
        ("from features (scores + metric)", lambda: metrics.evaluate(q, g, qid, gid),
         lambda: metrics.evaluate_loop(lambda i: (gt @ qt[i].unsqueeze(-1)).squeeze(1), qid, gid)),
        ("from the score matrix (metric alone)", lambda: metrics.evaluate_scores(scores, qid, gid),
         lambda: metrics.evaluate_loop(lambda i: scores[i], qid, gid)),
    ]
    for name, fast, slow in rows:
        t_fast, t_slow = best_of(fast, 25), best_of(slow, 3)  # fastest of many: the least disturbed run
        goal = "met" if t_fast <= 0.050 and t_slow / t_fast >= 100 else "NOT met"
        print(f"  {name:38s} vectorised {t_fast * 1e3:7.1f} ms   per-query loop {t_slow * 1e3:8.1f} ms   "
              f"ratio {t_slow / t_fast:6.1f}x   (goal <= 50 ms and >= 100x: {goal})")
    t_rank = best_of(lambda: metrics.evaluate_ranking(metrics.full_ranking(q, g), qid, gid), 3)
    print(f"  {'full_ranking + evaluate_ranking':38s} vectorised {t_rank * 1e3:7.1f} ms (sorts every row)")


def synthetic_gallery(n: int, dim: int, seed: int = 1, chunk: int = 1 << 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        out[s:s + chunk] = normalised(rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32))
    return out


def planted_queries(gallery: np.ndarray, picks: np.ndarray, rng) -> np.ndarray:
    """Queries near known gallery rows (noise of norm ~0.5), so the true neighbour is known."""
    noise = 0.5 * rng.standard_normal((len(picks), gallery.shape[1]), dtype=np.float32) / np.sqrt(gallery.shape[1])
    return normalised(gallery[picks] + noise).astype(np.float32)


def build_and_search(gallery: np.ndarray, queries: np.ndarray, kind: str):
    """(top-10 indices, seconds to build the index, seconds to search it)."""
    t = time.perf_counter()
    index = metrics.build_index(gallery, kind)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    _, found = metrics.search(queries, index, 10)
    return found, t_build, time.perf_counter() - t


def bench_search(n: int, dim: int, n_queries: int, hnsw: int) -> None:
    print(f"\nfaiss search: gallery {n:,} x {dim} float32 ({n * dim * 4 / 2**30:.1f} GiB), {n_queries} queries, "
          f"top-10, {THREADS} threads")
    gallery = synthetic_gallery(n, dim)
    rng = np.random.default_rng(2)
    picks = rng.integers(0, n, n_queries)
    queries = planted_queries(gallery, picks, rng)
    exact, t_build, t_search = build_and_search(gallery, queries, "flat")
    print(f"  faiss flat (exact): add {t_build:.1f} s, search {t_search:.2f} s = {n_queries / t_search:,.1f} queries/s, "
          f"true neighbour found first {np.mean(exact[:, 0] == picks) * 100:.0f} %")
    g, q = torch.from_numpy(gallery), torch.from_numpy(queries)
    t = time.perf_counter()
    best = torch.cat([torch.topk(q @ g[s:s + 65536].T, 10, dim=1).values for s in range(0, n, 65536)], 1)
    torch.topk(best, 10, dim=1)
    t_torch = time.perf_counter() - t
    print(f"  for comparison, torch matmul + top-k in blocks: {n_queries / t_torch:,.1f} queries/s")
    if hnsw:
        sub = gallery[:hnsw]
        hp = rng.integers(0, hnsw, n_queries)
        hq = planted_queries(sub, hp, rng)
        _, truth = metrics.search(hq, sub, 10)
        approx, t_build, t_search = build_and_search(sub, hq, "hnsw")
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, truth)])
        print(f"  hnsw (M=32) on {hnsw:,}: build {t_build:.1f} s, search {len(hq) / t_search:,.0f} queries/s, "
              f"planted neighbour found first {np.mean(approx[:, 0] == hp) * 100:.0f} %, recall@10 vs exact "
              f"{recall * 100:.1f} % (random 1024-d data is HNSW's worst case)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=512, help="feature size for the metric (resnet10t: 512)")
    ap.add_argument("--gallery", type=int, default=1_000_000)
    ap.add_argument("--search-dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=128)
    ap.add_argument("--hnsw", type=int, default=20_000, help="HNSW gallery size (0 = skip; building is slow)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for the search part")
    ap.add_argument("--search-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.search_only:
        bench_search(args.gallery, args.search_dim, args.queries, args.hnsw)
        return
    bench_metric(args.dim)
    if args.gallery:
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--search-only", "--gallery", str(args.gallery), "--search-dim",
                        str(args.search_dim), "--queries", str(args.queries), "--hnsw", str(args.hnsw)],
                       env={**os.environ, "VICI_BENCH_THREADS": str(args.threads)}, check=True)


if __name__ == "__main__":
    main()
