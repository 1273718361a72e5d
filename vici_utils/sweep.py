"""Sweeps: many runs of the workbook that differ in a few parameters, collected into one results table.

    python -m vici_utils sweep params/tables/drone_rate.yaml [more sweep files] [--set key=value]...
                               [--dry-run] [--force] [--collect-only]

A sweep file names a base parameters file and a list of variants:

    sweep: drone_rate            # runs go to outputs/<sweep>/<variant>/, results to outputs/<sweep>/results.csv
    table: drone_rate            # its kind of table (vici_utils.registry.TABLE_KINDS), optional
    base: ../default.yaml        # parameters file, relative to this file
    set: {epochs: 40}            # applied to every variant (optional)
    seeds: [0, 1, 2]             # optional: every variant once per seed, named <variant>_s<seed>
    only: ["02", "03", "04"]     # optional: the notebooks each run executes (default: all; a variant may
                                 #   name its own)
    variants:
      - {name: p0, set: {drone_rate: 0.0}, label: "P = 0"}
      - {name: p0.3, set: {drone_rate: 0.3}, paper_row: "+ Drone Data", rerank_paper_row: "+ VLM Re-rank (Ours)"}

A variant may evaluate the model another (earlier) variant trained instead of training its own:
`model_from: flash` runs only the notebooks after training, with init_checkpoint pointing at that
variant's best.pt (same seed) and epochs 0; its training parameters must equal that variant's. Re-ranking
variants (by backend or model) use it so one trained model serves them all.

A variant's parameters are: base file < sweep `set` < variant `set` < seed < --set. Every variant is
validated before anything runs. A run that already finished (manifest status ok) with the same resolved
parameters and the notebooks asked for is not run again, so an interrupted sweep resumes where it stopped;
a finished run elsewhere under outputs/ with the same parameters (the run name aside: another sweep's
variant, or the default run) is reused rather than recomputed, and results.csv names the run it read.
A failing variant is recorded and the sweep goes on; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .params import (RERANK_KEYS, TRAIN_KEYS, Params, ParamsError, absolutize, as_stored, parse_set,
                     read_params_file, read_yaml, upgrade, validate)
from .paths import outputs_root
from .registry import OWN_TABLE, TABLE_KINDS
from .results.paper_tables import kind_of
from .results.rows import read_run_folder
from .run_folder import BEST, MANIFEST, RESULTS, TRAIN, read_manifest, run_dir, trained_checkpoint, write_atomic

SEGMENT = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$"  # one folder name (run_name's pattern, without '/')
RESERVED = {"run_name": "the sweep names each run <sweep>/<variant>", "seed": "list seeds under `seeds:`"}
TRAINING_NOTEBOOKS = ("01", "02")  # data exploration and training: what a model_from run leaves out
# notebook numbers as two-digit strings (YAML reads [02, 3] as ints)
Notebooks = Annotated[list[str], BeforeValidator(lambda v: [str(x).zfill(2) for x in v] if isinstance(v, list) else v)]
# parameters a sweep sets, under today's names (params.upgrade: a sweep file of an earlier version still runs)
Overrides = Annotated[dict[str, Any], BeforeValidator(lambda v: upgrade(v) if isinstance(v, dict) else v)]


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=SEGMENT, description="folder name of the run under outputs/<sweep>/")
    overrides: Overrides = Field(default_factory=dict, alias="set")
    label: Optional[str] = Field(None, description="row label in the tables (default: name)")
    paper_row: Optional[str] = Field(None, description="the paper row this variant's retrieval stands beside")
    rerank_paper_row: Optional[str] = Field(None, description="the paper row its re-ranked result stands beside")
    model_from: Optional[str] = Field(None, description="an earlier variant whose trained model this one evaluates")
    only: Optional[Notebooks] = Field(None, description="notebooks for this variant (default: the sweep's)")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sweep: str = Field(pattern=SEGMENT)
    base: str
    table: Optional[str] = None  # a table kind; None = a table of its own
    overrides: Overrides = Field(default_factory=dict, alias="set")
    seeds: Optional[list[int]] = Field(None, min_length=1)
    only: Optional[Notebooks] = None
    variants: list[Variant] = Field(min_length=1)

    @field_validator("table")
    @classmethod
    def _registered_table(cls, v):  # checked when validated, so a kind registered at run time counts
        if v is not None and (v == OWN_TABLE or v not in TABLE_KINDS):
            kinds = ", ".join(repr(k) for k in TABLE_KINDS if k != OWN_TABLE)
            raise ValueError(f"table {v!r} is not a registered kind of table (vici_utils.registry.TABLE_KINDS: "
                             f"{kinds}); leave `table:` out for a table of its own")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v):
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _check_variants(self):
        names = [v.name for v in self.variants]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"variant names must be distinct; repeated: {', '.join(twice)}")
        trains = {v.name: v.model_from is None for v in self.variants}
        for i, v in enumerate(self.variants):
            if v.model_from is not None and (v.model_from not in names[:i] or not trains[v.model_from]):
                raise ValueError(f"variant '{v.name}': model_from {v.model_from!r} must name an earlier variant "
                                 f"that trains its own model (earlier: {', '.join(names[:i]) or 'none'})")
        published = kind_of(self.table).paper if self.table else None
        if published is not None:  # the paper's numbers are optional: a kind without them names no paper rows
            rows = set(published.iloc[:, 0])
            for v in self.variants:
                for field in ("paper_row", "rerank_paper_row"):
                    row = getattr(v, field)
                    if row is not None and row not in rows:
                        raise ValueError(f"variant '{v.name}': {field} {row!r} is not a row of the paper's "
                                         f"'{self.table}' table ({', '.join(map(repr, sorted(rows)))})")
        return self


@dataclass
class PlannedRun:
    variant: Variant
    name: str                              # folder under outputs/<sweep>/: variant name, plus _s<seed> with seeds
    seed: Optional[int]
    params: Params
    only: Optional[list[str]] = None       # notebook numbers to execute (None: all)
    model_from: Optional[PlannedRun] = None  # the run whose trained model this one evaluates

    @property
    def run_name(self) -> str:
        return self.params.run_name


@dataclass
class Sweep:
    spec: SweepSpec
    path: Path
    runs: list[PlannedRun]
    selected: Optional[set[str]] = None  # run names to execute (None: all); see select_variants

    @property
    def name(self) -> str:
        return self.spec.sweep

    @property
    def swept_keys(self) -> list[str]:
        keys = [k for v in self.spec.variants for k in v.overrides]
        if self.spec.seeds:
            keys.append("seed")
        return list(dict.fromkeys(keys))

    @property
    def folder(self) -> Path:
        return outputs_root() / self.name


def _check_keys(overrides: dict, where: str) -> None:
    for key in overrides:
        if key in RESERVED:
            raise ParamsError(f"{where}: '{key}' cannot be set in a sweep ({RESERVED[key]})")
    validate(dict(overrides), where)  # unknown keys and bad values, named with where they were written


def load(path: str | Path, overrides: Optional[dict] = None) -> Sweep:
    """Read and validate a sweep file and every run it expands to; raises ParamsError naming the file,
    the variant and the key."""
    path = Path(path)
    raw = read_yaml(path)
    if "sweep" not in raw and "variants" not in raw:
        raise ParamsError(f"{path}: not a sweep file (expected the keys sweep, base and variants; a plain "
                          "parameters file runs with `python -m vici_utils run`)")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: invalid sweep file"]
        for err in e.errors():
            loc = list(err["loc"])
            if len(loc) >= 2 and loc[0] == "variants" and isinstance(loc[1], int):
                name = (raw.get("variants") or [{}])[loc[1]]
                name = name.get("name") if isinstance(name, dict) else None
                loc[:2] = [f"variant '{name}'" if name else f"variants[{loc[1]}]"]
            where = ".".join(str(p) for p in loc)
            lines.append(f"  {where + ': ' if where else ''}{err['msg']}"
                         + (f" (got {err['input']!r})" if err["type"] != "missing" and where else ""))
        raise ParamsError("\n".join(lines)) from None

    base_path = (path.parent / spec.base).resolve()
    if not base_path.is_file():
        raise ParamsError(f"{path}: base parameters file {spec.base!r} not found (looked for {base_path}; "
                          "base is relative to the sweep file)")
    overrides = overrides or {}
    _check_keys(overrides, "--set")
    base = read_params_file(base_path)
    validate(base | overrides, f"{base_path} (the base of {path})")
    _check_keys(spec.overrides, f"{path}: set")
    for v in spec.variants:
        _check_keys(v.overrides, f"{path}: variant '{v.name}'")

    from .runner import discover_notebooks

    runs: list[PlannedRun] = []
    for v in spec.variants:
        only = v.only or spec.only
        numbers = [b.name[:2] for b in discover_notebooks(only)]  # unknown numbers fail here, before any run
        for seed in spec.seeds or [None]:
            name = v.name if seed is None else f"{v.name}_s{seed}"
            raw_run = base | spec.overrides | v.overrides | ({"seed": seed} if seed is not None else {})
            raw_run |= overrides | {"run_name": f"{spec.sweep}/{name}"}
            params = absolutize(validate(raw_run, f"{path}: variant '{name}'"))
            run = PlannedRun(v, name, seed, params, only)
            if v.model_from:
                run.model_from = next(r for r in runs if r.variant.name == v.model_from and r.seed == seed)
                _evaluate_only(run, path, numbers)
            runs.append(run)
    index = finished_runs()
    for run in runs:
        if run.model_from:
            bind_model(run, index)
    return Sweep(spec, path, runs)


def _evaluate_only(run: PlannedRun, path: Path, numbers: list[str]) -> None:
    """Make a model_from run evaluate its source's model: same training parameters, no training notebooks."""
    src = run.model_from
    for key in TRAIN_KEYS:
        if key not in ("init_checkpoint", "epochs") and getattr(run.params, key) != getattr(src.params, key):
            raise ParamsError(f"{path}: variant '{run.name}' takes its model from '{src.name}' but sets the "
                              f"training parameter {key} to {getattr(run.params, key)!r} (the model was trained "
                              f"with {getattr(src.params, key)!r}); give it its own training instead")
    run.params = run.params.model_copy(update={"epochs": 0})
    run.only = [n for n in numbers if n not in TRAINING_NOTEBOOKS]
    if not run.only:
        raise ParamsError(f"{path}: variant '{run.name}' (model_from '{src.name}') has no notebook to run "
                          f"after training (only: {', '.join(numbers)})")


