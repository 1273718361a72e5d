"""The paper's tables, regenerated: read run folders and sweep results, average seeds, set our rows beside
the paper's published numbers, and write the README results section.

    python -m vici_utils results [--readme README.md] [--print]

Our numbers always come from outputs/ (run manifests, metrics.json files, sweeps' results.csv); the paper's
from vici_utils.paper, always labelled as the paper's. Nothing here is typed by hand.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from . import paper
from . import params as P
from .paths import REPO_ROOT, outputs_root, run_dir

METRICS = ("R@1", "R@5", "R@10", "AP")
SHOWN = ("R@1", "R@5", "R@10")
FUSIONS = ("weighted", "vlm", "rrf")
DESCRIBED = ("seed", "backbone", "pretrained", "image_size", "epochs", "drone_rate", "rerank_backend", "vlm_model",
             "fusion")
TITLES = {"backbones": "Feature extractors", "vlms": "Re-ranking", "drone_rate": "Drone augmentation",
          "ablation": "Ablation", "": "Results"}
TEXT_COLUMNS = ("table", "label", "paper_row", "rerank_paper_row", "source_run", "model_from", "error", "status")
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


# --- one run folder -> one flat row -------------------------------------------------------------------------

def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _flat(prefix: str, d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(f"{prefix}{k}.", v)
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def _this_runs(path: Path, manifest: dict) -> Optional[dict]:
    """A metrics file, if this run wrote it: a file older than the run's start is left over from an earlier
    run in the same folder (say, re-ranking metrics of a run that has since dropped re-ranking)."""
    try:
        started = dt.datetime.fromisoformat(manifest["started"]).timestamp()
    except (KeyError, TypeError, ValueError):
        started = None
    if started is not None and path.is_file() and path.stat().st_mtime < started:
        return None
    return _read_json(path)


def _train_seconds(folder: Path, manifest: dict) -> Optional[float]:
    """Training wall time: the train log's clock, else the training notebook's duration (which also counts
    building the world when that run built it first)."""
    log = folder / "train" / "train_log.csv"
    if log.is_file():
        try:
            df = pd.read_csv(log)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            df = pd.DataFrame()
        if "seconds" in df and len(df):  # train.py's clock: cumulative over epochs and resumed sessions
            return float(df["seconds"].iloc[-1])
    for nb in manifest.get("notebooks", []):
        if nb.get("name", "").startswith("02") and nb.get("status") == "ok":
            return nb.get("duration_s")
    return None


def read_run(folder: Path, with_model_stats: bool = False, fresh_only: bool = True) -> dict:
    """Everything the tables need from one run folder, as one flat row: status, provenance (data, model,
    device, code version, dates), retrieval metrics, re-ranking metrics per fusion rule, durations.
    fresh_only: ignore metrics files older than the manifest's start (left by an earlier run in the folder)."""
    from .figures import describe_data, describe_model

    manifest = _read_json(folder / "run.json")
    if manifest is None:
        return {"status": "missing"}
    row: dict = {"status": manifest.get("status", "unknown")}
    failed = [n for n in manifest.get("notebooks", []) if n.get("status") not in ("ok", "pending", None)]
    if failed and failed[0].get("error"):
        err = failed[0]["error"]
        row["error"] = f"{failed[0]['name']}: {err.get('ename')}: {str(err.get('evalue'))[:200]}"
    try:
        cfg = P.Params(**manifest.get("params", {}))
    except Exception:  # noqa: BLE001 - a manifest of an older Params: still report what we can
        cfg = None
    env = manifest.get("environment", {})
    row |= {"data": describe_data(cfg) if cfg else "", "model": describe_model(cfg) if cfg else "",
            "device": env.get("device", ""), "started": manifest.get("started", ""),
            "git_commit": (manifest.get("git") or {}).get("commit") or "",
            "run_s": manifest.get("duration_s"), "train_s": _train_seconds(folder, manifest)}
    if cfg:
        row |= {f"param.{k}": getattr(cfg, k) for k in DESCRIBED}
    since = manifest if fresh_only else {}
    retrieval = _this_runs(folder / "retrieval" / "metrics.json", since) or {}
    row |= {k: retrieval.get(k) for k in (*METRICS, "protocol", "n_query", "n_gallery")}
    rerank = _this_runs(folder / "rerank" / "metrics.json", since)
    if rerank:
        row |= {"rerank.backend": rerank.get("backend"), "rerank.model": rerank.get("model"),
                "rerank.headline": rerank.get("headline"), "rerank.cost_usd": rerank.get("cost_usd")}
        for part in ("retrieval", *FUSIONS):
            if isinstance(rerank.get(part), dict):
                row |= {f"rerank.{part}.{k}": rerank[part].get(k) for k in (*METRICS, "n_query")
                        if k in rerank[part]}
        for part in ("counts", "tokens"):
            if isinstance(rerank.get(part), dict):
                row |= _flat(f"rerank.{part}.", rerank[part])
    if with_model_stats and cfg:
        from .model_stats import stats

        s = stats(cfg.backbone, cfg.image_size)
        row |= {"params_M": s["params_M"], "gmacs": s["gmacs"], "dims": s["dims"]}
    return row


