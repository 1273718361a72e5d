"""Wall time of the whole default workbook, as `make workbook` runs it, from an empty outputs folder (so world
generation counts), with the machine it ran on: CPU model, bf16 support, cores, load average before and after.

    python benchmarks/bench_workbook.py [--params params/default.yaml] [--set key=value ...] [--keep]

Prints one line per notebook (from the run's manifest) and the total. Compare alternatives by running them one
after the other in the same session and reading the ratios, never absolute seconds across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def machine() -> dict:
    """CPU model, whether it has bf16 units (AVX512-BF16 or AMX), cores and the current load."""
    model, flags = platform.processor() or "?", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return {"cpu": model, "bf16 units": ", ".join(bf16) or "none (fp32)",
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load average (1, 5, 15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary outputs folder")
    args = ap.parse_args(argv)
    before = machine()
    out = Path(tempfile.mkdtemp(prefix="bench-workbook-"))
    env = {**os.environ, "VICI_OUTPUTS": str(out)}
    cmd = [sys.executable, "-m", "vici_utils", "run", args.params, "--set", "run_name=bench"]
    for item in args.set:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = machine()
    try:
        manifest = json.loads((out / "bench" / "run.json").read_text())
    except OSError:
        manifest = {"notebooks": [], "status": "no manifest"}
    print(f"machine: {before['cpu']}; bf16: {before['bf16 units']}; {before['cores']} cores")
    print(f"load average before: {before['load average (1, 5, 15 min)']}; after: "
          f"{after['load average (1, 5, 15 min)']}")
    print(f"command: {' '.join(cmd[1:])}")
    for nb in manifest["notebooks"]:
        print(f"  {nb['name']:<28} {nb.get('duration_s') or 0:7.1f} s  {nb['status']}")
    train_log = out / "bench" / "train" / "train_log.csv"
    if train_log.is_file():
        last = train_log.read_text().strip().splitlines()[-1].split(",")
        print(f"  (training clock in train_log.csv: {float(last[-1]):.1f} s)")
    print(f"whole workbook: {wall:.1f} s wall, status {manifest.get('status')} (goal: <= 600 s on 2 cores)")
    metrics = out / "bench" / "retrieval" / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        print(f"test R@1 {m['R@1']:.2f}  R@5 {m['R@5']:.2f}  R@10 {m['R@10']:.2f}  AP {m['AP']:.2f}")
    if done.returncode:
        print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
    if args.keep:
        print(f"outputs kept in {out}")
    else:
        shutil.rmtree(out, ignore_errors=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