def checkpoint_of(folder: Path) -> Path:
    """The checkpoint the source run evaluates (run_folder.trained_checkpoint); best.pt until it has trained."""
    return trained_checkpoint(folder / TRAIN) or folder / TRAIN / BEST


def bind_model(run: PlannedRun, index: Optional[dict[Path, dict]] = None) -> None:
    """Point a model_from run at the checkpoint of its source, wherever the source's finished run lives
    (its own folder, or a reused run elsewhere); looked up again just before the run executes."""
    src = run.model_from
    folder = find_finished(src, _wanted_notebooks(src.only), index) or run_dir(src.run_name)
    run.params = run.params.model_copy(update={"init_checkpoint": str(checkpoint_of(folder))})


# --- finished runs ------------------------------------------------------------------------------------------

_DEFAULTS = {k: f.default for k, f in Params.model_fields.items()}


def _comparable(params: dict, ignore: tuple = ()) -> str:
    """Parameters as a canonical string, run name and `ignore` aside (the same work under another name is the same
    work). A parameter added after a run was made counts at its default, which is how that run behaved."""
    skip = {"run_name", *ignore}
    return json.dumps({k: v for k, v in {**_DEFAULTS, **params}.items() if k not in skip}, sort_keys=True,
                      default=str)


def _wanted_notebooks(only: Optional[list[str]]) -> list[str]:
    from .runner import discover_notebooks

    return [b.name for b in discover_notebooks(only)]


