"""Reading results: one run folder -> one flat row, and a sweep's rows -> one row per variant over its seeds.

This is the one reader of a run's manifest (run.json); the sweep, the tables and the notebooks all go through
`read_manifest`. A sweep's rows live in two places, read the same way: outputs/<sweep>/results.csv (written by the
sweep, here) and docs/results/<sweep>.csv (the committed record, copied from there by `python -m vici_utils
results`). A record may hold summary rows instead (one per variant: means, '<col>_std', n and seeds) where only
those were kept; `is_summary` tells them apart and every reader below takes both.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Optional

import pandas as pd

from ..metrics import METRICS
from ..run_folder import RERANK, RESULTS, RETRIEVAL, read_manifest  # RESULTS: a sweep's rows, outputs/<sweep>/
from ..model_stats import stats
from ..params import RENAMED, Params, as_stored, upgrade
from ..paths import REPO_ROOT, outputs_root
from ..provenance import describe_data, describe_model
from ..registry import FUSIONS

RECORDED = REPO_ROOT / "docs" / "results"  # the committed record: <sweep>.csv, one per sweep
DESCRIBED = ("seed", "backbone", "pretrained", "image_size", "epochs", "drone_rate", "reranker", "vlm_model",
             "fusion")  # parameters every row carries as 'param.<key>'
# metrics.json keys of stage 2 before a rename -> today's (fusion rules renamed: registry.FUSIONS.aliases)
RENAMED_METRICS = {"backend": "reranked_by"}
RULE_COLUMNS = ("param.fusion", "rerank.headline")  # columns whose values are fusion rules


def _renamed(old: str, new: str, d: dict) -> None:
    if old in d and new not in d:
        d[new] = d.pop(old)


def upgrade_rerank_metrics(metrics: dict) -> dict:
    """A stage-2 metrics.json as written before a rename (its 'backend', a rule's old name as a key, headline or
    chosen rule), in today's names."""
    metrics = dict(metrics)
    for old, new in (*RENAMED_METRICS.items(), *FUSIONS.aliases.items()):
        _renamed(old, new, metrics)
    metrics["headline"] = FUSIONS.aliases.get(metrics.get("headline"), metrics.get("headline"))
    if isinstance(metrics.get("fusion_chosen"), dict):
        chosen = metrics["fusion_chosen"] = dict(metrics["fusion_chosen"])
        chosen["rule"] = FUSIONS.aliases.get(chosen.get("rule"), chosen.get("rule"))
        if isinstance(chosen.get("validation"), dict):
            chosen["validation"] = dict(chosen["validation"])
            for old, new in FUSIONS.aliases.items():
                _renamed(old, new, chosen["validation"])
    return metrics


