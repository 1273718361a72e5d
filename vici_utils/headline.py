"""The README's headline run and the rendered copy, from one measured run of the current code:

    python -m vici_utils headline [--params params/default.yaml] [--set key=value ...] [--only 01,02]
                                  [--readme README.md] [--rendered docs/rendered]

runs the workbook from an empty outputs folder (so world generation counts), timed, with the machine it ran on
(CPU model, bf16 units, cores, load average before and after) and the code version (git commit); writes the
README's headline paragraph between HEADLINE_START and HEADLINE_END; renders the executed notebooks to
docs/rendered/ as small HTML pages; and records in docs/rendered/sources.json a hash of each notebook source
that made them, so a test can tell when the rendered copy is older than the notebooks. `make docs` runs it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .paths import NOTEBOOKS_DIR, REPO_ROOT

HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"
SOURCES = "sources.json"
RUN_NAME = "headline"


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


def notebook_hashes(folder: Path = NOTEBOOKS_DIR) -> dict[str, str]:
    """sha256 of each numbered notebook's source file."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("[0-9][0-9]_*.ipynb"))}


def code_version() -> str:
    """The git commit, with '+ uncommitted changes' when the working tree differs from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def measure(params: str, sets: list[str], outputs: Path, only: Optional[str] = None) -> dict:
    """Run the workbook into `outputs` (run RUN_NAME) with `python -m vici_utils run`, timed; what it measured."""
    before = machine()
    cmd = [sys.executable, "-m", "vici_utils", "run", params, "--set", f"run_name={RUN_NAME}"]
    for item in sets:
        cmd += ["--set", item]
    if only:
        cmd += ["--only", only]
    env = {**os.environ, "VICI_OUTPUTS": str(outputs), "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    folder = outputs / RUN_NAME
    try:
        manifest = json.loads((folder / "run.json").read_text())
    except OSError:
        manifest = {"notebooks": [], "status": "no manifest"}
    metrics_path = folder / "retrieval" / "metrics.json"
    log = folder / "train" / "train_log.csv"
    return {"machine before": before, "machine after": machine(), "wall_s": wall, "command": " ".join(cmd[1:]),
            "status": manifest.get("status"), "returncode": done.returncode, "folder": folder,
            "notebooks": [(n["name"], n.get("duration_s") or 0.0, n["status"]) for n in manifest["notebooks"]],
            "training_s": float(log.read_text().strip().splitlines()[-1].split(",")[-1]) if log.is_file() else None,
            "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else None,
            "code": code_version(), "date": dt.date.today().isoformat(), "params": params, "sets": sets,
            "output_tail": (done.stdout[-2000:] + "\n" + done.stderr[-2000:]).strip()}


def paragraph(r: dict) -> str:
    """The README's headline paragraph for a measured run."""
    m0, m1 = r["machine before"], r["machine after"]
    units = m0["bf16 units"]
    bf16 = f"{units}: bf16 autocast on" if "none" not in units else "no bf16 units, so fp32"
    what = f"`{r['params']}`" + "".join(f" `--set {s}`" for s in r["sets"])
    parts = ", ".join(f"notebook {name[:2]} {s:.0f} s" for name, s, _ in r["notebooks"])
    text = (f"Measured by `python -m vici_utils headline` on {r['date']} (code version {r['code']}): the workbook "
            f"on {what}, from an empty outputs folder, took **{r['wall_s']:.0f} s** on {m0['cores']} cores of an "
            f"{m0['cpu']} ({bf16}), load average {m0['load average (1, 5, 15 min)'].split()[0]} "
            f"before and {m1['load average (1, 5, 15 min)'].split()[0]} after ({parts}")
    text += f"; training {r['training_s']:.0f} s)." if r["training_s"] is not None else ")."
    m = r["metrics"]
    if m:
        text += (f" Test R@1 {m['R@1']:.2f} %, R@5 {m['R@5']:.2f} %, R@10 {m['R@10']:.2f} %, AP {m['AP']:.2f} over "
                 f"{m['n_query']} queries and a {m['n_gallery']}-tile gallery (chance R@1 {100 / m['n_gallery']:.2f} %).")
    return text + " `docs/rendered/` shows this run."


def write_readme(readme: Path, text: str) -> None:
    """Put `text` between the headline markers of the README."""
    old = readme.read_text()
    pattern = re.compile(re.escape(HEADLINE_START) + r".*?" + re.escape(HEADLINE_END), re.S)
    if not pattern.search(old):
        raise ValueError(f"{readme}: no {HEADLINE_START} ... {HEADLINE_END} markers to write the headline between")
    readme.write_text(pattern.sub(lambda _: f"{HEADLINE_START}\n{text}\n{HEADLINE_END}", old))


def write_rendered(run_folder: Path, out_dir: Path, record: dict) -> list[Path]:
    """The executed notebooks as HTML pages in out_dir (older pages removed) and sources.json: which notebook
    sources made them, and the run."""
    from .rendered import render

    for old in out_dir.glob("*.html"):
        old.unlink()
    pages = render(sorted(run_folder.glob("[0-9][0-9]_*.ipynb")), out_dir)
    (out_dir / SOURCES).write_text(json.dumps(
        {"notebooks": {n: h for n, h in notebook_hashes().items() if (out_dir / (Path(n).stem + ".html")).is_file()},
         "code": record["code"], "date": record["date"], "command": "python -m vici_utils headline",
         "params": record["params"], "sets": record["sets"]}, indent=1) + "\n")
    return pages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vici_utils headline", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--only", metavar="01,02", help="run only these notebooks")
    ap.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    ap.add_argument("--rendered", type=Path, default=REPO_ROOT / "docs" / "rendered")
    args = ap.parse_args(argv)
    outputs = Path(tempfile.mkdtemp(prefix="vici-headline-"))
    try:
        record = measure(args.params, args.set, outputs, args.only)
        if record["returncode"] or record["status"] != "ok":
            print(f"the run failed (status {record['status']}); README and {args.rendered} left as they were:\n"
                  f"{record['output_tail']}", file=sys.stderr)
            return 1
        text = paragraph(record)
        write_readme(args.readme, text)
        pages = write_rendered(record["folder"], args.rendered, record)
        print(text)
        print(f"wrote {args.readme} (headline) and {len(pages)} pages + {SOURCES} to {args.rendered}")
        return 0
    finally:
        shutil.rmtree(outputs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