def finished(manifest: Optional[dict], params: Params, notebooks: list[str]) -> bool:
    """True when a manifest records a finished run of these parameters that executed these notebooks."""
    if not manifest or manifest.get("status") != "ok":
        return False
    ignore = () if "04_rerank.ipynb" in notebooks else RERANK_KEYS  # re-ranking keys matter to notebook 04 only
    if _comparable(as_stored(upgrade(manifest.get("params", {}))), ignore) != _comparable(params.model_dump(), ignore):
        return False
    ok = {n["name"] for n in manifest.get("notebooks", []) if n.get("status") == "ok"}
    return set(notebooks) <= ok


def finished_runs() -> dict[Path, dict]:
    """Manifests of the finished runs under outputs/, by folder ('run' or 'sweep/variant')."""
    root = outputs_root()
    manifests = sorted(root.glob(f"*/{MANIFEST}")) + sorted(root.glob(f"*/*/{MANIFEST}"))
    found = {f.parent: read_manifest(f.parent) for f in manifests}
    return {folder: m for folder, m in found.items() if m and m.get("status") == "ok"}


def find_finished(run: PlannedRun, notebooks: list[str], index: Optional[dict[Path, dict]] = None) -> Optional[Path]:
    """The folder of a finished run this planned run can use: its own first, else any other with the same
    parameters. index: finished_runs(), when the caller looks up many runs at once."""
    index = finished_runs() if index is None else index
    own = run_dir(run.run_name)
    for folder in [own, *(f for f in index if f != own)]:
        if finished(index.get(folder), run.params, notebooks):
            return folder
    return None