def upgrade_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows written before a rename (a committed record keeps the names it was written with), in today's names: the
    columns of renamed parameters (param.rerank_backend), metrics (rerank.backend) and fusion rules (rerank.vlm.R@1),
    and old rule names among the values of RULE_COLUMNS."""
    columns = {f"param.{old}": f"param.{new}" for old, new in RENAMED.items()}
    columns |= {f"rerank.{old}": f"rerank.{new}" for old, new in RENAMED_METRICS.items()}
    for old, new in FUSIONS.aliases.items():
        columns |= {c: f"rerank.{new}.{c[len(f'rerank.{old}.'):]}" for c in rows if c.startswith(f"rerank.{old}.")}
    rows = rows.rename(columns={old: new for old, new in columns.items() if new not in rows})
    for col in RULE_COLUMNS:
        if col in rows:
            rows[col] = rows[col].replace(FUSIONS.aliases)
    return rows


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _flatten(prefix: str, d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(f"{prefix}{k}.", v)
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def _written_by_this_run(path: Path, manifest: dict) -> Optional[dict]:
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


def read_run_folder(folder: Path, with_model_stats: bool = False, fresh_only: bool = True) -> dict:
    """Everything the tables need from one run folder, as one flat row: status, provenance (data, model,
    device, code version, dates), retrieval metrics, re-ranking metrics per fusion rule, durations.
    fresh_only: ignore metrics files older than the manifest's start (left by an earlier run in the folder)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return {"status": "missing"}
    row: dict = {"status": manifest.get("status", "unknown")}
    failed = [n for n in manifest.get("notebooks", []) if n.get("status") not in ("ok", "pending", None)]
    if failed and failed[0].get("error"):
        err = failed[0]["error"]
        row["error"] = f"{failed[0]['name']}: {err.get('ename')}: {str(err.get('evalue'))[:200]}"
    try:
        cfg = Params(**as_stored(upgrade(manifest.get("params", {}))))
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
    retrieval = _written_by_this_run(folder / RETRIEVAL / "metrics.json", since) or {}
    row |= {k: retrieval.get(k) for k in (*METRICS, "protocol", "n_query", "n_gallery")}
    rerank = _written_by_this_run(folder / RERANK / "metrics.json", since)
    if rerank:
        rerank = upgrade_rerank_metrics(rerank)
        row |= {"rerank.reranked_by": rerank.get("reranked_by"), "rerank.model": rerank.get("model"),
                "rerank.headline": rerank.get("headline"), "rerank.cost_usd": rerank.get("cost_usd"),
                "rerank.chosen_on": (rerank.get("fusion_chosen") or {}).get("on") or "parameter"}
        for part in ("retrieval", *FUSIONS):
            if isinstance(rerank.get(part), dict):
                row |= {f"rerank.{part}.{k}": rerank[part].get(k) for k in (*METRICS, "n_query")
                        if k in rerank[part]}
        for part in ("counts", "tokens"):
            if isinstance(rerank.get(part), dict):
                row |= _flatten(f"rerank.{part}.", rerank[part])
    if with_model_stats and cfg:
        s = stats(cfg.backbone, cfg.image_size)
        row |= {"params_M": s["params_M"], "gmacs": s["gmacs"], "dims": s["dims"]}
    return row


def is_summary(results: pd.DataFrame) -> bool:
    """Whether the rows are already one per variant over seeds (a record that kept only means and spreads)."""
    return "n" in results.columns