# --- seeds -> mean and spread -------------------------------------------------------------------------------

def aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (in sweep order) over its finished seeds: numeric columns -> mean and '<col>_std'
    (sample standard deviation; NaN for one seed), other columns -> their first value, and n (seeds)."""
    ok = results[results["status"] == "ok"]
    rows = []
    for variant in dict.fromkeys(results["variant"]):
        g = ok[ok["variant"] == variant]
        if g.empty:
            continue
        row = {"n": len(g), "seeds": " ".join(str(s) for s in g["seed"])}
        for col in g.columns:
            values = g[col]
            if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) and col != "seed":
                row[col] = values.mean()
                row[f"{col}_std"] = values.std(ddof=1) if len(g) > 1 else math.nan
            else:
                row[col] = values.iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


# --- tables in the paper's shape -----------------------------------------------------------------------------

@dataclass
class Table:
    """Our rows beside the paper's. `rows` holds numbers: ours as '<metric>' and '<metric>_std', the paper's
    as 'paper <metric>'; rows the paper has and we do not come last, with our columns empty."""
    name: str                   # the sweep (or run) the rows come from
    kind: str                   # a key of paper.TABLES, or '' for a table of its own
    rows: pd.DataFrame
    provenance: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)        # columns between the row label and the metrics
    paper_extra: list[str] = field(default_factory=list)  # the paper's own extra columns

    @property
    def title(self) -> str:
        return TITLES.get(self.kind, self.kind)


def _metric_row(label: str, source: pd.Series, prefix: str = "", **extra) -> dict:
    """stage: 'retrieval', or the fusion rule of a re-ranked result; variant: the sweep variant it came from."""
    stage = prefix.removeprefix("rerank.").rstrip(".") or "retrieval"
    row = {"row": label, "stage": stage, "variant": source.get("variant", ""), **extra}
    for m in SHOWN:
        row[m] = source.get(f"{prefix}{m}")
        row[f"{m}_std"] = source.get(f"{prefix}{m}_std")
    row["n"] = source.get("n")
    return row


def _has(agg_row: pd.Series, col: str) -> bool:
    v = agg_row.get(col)
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _headline(r: pd.Series) -> str:
    """The fusion rule the run reports as its result (rerank metrics' 'headline', else the fusion param)."""
    return r["rerank.headline"] if _has(r, "rerank.headline") else r.get("param.fusion")


def _rerank_label(r: pd.Series, fusion: str, with_backend: bool = True) -> str:
    """'<label> + <backend [model]> re-rank (<fusion>[, first N queries])'; vlms tables label by variant only."""
    backend = r.get("rerank.backend") or r.get("param.rerank_backend") or "re-rank"
    model = r.get("rerank.model")
    what = f"{backend} {model}" if isinstance(model, str) and model and backend in ("gemini", "openai") else backend
    subset = ""
    if _has(r, "rerank.retrieval.n_query") and _has(r, "n_query") and r["rerank.retrieval.n_query"] < r["n_query"]:
        subset = f", first {int(r['rerank.retrieval.n_query'])} queries"
    return f"{r['label']} + {what} re-rank ({fusion}{subset})" if with_backend else f"{r['label']} ({fusion}{subset})"


def _ours(agg: pd.DataFrame, kind: str) -> tuple[list[dict], list[str]]:
    """Our rows for a table kind, each with the paper row it stands beside ('paper_row')."""
    rows, extra = [], []
    if kind == "backbones":
        extra = ["backbone", "image px", "params (M)", "GMACs", "dims"]
        for _, r in agg.iterrows():
            rows.append(_metric_row(r["label"], r, paper_row=r.get("paper_row") or "", **{
                "backbone": r.get("param.backbone"), "image px": r.get("param.image_size"),
                "params (M)": r.get("params_M"), "GMACs": r.get("gmacs"), "dims": r.get("dims")}))
    elif kind == "drone_rate":
        extra = ["P"]
        for _, r in agg.iterrows():
            rows.append(_metric_row(r["label"], r, P=r.get("param.drone_rate"), paper_row=""))
    elif kind == "vlms":
        before = agg[[_has(r, "rerank.retrieval.R@1") for _, r in agg.iterrows()]]
        if len(before):  # the variants differ in re-ranking only (model_from), so they share one retrieval result
            rows.append(_metric_row("Without re-ranking", before.iloc[0], prefix="rerank.retrieval.",
                                    paper_row=paper.VLMS.iloc[0, 0]) | {"variant": ""})
        for _, r in agg.iterrows():
            for fusion in FUSIONS:
                if _has(r, f"rerank.{fusion}.R@1"):
                    headline = fusion == _headline(r)
                    rows.append(_metric_row(_rerank_label(r, fusion, False), r, prefix=f"rerank.{fusion}.",
                                            paper_row=(r.get("rerank_paper_row") or "") if headline else ""))
    else:  # ablation, and any sweep of its own: retrieval per variant, plus the headline re-ranked result
        for _, r in agg.iterrows():
            rows.append(_metric_row(r["label"], r, paper_row=r.get("paper_row") or ""))
            fusion = _headline(r)
            if (kind != "ablation" or r.get("rerank_paper_row")) and _has(r, f"rerank.{fusion}.R@1"):
                rows.append(_metric_row(_rerank_label(r, fusion), r, prefix=f"rerank.{fusion}.",
                                        paper_row=r.get("rerank_paper_row") or ""))
    return rows, extra


def _beside_paper(rows: list[dict], kind: str) -> tuple[pd.DataFrame, list[str]]:
    ours = pd.DataFrame(rows)
    if kind not in paper.TABLES:
        return ours, []
    pt = paper.TABLES[kind]
    key = pt.columns[0]
    paper_extra = {"backbones": ["params_M", "flops_G", "dims"]}.get(kind, [])
    cols = {m: f"paper {m}" for m in (*paper_extra, *SHOWN)}
    theirs = pt.rename(columns=cols)[[key, *cols.values()]]
    if kind == "drone_rate":  # matched by the rate itself
        ours["_P"] = ours["P"].astype(float).round(3)
        merged = ours.merge(theirs.assign(_P=theirs[key].round(3)).drop(columns=[key]), on="_P", how="left")
        found = merged["paper R@1"].notna()
        merged["paper_row"] = [f"P = {p:g}" if f else "" for p, f in zip(merged["_P"], found)]
        matched = set(merged.loc[found, "_P"])
        rest = theirs[~theirs[key].round(3).isin(matched)]
        rest = rest.assign(P=rest[key], paper_row=[f"P = {p:g}" for p in rest[key]], row="").drop(columns=[key])
        merged = merged.drop(columns=["_P"])
    else:
        merged = ours.merge(theirs.rename(columns={key: "paper_row"}), on="paper_row", how="left")
        rest = theirs[~theirs[key].isin(set(ours["paper_row"]))].rename(columns={key: "paper_row"}).assign(row="")
    out = pd.concat([merged, rest], ignore_index=True) if len(rest) else merged
    if kind == "drone_rate":
        out = out.sort_values("P", kind="stable", ignore_index=True)
    return out, [cols[c] for c in paper_extra]


def _provenance(results: pd.DataFrame, agg: pd.DataFrame, swept: list[str]) -> list[str]:
    ok = results[results["status"] == "ok"]
    lines = []
    if ok.empty:
        return ["no finished runs yet"]

    def uniq(col):
        return [v for v in dict.fromkeys(ok[col].dropna()) if v != ""] if col in ok else []

    data = uniq("data")
    lines.append(f"data: {'; '.join(data)}")
    if (ng := uniq("n_gallery")) and (nq := uniq("n_query")):
        queries, gallery = ", ".join(str(int(q)) for q in nq), ", ".join(str(int(g)) for g in ng)
        lines.append(f"test set: {queries} queries against {gallery} gallery images "
                     f"(chance R@1 = {100 / max(ng):.2g} %), protocol {', '.join(map(str, uniq('protocol')))}")
    models = uniq("model")
    if swept:
        lines.append(f"model: {models[0]}; varied: {', '.join(swept)}")
    else:
        lines.append(f"model{'s' if len(models) > 1 else ''}: {'; '.join(models)}")
    if "model_from" in ok and (ok["model_from"] != "").any():
        lines.append("variants with model_from evaluate the model another variant trained (no training of their own)")
    lines.append(f"hardware: {'; '.join(map(str, uniq('device')))}")
    seeds = sorted({int(s) for s in ok["seed"]})
    spread = "mean ± sample std over seeds" if agg["n"].max() > 1 else "one seed"
    lines.append(f"seeds: {', '.join(map(str, seeds))} ({spread}); {len(ok)} finished runs of {len(results)}")
    own = ok.drop_duplicates("source_run") if "source_run" in ok else ok  # a run reused twice ran once
    total = pd.to_numeric(own.get("train_s"), errors="coerce").sum()
    commits = sorted({str(c)[:8] for c in uniq("git_commit")}) or ["uncommitted"]
    dates = sorted(str(s)[:10] for s in uniq("started"))
    when = dates[0] if dates and dates[0] == dates[-1] else (f"{dates[0]} to {dates[-1]}" if dates else "?")
    lines.append(f"run {when}, code {', '.join(commits)}; {total / 60:.0f} min of training in all")
    if "source_run" in ok:
        reused = ok[(ok["source_run"] != "") & (ok["source_run"] != ok["run"])]
        if len(reused):
            sources = ", ".join(sorted({s.split("/")[0] for s in reused["source_run"]}))
            lines.append(f"{len(reused)} runs reused from {sources} (identical parameters; results.csv "
                         "names each source run)")
    bad = results[results["status"] != "ok"]
    if len(bad):
        lines.append("not finished: " + ", ".join(f"{r} ({s})" for r, s in zip(bad["run"], bad["status"])))
    return lines


def build(results: pd.DataFrame, name: Optional[str] = None) -> Table:
    """A results table (a sweep's results.csv, or one run's row) in the shape of its paper table."""
    results = results.copy()
    for col in TEXT_COLUMNS:  # empty cells of results.csv read back as NaN
        if col in results:
            results[col] = results[col].astype(object).fillna("").astype(str)
    kind = results["table"].iloc[0] if "table" in results else ""
    trained = results[results["model_from"] == ""] if "model_from" in results else results
    swept = [c.removeprefix("param.") for c in results.columns
             if c.startswith("param.") and c != "param.seed" and trained[c].astype(str).nunique() > 1]
    agg = aggregate(results)
    rows, extra = _ours(agg, kind) if len(agg) else ([], [])
    table_rows, paper_extra = _beside_paper(rows, kind) if rows else (pd.DataFrame(rows), [])
    return Table(name or str(results["sweep"].iloc[0]), kind, table_rows, _provenance(results, agg, swept),
                 extra, paper_extra)


def find_results(root: Optional[Path] = None) -> list[Path]:
    return sorted((root or outputs_root()).glob("*/results.csv"))


def load_tables(root: Optional[Path] = None) -> list[Table]:
    """Every sweep's table under outputs/, in the paper's order of tables, then by sweep name."""
    order = list(paper.TABLES)
    tables = [build(pd.read_csv(p)) for p in find_results(root)]
    return sorted(tables, key=lambda t: (order.index(t.kind) if t.kind in order else len(order), t.name))


def run_table(run_name: str) -> Optional[Table]:
    """One run's own results (retrieval, and re-ranking if it ran) as a table, or None if it has none yet.
    The run may still be going (this notebook is part of it), and its metrics may come from an earlier call
    of the runner (`--only 05`), so any metrics in the folder count."""
    folder = run_dir(run_name)
    row = read_run(folder, fresh_only=False)
    if row.get("R@1") is None:
        return None
    row |= {"sweep": run_name, "table": "", "variant": run_name, "run": run_name, "source_run": run_name,
            "seed": row.get("param.seed", 0), "label": run_name, "status": "ok"}
    return build(pd.DataFrame([row]), run_name)


def of_kind(tables: list[Table], kind: str) -> list[Table]:
    return [t for t in tables if t.kind == kind]


def overview(root: Optional[Path] = None) -> pd.DataFrame:
    """Every sweep run found: where its numbers were computed, on what data and hardware, and how long it took."""
    cols = ["sweep", "run", "source_run", "status", "data", "model", "device", "started", "run_s"]
    frames = [pd.read_csv(p) for p in find_results(root)]
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True)
    return df[[c for c in cols if c in df]]


