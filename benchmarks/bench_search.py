"""Search past University-1652's 951 tiles: flat, HNSW and IVF-PQ with exact re-scoring, side by side in one run
(prints figures; never a timed test).

The gallery is SYNTHETIC, with cluster structure: 1,024-dimensional unit vectors around 2,000 random centres (so
neighbours crowd as real tiles of similar places do), stored as a float16 memory-mapped file, as the sharded
embedding writes it. 2,579 queries (University-1652's count) are noisy copies of random gallery tiles, noisy enough
that exact search gets only part of the top-1s right. For each index: build time, index memory (its serialised
size), queries per second on all cores, agreement of the top 10 with exact search (the same 10 tiles in the same
order), and how many of the top-1s exact search gets right the index keeps. Then (`--pipeline`) a separate process
runs what a run does with a gallery of precomputed features (IVF-PQ search with re-scoring and the blockwise
official metric) and reports its peak RSS.

    python benchmarks/bench_search.py --size 1000000 [--queries 2579] [--dim 1024] [--skip-hnsw] [--pipeline]

Exact search's queries/s are timed on --exact-sample queries (its cost is linear in them); its top 10s for every
query come from the blockwise search that the metric uses. At sizes below a million, the script prints what the
measured figures extrapolate to at a million tiles (build and exact search linear in the gallery; index memory
linear; IVF-PQ's queries/s roughly constant, nprobe lists of a gallery sqrt(n)/4 times as many per list).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from vici_utils import metrics, search


def cpu_line() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                 platform.processor())
    flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    return (f"{model}, {os.cpu_count()} cores{', avx512_bf16' if 'avx512_bf16' in flags else ''}; "
            f"load average {os.getloadavg()[0]:.1f} (shared with other agents' work)")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def synthetic(folder: Path, n: int, nq: int, dim: int, seed: int = 0):
    """float16 gallery memmap [n, dim] written a block at a time, float32 queries [nq, dim], the tile each
    query was made from."""
    path = folder / f"gallery-{n}x{dim}.f16.npy"
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    if not path.is_file():
        g = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
        for r0 in range(0, n, 1 << 15):
            r1 = min(r0 + (1 << 15), n)
            x = centres[rng.integers(0, len(centres), r1 - r0)] + 0.5 * rng.standard_normal((r1 - r0, dim),
                                                                                             dtype=np.float32)
            g[r0:r1] = x / np.linalg.norm(x, axis=1, keepdims=True)
        g.flush()
        del g
    g = np.load(path, mmap_mode="r")
    qrng = np.random.default_rng(seed + 1)
    truth = np.sort(qrng.choice(n, nq, replace=False))
    q = np.asarray(g[truth], np.float32) + 0.5 / np.sqrt(dim) * qrng.standard_normal((nq, dim), dtype=np.float32)
    return g, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), truth


def exact_top10(q, g, block: int = 1 << 16):
    """Exact top 10 (ties by lower index) over gallery blocks: what a flat index returns, without 4 bytes x n x d."""
    best_s = np.full((len(q), 10), -np.inf, np.float32)
    best_i = np.zeros((len(q), 10), np.int64)
    for c0 in range(0, len(g), block):
        s = q @ np.asarray(g[c0:c0 + block], np.float32).T
        top = np.argpartition(-s, 9, axis=1)[:, :10]
        cs = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        ci = np.concatenate([best_i, top + c0], 1)
        order = np.lexsort((ci, -cs), axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(cs, order, 1), np.take_along_axis(ci, order, 1)
    return best_s, best_i


def agreement(found, exact, truth) -> tuple[float, float, int]:
    """Share of top-10 lists equal to exact's (same tiles, same order; the mean share of exact's top-10 tiles
    found is printed beside it), share of exact's right top-1s kept, and how many exact got right."""
    same = float(np.mean((found == exact).all(1)) * 100)
    overlap = np.mean([len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist())]) * 10
    print(f"  top-10 tiles in common with exact: {overlap:.1f} %")
    right = exact[:, 0] == truth
    kept = float(np.mean(found[right, 0] == truth[right]) * 100) if right.any() else float("nan")
    return same, kept, int(right.sum())


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def compare(args) -> None:
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    (g, q, truth), t_gen = timed(lambda: synthetic(folder, args.size, args.queries, args.dim))
    n, dim = g.shape
    print(f"CPU: {cpu_line()}")
    print(f"gallery: {n:,} x {dim} SYNTHETIC (2,000 clusters; float16 memmap, {g.nbytes / 2**30:.2f} GiB), "
          f"{len(q):,} queries; prepared in {t_gen:.0f} s")
    (ex_s, ex_i), t_exact_all = timed(lambda: exact_top10(q, g))
    print(f"exact top 10 of every query (blockwise, float16 gallery): {t_exact_all:.1f} s")
    flat_bytes = n * dim * 4
    rows = []

    def run(name, make, k_search):
        index, t_build = timed(make)
        mem = len(faiss.serialize_index(index)) if index is not None else flat_bytes
        (s, i), t_search = timed(k_search(index))
        same, kept, n_right = agreement(i, ex_i, truth)
        rows.append((name, t_build, mem, len(q) / t_search, same, kept))
        return n_right

    sample = q[:args.exact_sample]
    flat = faiss.IndexFlatIP(dim)
    for r0 in range(0, n, search.ROWS):
        flat.add(np.asarray(g[r0:r0 + search.ROWS], np.float32))
    _, t_flat = timed(lambda: flat.search(sample, 10))
    qps_flat = len(sample) / t_flat
    rows.append(("flat (exact, float32)", 0.0, flat_bytes, qps_flat, 100.0, 100.0))
    del flat
    if not args.skip_hnsw:
        hnsw = {}

        def hnsw_search(ef):
            def go():
                hnsw["index"].hnsw.efSearch = ef
                return hnsw["index"].search(q, 10)
            return go

        ef0, *more_ef = args.ef_search
        build_hnsw = lambda: hnsw.setdefault("index", search.build(g, f"HNSW{args.hnsw_m}"))  # noqa: E731
        run(f"HNSW{args.hnsw_m}, efSearch {ef0}", build_hnsw, lambda idx: hnsw_search(ef0))
        t_build_hnsw, mem_hnsw = rows[-1][1], rows[-1][2]
        for ef in more_ef:
            (_, i), t = timed(hnsw_search(ef))
            same, kept, _ = agreement(i, ex_i, truth)
            rows.append((f"HNSW{args.hnsw_m}, efSearch {ef}", t_build_hnsw, mem_hnsw, len(q) / t, same, kept))
        del hnsw["index"]
    nlist = args.nlist or (4096 if n >= 500_000 else 1 << int(np.log2(max(4 * np.sqrt(n), 16))))
    spec = f"IVF{nlist},PQ{args.pq}"
    ivf = {}

    def build_ivf():
        ivf["index"] = search.build(g, spec)
        return ivf["index"]

    def ivf_search(rescore_k, nprobe=args.nprobe[0]):
        def go():
            search.set_nprobe(ivf["index"], nprobe)
            _, cand = ivf["index"].search(q, max(rescore_k, 10))
            return search.rescore(q, g, cand, 10) if rescore_k > 10 else (None, cand)
        return go

    n_right = run(f"{spec}, nprobe {args.nprobe[0]}, no re-scoring", build_ivf, lambda idx: ivf_search(10))
    t_build_ivf, mem_ivf = rows[-1][1], rows[-1][2]
    for nprobe in args.nprobe:
        for kk in args.rescore:
            (_, i), t = timed(ivf_search(kk, nprobe))
            same, kept, _ = agreement(i, ex_i, truth)
            rows.append((f"{spec}, nprobe {nprobe}, re-score top {kk}", t_build_ivf, mem_ivf, len(q) / t, same,
                         kept))
    print(f"index: {spec}, trained on {search.train_size(faiss.index_factory(dim, spec), n):,} sampled tiles; "
          f"exact gets {n_right} of {len(q)} top-1s right")
    print(f"{'index':44s} {'build s':>8s} {'memory MiB':>11s} {'x flat mem':>10s} {'queries/s':>10s} "
          f"{'x flat q/s':>10s} {'top-10 = exact %':>16s} {'right top-1 kept %':>18s}")
    for name, tb, mem, qps, same, kept in rows:
        print(f"{name:44s} {tb:8.1f} {mem / 2**20:11.1f} {mem / flat_bytes:10.4f} {qps:10.1f} {qps / qps_flat:10.1f} "
              f"{same:16.2f} {kept:18.2f}")
    if n < 1_000_000:
        f = 1_000_000 / n
        print(f"extrapolated to 1,000,000 tiles (x{f:.1f}): flat float32 {4 * dim * 1e6 / 2**30:.1f} GiB and "
              f"{qps_flat / f:.1f} queries/s; {spec.replace(str(nlist), '4096')} index "
              f"~{mem_ivf * f / 2**20:.0f} MiB, build ~{t_build_ivf * f / 60:.0f} min (training sample capped at "
              f"262,144 tiles, so less)")
    print(f"peak RSS of this process: {peak_rss_gb():.2f} GiB")