# --- results ------------------------------------------------------------------------------------------------

def collect(sweep: Sweep, failures: Optional[dict[str, str]] = None) -> pd.DataFrame:
    """One row per planned run: what was swept, the metrics and where they came from; written to
    outputs/<sweep>/results.csv."""
    index = finished_runs()
    rows = []
    for r in sweep.runs:
        source = find_finished(r, _wanted_notebooks(r.only), index)
        folder = source or run_dir(r.run_name)
        row = {"sweep": sweep.name, "table": sweep.spec.table or "", "variant": r.variant.name, "run": r.run_name,
               "seed": r.params.seed, "label": r.variant.label or r.variant.name,
               "paper_row": r.variant.paper_row or "", "rerank_paper_row": r.variant.rerank_paper_row or "",
               "model_from": r.model_from.run_name if r.model_from else ""}
        row |= {f"param.{k}": getattr(r.params, k) for k in sweep.swept_keys}
        found = read_run_folder(folder, with_model_stats=kind_of(sweep.spec.table or OWN_TABLE).needs_model_stats)
        if source is None:
            status = (found.get("status") or "missing") if found.get("status") != "ok" else "stale"
            found = {k: v for k, v in found.items() if k in ("status", "error")}
            found["status"] = status
        if failures and r.run_name in failures:
            found["error"] = failures[r.run_name]
        row |= {"source_run": str(folder.relative_to(outputs_root())) if source else ""} | found
        rows.append(row)
    df = pd.DataFrame(rows)
    sweep.folder.mkdir(parents=True, exist_ok=True)
    write_atomic(sweep.folder / RESULTS, df.to_csv(index=False))
    return df


# --- running ------------------------------------------------------------------------------------------------

def plan(sweep: Sweep, force: bool = False, upcoming: Optional[dict] = None) -> list[tuple[PlannedRun, Optional[Path]]]:
    """Each planned run with the finished run it can use (None: it has to run). upcoming collects the runs
    planned so far (by parameters), so a dry run of several sweeps counts a run shared by two of them once."""
    index = finished_runs()
    out = []
    for r in sweep.runs:
        notebooks = set(_wanted_notebooks(r.only))
        src = None if force else find_finished(r, list(notebooks), index)
        if src is None and upcoming is not None:
            key = _comparable(r.params.model_dump())
            if key in upcoming and notebooks <= upcoming[key][1]:
                src = run_dir(upcoming[key][0])
            else:
                upcoming[key] = (r.run_name, notebooks)
        out.append((r, src))
    return out


def select_variants(sweep: Sweep, names: list[str]) -> Sweep:
    """Run only the named variants (and the runs whose models they evaluate); results.csv keeps every row."""
    known = [v.name for v in sweep.spec.variants]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ParamsError(f"{sweep.path}: no variant {', '.join(map(repr, unknown))} (variants: {', '.join(known)})")
    keep = [r for r in sweep.runs if r.variant.name in names]
    sweep.selected = {r.run_name for r in keep} | {r.model_from.run_name for r in keep if r.model_from}
    return sweep


def estimate_s(sweep: Sweep) -> Optional[float]:
    """Mean duration of this sweep's finished runs: the best guess at what each remaining one costs."""
    durations = [m["duration_s"] for f in sorted(sweep.folder.glob(f"*/{MANIFEST}"))
                 if (m := read_manifest(f.parent)) and m.get("status") == "ok" and m.get("duration_s")]
    return sum(durations) / len(durations) if durations else None