# --- text ---------------------------------------------------------------------------------------------------

def _num(v, digits: int = 2) -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.{digits}f}" if digits >= 0 else f"{v:g}"
    return str(v)


# decimals per column (-1: as short as exact); the paper's columns as the paper prints them
DIGITS = {"image px": 0, "params (M)": 1, "GMACs": 3, "dims": 0, "P": -1, "seeds": 0,
          "paper params_M": 0, "paper flops_G": 1, "paper dims": 0}


PAPER_HEADERS = {"paper params_M": "paper's params (M)", "paper flops_G": "paper's FLOPs (G)",
                 "paper dims": "paper's dims"}


def display_frame(table: Table) -> pd.DataFrame:
    """The table as strings: ours as 'mean ± std' with the number of seeds, then the paper's columns."""
    df = table.rows
    if df.empty:
        return pd.DataFrame()
    out = pd.DataFrame({"ours": df["row"].fillna("")})
    for c in table.extra:
        out[c] = [_num(v, DIGITS.get(c, 2)) for v in df[c]]
    for m in SHOWN:
        out[m] = [_num(v) + (f" ± {s:.2f}" if _num(v) and _num(s) else "") for v, s in zip(df[m], df[f"{m}_std"])]
    out["seeds"] = [_num(n, 0) for n in df["n"]]
    if table.kind in paper.TABLES:
        out["paper's row"] = df["paper_row"].fillna("")
        for c in [*table.paper_extra, *(f"paper {m}" for m in SHOWN)]:
            out[PAPER_HEADERS.get(c, c.replace("paper ", "paper's "))] = [_num(v, DIGITS.get(c, 2)) for v in df[c]]
    return out