def aggregate_seeds(results: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (in sweep order) over its finished seeds: numeric columns -> mean and '<col>_std'
    (sample standard deviation; NaN for one seed), other columns -> their first value, and n (seeds).
    Summary rows are returned as they are."""
    ok = results[results["status"] == "ok"]
    if is_summary(results):
        return ok.reset_index(drop=True)
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


def trained_epochs(results: pd.DataFrame) -> list[int]:
    """The training budgets (epochs) of a sweep's finished rows that trained a model (not model_from rows, which
    evaluate another row's model with epochs 0)."""
    ok = results[results["status"] == "ok"] if "status" in results else results
    trained = ok[ok["model_from"].fillna("") == ""] if "model_from" in ok else ok
    return sorted({int(e) for e in trained.get("param.epochs", pd.Series(dtype=float)).dropna()})


def read_rows(path: Path) -> pd.DataFrame:
    """A sweep's collected rows from a CSV file (outputs/<sweep>/results.csv or docs/results/<sweep>.csv)."""
    return upgrade_rows(pd.read_csv(path))


def sweep_results(name: str, root: Optional[Path] = None) -> pd.DataFrame:
    """outputs/<name>/results.csv, the rows of one sweep (empty when the sweep has not run here)."""
    path = (root or outputs_root()) / name / RESULTS
    return read_rows(path) if path.is_file() else pd.DataFrame()


def recorded_results(name: str, folder: Path = RECORDED) -> pd.DataFrame:
    """docs/results/<name>.csv, the committed record of one sweep (empty when none is recorded)."""
    path = Path(folder) / f"{name}.csv"
    return read_rows(path) if path.is_file() else pd.DataFrame()


def reported_rule(r: pd.Series) -> str:
    """The fusion rule a run reports as its result: rerank metrics' 'headline', else the fusion parameter."""
    h = r.get("rerank.headline")
    return h if isinstance(h, str) and h else r.get("param.fusion")


def rerank_gains(results: pd.DataFrame) -> pd.DataFrame:
    """What each re-ranking variant did to R@1, paired by seed: for every fusion rule, the retrieval's R@1 and the
    re-ranked R@1 (means over seeds) and the change (mean and sample std of the per-seed differences; from summary
    rows the difference of the means, with no std: the pairs were not kept). 'reported': the rule the runs report
    as their result (chosen before the test set was seen), with 'chosen on' saying how it was chosen."""
    ok = results[results["status"] == "ok"] if "status" in results else results
    rows = []
    for variant in dict.fromkeys(ok.get("variant", [])):
        g = ok[ok["variant"] == variant]
        if "rerank.retrieval.R@1" not in g or g["rerank.retrieval.R@1"].isna().all():
            continue
        g = g[g["rerank.retrieval.R@1"].notna()]
        n = int(g["n"].sum()) if is_summary(g) else len(g)
        first = len(rows)
        for rule in FUSIONS:
            col = f"rerank.{rule}.R@1"
            if col not in g or g[col].isna().any():
                continue
            diff = g[col] - g["rerank.retrieval.R@1"]
            paired = not is_summary(g) and len(g) > 1
            chosen = g["rerank.chosen_on"].iloc[0] if "rerank.chosen_on" in g else "parameter"
            reranker = g["rerank.reranked_by"].iloc[0] if "rerank.reranked_by" in g else g.get("param.reranker",
                                                                                                 pd.Series([""])).iloc[0]
            rows.append({"re-ranker": g["label"].iloc[0], "reranker": reranker, "rule": rule,
                         "retrieval R@1": g["rerank.retrieval.R@1"].mean(), "re-ranked R@1": g[col].mean(),
                         "change": diff.mean(), "change std": diff.std(ddof=1) if paired else math.nan,
                         "seeds": n, "reported": rule == reported_rule(g.iloc[0]),
                         "chosen on": chosen if isinstance(chosen, str) and chosen else "parameter"})
        picks = [reported_rule(r) for _, r in g.iterrows()]
        if len(set(picks)) > 1 and rows[first:]:  # the seeds chose different rules: each run reports its own
            own = pd.Series([r[f"rerank.{rule}.R@1"] for (_, r), rule in zip(g.iterrows(), picks)], index=g.index)
            diff = own - g["rerank.retrieval.R@1"]
            counts = ", ".join(f"{rule} x{picks.count(rule)}" for rule in dict.fromkeys(picks))
            rows += [dict(rows[first], rule=f"each run's own: {counts}", reported=True, **{"re-ranked R@1": own.mean(),
                          "change": diff.mean(), "change std": diff.std(ddof=1) if len(g) > 1 else math.nan})]
            for row in rows[first:-1]:
                row["reported"] = False
    return pd.DataFrame(rows, columns=["re-ranker", "reranker", "rule", "retrieval R@1", "re-ranked R@1", "change",
                                       "change std", "seeds", "reported", "chosen on"])


def find_results(root: Optional[Path] = None) -> list[Path]:
    """Every sweep's results.csv under outputs/ (or root)."""
    return sorted((root or outputs_root()).glob(f"*/{RESULTS}"))


def find_recorded(folder: Path = RECORDED) -> list[Path]:
    """Every sweep's committed record, docs/results/<sweep>.csv."""
    return sorted(Path(folder).glob("*.csv"))


def overview(root: Optional[Path] = None, paths: Optional[list[Path]] = None) -> pd.DataFrame:
    """Every sweep run found (under outputs/ or root, or in the given CSV files): where its numbers were computed,
    on what data and hardware, with which recipe, and how long it took."""
    cols = ["sweep", "run", "source_run", "status", "seed", "seeds", "param.epochs", "data", "model", "device",
            "git_commit", "started", "run_s", "train_s"]
    frames = [read_rows(p) for p in (find_results(root) if paths is None else paths)]
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True)
    return df[[c for c in cols if c in df]].rename(columns={"param.epochs": "epochs"})