def pipeline(args) -> None:
    """What a run does with precomputed features: IVF-PQ top 10 with re-scoring, then the blockwise metric."""
    g, q, truth = synthetic(Path(args.folder), args.size, args.queries, args.dim)
    gids = np.arange(len(g)).astype(str)
    spec = f"IVF{args.nlist or 4096},PQ{args.pq}"
    (_, i), t_s = timed(lambda: search.top_k(q, g, 10, spec, nprobe=args.nprobe[-1], rescore_k=args.rescore[-1],
                                             folder=Path(args.folder)))
    m, t_m = timed(lambda: metrics.evaluate(q, g, gids[truth].tolist(), gids.tolist()))
    print(f"pipeline on {len(g):,} x {g.shape[1]} float16 memmap: {spec} search + re-scoring {t_s:.0f} s (index "
          f"built or read), blockwise official metric {t_m:.0f} s (R@1 {m['R@1']:.1f}, AP {m['AP']:.1f}); "
          f"peak RSS {peak_rss_gb():.2f} GiB; {cpu_line()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=2579)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default: 4096 from 500k tiles, else ~4 sqrt n)")
    ap.add_argument("--pq", type=int, default=64, help="PQ bytes per tile")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--rescore", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64], help="HNSW search breadths, one row each")
    ap.add_argument("--skip-hnsw", action="store_true")
    ap.add_argument("--exact-sample", type=int, default=256)
    ap.add_argument("--pipeline", action="store_true", help="also measure a run's peak RSS in a separate process")
    ap.add_argument("--pipeline-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "vici_bench_search"))
    args = ap.parse_args()
    if args.pipeline_only:
        return pipeline(args)
    compare(args)
    if args.pipeline:
        subprocess.run([sys.executable, __file__, "--pipeline-only", *sys.argv[1:]], check=True)


if __name__ == "__main__":
    main()