def to_markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    rule = "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(cols))) + "|"  # labels left, numbers right
    lines = ["| " + " | ".join(cols) + " |", rule]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |")
    return "\n".join(lines)


def run_time(root: Optional[Path] = None) -> str:
    """One line on what all the finished sweep runs cost: distinct runs (a run another sweep reused counts
    once), their summed wall time from the manifests, and the hardware; '' when none has finished."""
    runs = overview(root)
    if runs.empty:
        return ""
    ok = runs[runs["status"] == "ok"].copy()
    ok["key"] = ok["source_run"].fillna("").astype(str).where(lambda k: k != "", ok["run"])
    own = ok.drop_duplicates("key")
    if own.empty:
        return ""
    minutes = pd.to_numeric(own["run_s"], errors="coerce").sum() / 60
    devices = ", ".join(dict.fromkeys(own["device"].dropna().astype(str)))
    return (f"All sweeps together: {len(own)} distinct runs, {minutes:.0f} min of run time in all (the sum of "
            f"each run's wall time, world generation not included), on {devices}.")


def section(tables: list[Table], now: Optional[str] = None, cost: str = "") -> str:
    """The README results section: each table with where its numbers came from; `cost` (see run_time) first."""
    now = now or dt.date.today().isoformat()
    out = [f"_Generated by `python -m vici_utils results` on {now} from `outputs/*/results.csv`; "
           "do not edit by hand. Our columns are measured here; columns marked \"paper's\" are published "
           f"numbers of the {paper.SOURCE}, not re-run._", ""]
    if cost:
        out += [cost, ""]
    if not tables:
        out.append("No sweep has finished yet: `make tables` runs them.")
    for t in tables:
        out += [f"### {t.title}: `{t.name}`", ""]
        out += [f"- {line}" for line in t.provenance] + [""]
        frame = display_frame(t)
        out += [to_markdown(frame) if len(frame) else "_no finished rows yet_", ""]
    return "\n".join(out).rstrip() + "\n"


