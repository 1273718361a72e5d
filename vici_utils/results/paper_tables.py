"""Our results in the shape of the paper's tables, our rows beside the paper's published ones.

Each kind of table (a sweep file's `table:`, or '' for a sweep of its own) is one shaping function made a
TableKind by @table_kind and registered by name in vici_utils.registry.TABLE_KINDS: it turns a sweep's rows,
averaged over seeds, into the table's rows, each naming the paper row it stands beside. A new kind is one function
here and one line in the registry (and, if the paper has it, its numbers in vici_utils.paper, given as `paper=`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from .. import paper
from ..metrics import METRICS, RECALLS
from ..params import Params
from ..rerank.rerankers import sees_order
from ..paths import REPO_ROOT
from ..registry import FUSIONS, OWN_TABLE, TABLE_KINDS
from ..run_folder import run_dir
from .findings import Comparison, findings
from .rows import (RECORDED, aggregate_seeds, find_recorded, find_results, is_summary, read_rows, read_run_folder,
                   reported_rule, trained_epochs)

TEXT_COLUMNS = ("table", "label", "paper_row", "rerank_paper_row", "source_run", "model_from", "error", "status")


@dataclass(frozen=True, eq=False)
class TableKind:
    title: str
    shape: Callable[[pd.DataFrame], list[dict]]  # variants (aggregated over seeds) -> our rows
    extra: tuple[str, ...] = ()        # our columns between the row label and the metrics
    paper_extra: tuple[str, ...] = ()  # the paper's own columns shown beside ours
    match_by_rate: bool = False        # our rows meet the paper's by drone rate P, not by the paper row's name
    paper: Optional[pd.DataFrame] = None  # the paper's published table (vici_utils.paper), first column its rows
    needs_model_stats: bool = False    # its rows show each model's size and cost (results.rows builds the model)
    all_reranked: bool = False         # every variant re-ranks one shared retrieval (re-ranking figures keep all rows)
    comparisons: tuple[Comparison, ...] = ()  # differences between two variants its findings state (findings.py)

    @property
    def label(self) -> str:
        return self.title


def table_kind(title: str, **how):
    """Make a shaping function a table kind (see TableKind for `how`); vici_utils.registry.TABLE_KINDS names it."""
    def make(fn) -> TableKind:
        return TableKind(title, fn, **how)
    return make


def kind_of(name: str) -> TableKind:
    """The registered table kind `name`; a kind no longer registered (in an older results.csv) is shown as a sweep of
    its own."""
    return TABLE_KINDS.load(name if name in TABLE_KINDS else OWN_TABLE)


@dataclass
class Table:
    """Our rows beside the paper's. `rows` holds numbers: ours as '<metric>' and '<metric>_std', the paper's
    as 'paper <metric>'; rows the paper has and we do not come last, with our columns empty."""
    name: str                   # the sweep (or run) the rows come from
    kind: str                   # a name of registry.TABLE_KINDS ('' for a table of its own)
    rows: pd.DataFrame
    provenance: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)        # columns between the row label and the metrics
    paper_extra: list[str] = field(default_factory=list)  # the paper's own extra columns
    findings: list[str] = field(default_factory=list)     # sentences on what the runs measured (findings.py)
    recipe: str = ""       # what made the rows: epochs and seeds, said against the default recipe when it differs
    source: str = ""       # the file the rows were read from; a record committed to docs/results/ says so
    recorded: bool = False  # read from the committed record, not from runs in this outputs folder
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # the rows it was built from (per run, or summary)

    @property
    def title(self) -> str:
        return kind_of(self.kind).title if self.kind in TABLE_KINDS else self.kind

    @property
    def kind_spec(self) -> TableKind:
        return kind_of(self.kind)


# --- one row of a table ---------------------------------------------------------------------------------------

def _metric_row(label: str, source: pd.Series, prefix: str = "", **extra) -> dict:
    """stage: 'retrieval', or the fusion rule of a re-ranked result; variant: the sweep variant it came from."""
    stage = prefix.removeprefix("rerank.").rstrip(".") or "retrieval"
    row = {"row": label, "stage": stage, "variant": source.get("variant", ""), "epochs": source.get("param.epochs"),
           **extra}
    for m in METRICS:
        row[m] = source.get(f"{prefix}{m}")
        row[f"{m}_std"] = source.get(f"{prefix}{m}_std")
    row["n"] = source.get("n")
    return row


def _has(variant: pd.Series, col: str) -> bool:
    v = variant.get(col)
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _rerank_label(r: pd.Series, fusion: str, with_reranker: bool = True) -> str:
    """'<label> + <re-ranker [model]> re-rank (<fusion>[, first N queries])'; vlms tables label by variant only."""
    reranker = r.get("rerank.reranked_by") or r.get("param.reranker") or "re-rank"
    model = r.get("rerank.model")
    what = f"{reranker} {model}" if isinstance(model, str) and model and sees_order(reranker) else reranker  # a VLM's id
    subset = ""
    if _has(r, "rerank.retrieval.n_query") and _has(r, "n_query") and r["rerank.retrieval.n_query"] < r["n_query"]:
        subset = f", first {int(r['rerank.retrieval.n_query'])} queries"
    return f"{r['label']} + {what} re-rank ({fusion}{subset})" if with_reranker else f"{r['label']} ({fusion}{subset})"


# --- the kinds of table -----------------------------------------------------------------------------------------

# One backbone, as the paper's columns count it (notebook 02's model summary counts both towers and the head).
PARAMS_M = "params (M, one backbone)"
GMACS = "GMACs (backbone, per image)"


@table_kind("Feature extractors", extra=("backbone", "image px", PARAMS_M, GMACS, "dims"),
            paper_extra=("params_M", "flops_G", "dims"), paper=paper.BACKBONES, needs_model_stats=True, comparisons=(
                Comparison("effnet_scratch", "effnet_pretrained",
                           "Pretraining, EfficientNet-Lite0 with ImageNet weights minus the same network from scratch"),
                Comparison("resnet10t_scratch", "effnet_pretrained",
                           "EfficientNet-Lite0 with ImageNet weights minus ResNet-10t from scratch")))
def backbone_rows(variants: pd.DataFrame) -> list[dict]:
    """One row per backbone, with its measured size and cost."""
    return [_metric_row(r["label"], r, paper_row=r.get("paper_row") or "", **{
        "backbone": r.get("param.backbone"), "image px": r.get("param.image_size"),
        PARAMS_M: r.get("params_M"), GMACS: r.get("gmacs"), "dims": r.get("dims")})
        for _, r in variants.iterrows()]


@table_kind("Drone augmentation", extra=("P",), match_by_rate=True, paper=paper.DRONE_RATE, comparisons=(
    Comparison("p0", "p0.3", "Drone mixing, P = 0.3 minus P = 0",
               "The paper reports +3.0 on University-1652, from one run per P."),))
def drone_rate_rows(variants: pd.DataFrame) -> list[dict]:
    """One row per drone rate P (matched with the paper's rows by P itself)."""
    return [_metric_row(r["label"], r, P=r.get("param.drone_rate"), paper_row="") for _, r in variants.iterrows()]


@table_kind("Re-ranking", paper=paper.VLMS, all_reranked=True)
def vlm_rows(variants: pd.DataFrame) -> list[dict]:
    """The shared retrieval result first, then every fusion rule of every re-ranking variant."""
    rows = []
    before = variants[[_has(r, "rerank.retrieval.R@1") for _, r in variants.iterrows()]]
    if len(before):  # the variants differ in re-ranking only (model_from), so they share one retrieval result
        rows.append(_metric_row("Without re-ranking", before.iloc[0], prefix="rerank.retrieval.",
                                paper_row=paper.VLMS.iloc[0, 0]) | {"variant": ""})
    for _, r in variants.iterrows():
        for fusion in FUSIONS:
            if _has(r, f"rerank.{fusion}.R@1"):
                headline = fusion == reported_rule(r)
                rows.append(_metric_row(_rerank_label(r, fusion, False), r, prefix=f"rerank.{fusion}.",
                                        paper_row=(r.get("rerank_paper_row") or "") if headline else ""))
    return rows


@table_kind("Ablation", paper=paper.ABLATION, comparisons=(
    Comparison("no_drone", "drone", "Drone data, + drone data minus the model alone"),))
def ablation_rows(variants: pd.DataFrame) -> list[dict]:
    """The paper's steps; a re-ranked row (the reported rule) only where the variant names the paper row it
    stands beside."""
    rows = []
    for _, r in variants.iterrows():
        rows.append(_metric_row(r["label"], r, paper_row=r.get("paper_row") or ""))
        fusion = reported_rule(r)
        if r.get("rerank_paper_row") and _has(r, f"rerank.{fusion}.R@1"):
            rows.append(_metric_row(_rerank_label(r, fusion), r, prefix=f"rerank.{fusion}.",
                                    paper_row=r.get("rerank_paper_row") or ""))
    return rows


@table_kind("Results")
def own_rows(variants: pd.DataFrame) -> list[dict]:
    """A sweep of its own: every variant's retrieval, then every fusion rule of its re-ranking, the reported
    rule marked (every rule is computed by every run; only the reported one was chosen before the test)."""
    rows = []
    for _, r in variants.iterrows():
        rows.append(_metric_row(r["label"], r, paper_row=r.get("paper_row") or ""))
        for fusion in FUSIONS:
            if _has(r, f"rerank.{fusion}.R@1"):
                mark = ", reported" if fusion == reported_rule(r) else ""
                rows.append(_metric_row(_rerank_label(r, fusion + mark), r, prefix=f"rerank.{fusion}.",
                                        paper_row=r.get("rerank_paper_row") or ""))
    return rows


# --- beside the paper -----------------------------------------------------------------------------------------

def _append(ours: pd.DataFrame, theirs_only: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([ours, theirs_only], ignore_index=True) if len(theirs_only) else ours


def _beside_by_row(ours: pd.DataFrame, theirs: pd.DataFrame, key: str) -> pd.DataFrame:
    """Matched on the paper row each of ours names; the paper's rows without ours come last."""
    theirs = theirs.rename(columns={key: "paper_row"})
    merged = ours.merge(theirs, on="paper_row", how="left")
    return _append(merged, theirs[~theirs["paper_row"].isin(set(ours["paper_row"]))].assign(row=""))


def _beside_by_rate(ours: pd.DataFrame, theirs: pd.DataFrame, key: str) -> pd.DataFrame:
    """Matched on the drone rate P; the paper's rates we did not run are shown too, everything sorted by P."""
    ours = ours.assign(_P=ours["P"].astype(float).round(3))
    merged = ours.merge(theirs.assign(_P=theirs[key].round(3)).drop(columns=[key]), on="_P", how="left")
    found = merged[f"paper {RECALLS[0]}"].notna()
    merged["paper_row"] = [f"P = {p:g}" if f else "" for p, f in zip(merged["_P"], found)]
    rest = theirs[~theirs[key].round(3).isin(set(merged.loc[found, "_P"]))]
    rest = rest.assign(P=rest[key], paper_row=[f"P = {p:g}" for p in rest[key]], row="").drop(columns=[key])
    return _append(merged.drop(columns=["_P"]), rest).sort_values("P", kind="stable", ignore_index=True)


def _beside_paper(rows: list[dict], kind: TableKind) -> tuple[pd.DataFrame, list[str]]:
    ours = pd.DataFrame(rows)
    if kind.paper is None:
        return ours, []
    published = kind.paper
    key = published.columns[0]
    cols = {m: f"paper {m}" for m in (*kind.paper_extra, *RECALLS)}
    theirs = published.rename(columns=cols)[[key, *cols.values()]]
    beside = _beside_by_rate if kind.match_by_rate else _beside_by_row
    return beside(ours, theirs, key), [cols[c] for c in kind.paper_extra]


# --- where the numbers came from ------------------------------------------------------------------------------

def _seeds(ok: pd.DataFrame) -> list[int]:
    """The seeds of the finished rows (a summary row lists its own, space-separated)."""
    if "seeds" in ok:
        return sorted({int(s) for cell in ok["seeds"].astype(str) for s in cell.split()})
    return sorted({int(s) for s in ok["seed"]})


def _span(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)) \
        else ", ".join(map(str, seeds))


def recipe(results: pd.DataFrame) -> str:
    """What made the rows, in a few words: '16 epochs (the default trains 48), seeds 0-4'."""
    ok = results[results["status"] == "ok"] if "status" in results else results
    if ok.empty:
        return ""
    default = Params().epochs
    epochs = trained_epochs(ok)
    said = "/".join(map(str, epochs)) + (" epoch" if epochs == [1] else " epochs")
    if epochs and epochs != [default]:
        said += f" (the default recipe trains {default})"
    elif epochs:
        said += " (the default recipe)"
    else:
        said = "epochs not recorded"
    seeds = _seeds(ok)
    return f"{said}, {len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({_span(seeds)})"


def _provenance(results: pd.DataFrame, variants: pd.DataFrame, swept: list[str], source: str,
                recorded: bool) -> list[str]:
    ok = results[results["status"] == "ok"]
    lines = []
    if ok.empty:
        return ["no finished runs yet"]
    summary = is_summary(results)

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
    seeds = _seeds(ok)
    spread = "mean ± sample std over seeds" if variants["n"].max() > 1 else "one seed"
    runs = int(ok["n"].sum()) if summary else len(ok)
    lines.append(f"seeds: {', '.join(map(str, seeds))} ({spread}); {runs} finished runs"
                 + ("" if summary else f" of {len(results)}"))
    commits = sorted({c.strip()[:8] for v in uniq("git_commit") for c in str(v).split()}) or ["uncommitted"]
    dates = sorted(str(s)[:10] for s in uniq("started"))
    when = dates[0] if dates and dates[0] == dates[-1] else (f"{dates[0]} to {dates[-1]}" if dates else "?")
    if summary:
        lines.append(f"run {when}, code {', '.join(commits)}; only each variant's mean and spread over seeds were "
                     "kept, so comparisons below are between means (Welch), not paired by seed")
    else:
        own = ok.drop_duplicates("source_run") if "source_run" in ok else ok  # a run reused twice ran once
        total = pd.to_numeric(own.get("train_s"), errors="coerce").sum()
        lines.append(f"run {when}, code {', '.join(commits)}; {total / 60:.0f} min of training in all")
    if not summary and "source_run" in ok:
        reused = ok[(ok["source_run"] != "") & (ok["source_run"] != ok["run"])]
        if len(reused):
            sources = ", ".join(sorted({s.split("/")[0] for s in reused["source_run"]}))
            lines.append(f"{len(reused)} runs reused from {sources} (identical parameters; results.csv "
                         "names each source run)")
    bad = results[results["status"] != "ok"]
    if len(bad):
        lines.append("not finished: " + ", ".join(f"{r} ({s})" for r, s in zip(bad["run"], bad["status"])))
    if "AP" not in ok or ok["AP"].isna().all():
        lines.append("AP: not recorded for these runs")
    if recorded:
        lines.append(f"recorded in {source}: measured by an earlier `make tables`, not by runs in this outputs "
                     "folder; code can change between a record and your run, so compare the recipe first")
    return lines


# --- tables -----------------------------------------------------------------------------------------------------

def build_table(results: pd.DataFrame, name: Optional[str] = None, source: str = "",
                recorded: bool = False) -> Table:
    """A results table (a sweep's collected rows, or one run's row) in the shape of its paper table. `source`:
    the file the rows came from; `recorded`: it is the committed record, not runs in this outputs folder."""
    results = results.copy()
    for col in TEXT_COLUMNS:  # empty cells of results.csv read back as NaN
        if col in results:
            results[col] = results[col].astype(object).fillna("").astype(str)
    kind_name = results["table"].iloc[0] if "table" in results else OWN_TABLE
    kind = kind_of(kind_name)
    trained = results[results["model_from"] == ""] if "model_from" in results else results
    swept = [c.removeprefix("param.") for c in results.columns
             if c.startswith("param.") and c != "param.seed"
             and trained[c].map(lambda v: "" if pd.isna(v) else str(v)).nunique() > 1]  # unset (None) counts
    variants = aggregate_seeds(results)
    rows = kind.shape(variants) if len(variants) else []
    table_rows, paper_extra = _beside_paper(rows, kind) if rows else (pd.DataFrame(rows), [])
    name = name or str(results["sweep"].iloc[0])
    return Table(name, kind_name, table_rows, _provenance(results, variants, swept, source, recorded),
                 list(kind.extra) if len(variants) else [], paper_extra, findings(name, kind.comparisons, results),
                 recipe(results), source, recorded, results)


def _in_paper_order(tables: list[Table]) -> list[Table]:
    order = list(TABLE_KINDS)  # the registry's order: the paper's tables first
    return sorted(tables, key=lambda t: (order.index(t.kind) if t.kind in order else len(order), t.name))


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def load_sweep_tables(root: Optional[Path] = None) -> list[Table]:
    """Every sweep's table under outputs/ (or root), in the paper's order of tables, then by sweep name."""
    return _in_paper_order([build_table(read_rows(p), source=_shown_path(p)) for p in find_results(root)])


def recorded_tables(folder: Path = RECORDED) -> list[Table]:
    """Every sweep's table from the committed record, docs/results/<sweep>.csv, marked as recorded."""
    return _in_paper_order([build_table(read_rows(p), source=_shown_path(p), recorded=True)
                            for p in find_recorded(folder)])


def live_or_recorded(found: list[Table], recorded: list[Table], kind: str) -> list[Table]:
    """The tables of one kind: this outputs folder's sweeps when it has any, else the committed record's."""
    return of_kind(found, kind) or of_kind(recorded, kind)


def table_of_run(run_name: str) -> Optional[Table]:
    """One run's own results (retrieval, and re-ranking if it ran) as a table, or None if it has none yet.
    The run may still be going (notebook 05 is part of it), and its metrics may come from an earlier call
    of the runner (`--only 05`), so any metrics in the folder count."""
    row = read_run_folder(run_dir(run_name), fresh_only=False)
    if row.get("R@1") is None:
        return None
    row |= {"sweep": run_name, "table": OWN_TABLE, "variant": run_name, "run": run_name, "source_run": run_name,
            "seed": row.get("param.seed", 0), "label": run_name, "status": "ok"}
    return build_table(pd.DataFrame([row]), run_name, source=f"outputs/{run_name}")


def of_kind(tables: list[Table], kind: str) -> list[Table]:
    return [t for t in tables if t.kind == kind]


def kinds_beyond_paper() -> list[str]:
    """The registered table kinds the paper has no table of: a sweep of its own (''), and any kind added since
    (notebook 05's last section shows them; the paper's tables have a section each)."""
    return [name for name in TABLE_KINDS if kind_of(name).paper is None]


def recipe_note(tables: list[Table], this_run: Optional[Table] = None) -> str:
    """One line under a figure of several sources: each one's recipe, and whether they differ (then only the
    changes within a source compare, not the levels across them)."""
    def reranked(t):  # a figure of re-ranking draws only the sources with re-ranked rows
        return t.kind_spec.all_reranked or ("stage" in t.rows and (t.rows["stage"].fillna("retrieval") != "retrieval").any())

    shown = [t for t in [*tables, this_run] if t is not None and t.recipe and reranked(t)]
    if not shown:
        return "No source to compare yet."
    said = "; ".join(f"{'this run' if t is this_run else t.name}{' (recorded)' if t.recorded else ''}: {t.recipe}"
                     for t in shown)
    epochs = {tuple(trained_epochs(t.runs)) for t in shown}
    if len(epochs) > 1:
        return (f"Recipes: {said}. They trained for different numbers of epochs, so their levels differ for that "
                "reason alone: compare each source's change from its own retrieval bars, not heights across panels.")
    return f"Recipes: {said}. Same training budget throughout."
