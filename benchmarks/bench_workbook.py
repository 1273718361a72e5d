"""Wall time of the whole default workbook, as `make workbook` runs it, from an empty outputs folder (so world
generation counts), with the machine it ran on: CPU model, bf16 support, cores, load average before and after.

    python benchmarks/bench_workbook.py [--params params/default.yaml] [--set key=value ...] [--only 01,02]

Prints one line per notebook (from the run's manifest) and the total. Compare alternatives by running them one
after the other in the same session and reading the ratios, never absolute seconds across machines. The
measurement itself is vici_utils.headline.measure, which `python -m vici_utils headline` (make docs) also uses.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from vici_utils.headline import measure


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--only", metavar="01,02", help="run only these notebooks")
    ap.add_argument("--keep", action="store_true", help="keep the temporary outputs folder")
    args = ap.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="bench-workbook-"))
    r = measure(args.params, args.set, out, args.only)
    before, after = r["machine before"], r["machine after"]
    print(f"machine: {before['cpu']}; bf16: {before['bf16 units']}; {before['cores']} cores")
    print(f"load average before: {before['load average (1, 5, 15 min)']}; after: {after['load average (1, 5, 15 min)']}")
    print(f"command: {r['command']}  (code version {r['code']})")
    for name, seconds, status in r["notebooks"]:
        print(f"  {name:<28} {seconds:7.1f} s  {status}")
    if r["training_s"] is not None:
        print(f"  (training clock in train_log.csv: {r['training_s']:.1f} s)")
    print(f"whole workbook: {r['wall_s']:.1f} s wall, status {r['status']}")
    if r["metrics"]:
        m = r["metrics"]
        print(f"test R@1 {m['R@1']:.2f}  R@5 {m['R@5']:.2f}  R@10 {m['R@10']:.2f}  AP {m['AP']:.2f}")
    if r["returncode"]:
        print(r["output_tail"])
    if args.keep:
        print(f"outputs kept in {out}")
    else:
        shutil.rmtree(out, ignore_errors=True)
    return r["returncode"]


if __name__ == "__main__":
    sys.exit(main())