def paper_frame(kind: str) -> pd.DataFrame:
    """The paper's table as published, every column marked as the paper's."""
    return paper.TABLES[kind].rename(columns=lambda c: f"paper's {c}")


def show(table: Table) -> None:
    """Display a table in a notebook: a heading, where its numbers came from, then the table."""
    from IPython.display import Markdown, display

    lines = [f"**{table.title}: `{table.name}`**", *(f"- {line}" for line in table.provenance)]
    display(Markdown("\n".join(lines)))
    frame = display_frame(table)
    display(frame if len(frame) else Markdown("_no finished rows yet_"))


def write_readme(text: str, readme: Path = REPO_ROOT / "README.md") -> Path:
    """Replace what lies between the results markers in README.md (and nothing else)."""
    readme = Path(readme)
    doc = readme.read_text() if readme.is_file() else ""
    start, end = doc.find(README_START), doc.find(README_END)
    if start < 0 or end < start:
        raise P.ParamsError(f"{readme}: expected the markers {README_START} and {README_END} (in that order) "
                            "around the results section")
    readme.write_text(doc[:start + len(README_START)] + "\n" + text + doc[end:])
    return readme


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vici_utils results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"), help="the README to update")
    parser.add_argument("--print", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args(argv)
    text = section(load_tables(), cost=run_time())
    if args.print:
        print(text)
        return 0
    try:
        print(f"results section written to {write_readme(text, Path(args.readme))}")
    except P.ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