def describe_plan(sweep: Sweep, planned, log: Callable[[str], None] = print) -> int:
    todo = sum(src is None for _, src in planned)
    log(f"sweep '{sweep.name}' ({sweep.path}): {len(planned)} runs, {todo} to run, "
        f"{len(planned) - todo} done or shared with another run")
    for r, src in planned:
        swept = ", ".join(f"{k}={getattr(r.params, k)}" for k in sweep.swept_keys)
        swept += f"  [notebooks {','.join(n[:2] for n in _wanted_notebooks(r.only))}]"
        if src is None:
            state = "run" + (f" (model from {r.model_from.run_name})" if r.model_from else "")
        elif src == run_dir(r.run_name):
            state = "done"
        else:
            state = f"reuse {src.relative_to(outputs_root())}" + ("" if (src / MANIFEST).is_file() else
                                                                  " (once it has run)")
        log(f"  {r.run_name:<32} {swept:<60} {state}")
    return todo


def run_sweep(sweep: Sweep, force: bool = False, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run what is not done yet, one variant after another; results.csv is rewritten after each run."""
    from .runner import RunFailed, run

    failures: dict[str, str] = {}
    describe_plan(sweep, plan(sweep, force), log)
    try:
        for r in sweep.runs:
            if sweep.selected is not None and r.run_name not in sweep.selected:
                continue
            if r.model_from:
                bind_model(r)
                if not Path(r.params.init_checkpoint).is_file():
                    failures[r.run_name] = (f"no trained model to evaluate: {r.params.init_checkpoint} is missing "
                                            f"(run {r.model_from.run_name} did not finish)")
                    log(f"VARIANT SKIPPED {r.run_name}: {failures[r.run_name]}")
                    continue
            # looked up again now: an earlier variant of this sweep may have just done the same work
            if not force and find_finished(r, _wanted_notebooks(r.only)) is not None:
                continue
            t0 = time.time()
            try:
                run(r.params, only=r.only, log=log)
            except RunFailed as e:
                failures[r.run_name] = str(e).splitlines()[0]
                log(f"VARIANT FAILED {r.run_name}: {e}")
            except Exception as e:  # noqa: BLE001 - one broken variant must not lose the others' results
                failures[r.run_name] = f"{type(e).__name__}: {e}"
                log(f"VARIANT FAILED {r.run_name}: {type(e).__name__}: {e}")
            log(f"  {r.run_name}: {time.time() - t0:.0f} s")
            collect(sweep, failures)
    finally:
        df = collect(sweep, failures)
    log(f"sweep '{sweep.name}': {(df['status'] == 'ok').sum()}/{len(df)} runs ok -> {sweep.folder / 'results.csv'}")
    return df


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vici_utils sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", help="sweep files, e.g. params/tables/drone_rate.yaml")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a parameter in every run (repeatable; wins over the sweep file)")
    parser.add_argument("--dry-run", action="store_true", help="validate and show what would run; run nothing")
    parser.add_argument("--force", action="store_true", help="run every variant again, even finished ones")
    parser.add_argument("--collect-only", action="store_true", help="only rewrite results.csv from what exists")
    parser.add_argument("--variants", metavar="A,B", help="run only these variants (and the ones they take models from)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_set(args.set)
        sweeps = [load(s, overrides) for s in args.sweeps]  # all of them valid before anything runs
        if args.variants:
            sweeps = [select_variants(s, [n.strip() for n in args.variants.split(",") if n.strip()]) for s in sweeps]
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.dry_run or args.collect_only:
        upcoming: dict = {}
        for s in sweeps:
            if args.collect_only:
                df = collect(s)
                print(f"{s.folder / 'results.csv'}: {len(df)} rows, {(df['status'] == 'ok').sum()} ok")
            else:
                todo = describe_plan(s, plan(s, args.force, upcoming))
                each = estimate_s(s)
                if todo and each:
                    print(f"  estimate: {todo} x {each / 60:.1f} min = {todo * each / 60:.0f} min "
                          "(mean of this sweep's finished runs)")
        return 0

    ok = True
    for s in sweeps:
        try:
            df = run_sweep(s, force=args.force)
        except KeyboardInterrupt:  # Ctrl-C: one line, not the runner's traceback
            print(f"\nSweep '{s.name}' interrupted. {s.folder / 'results.csv'} lists the runs finished so far; run "
                  "the same command again to resume (finished runs are skipped, the interrupted one reuses its "
                  "saved checkpoints and caches).", file=sys.stderr)
            return 130
        ran = df if s.selected is None else df[df["run"].isin(s.selected)]
        ok &= bool((ran["status"] == "ok").all())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
