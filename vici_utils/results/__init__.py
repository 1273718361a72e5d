"""Results: our runs' numbers, read from outputs/ or from the committed record, set beside the paper's tables.

    rows          one run folder -> one flat row (the one reader of run.json); seeds -> mean and spread;
                  where a sweep's rows live (outputs/<sweep>/results.csv, docs/results/<sweep>.csv)
    paper_tables  Table, one shaping function per kind of table (TableKind, registered in vici_utils.registry),
                  our rows beside the paper's;
                  load_sweep_tables (outputs/) and recorded_tables (docs/results/) build them the same way
    render        cells as text, markdown, the record and the README results section, display in a notebook
    cli           python -m vici_utils results [--readme README.md] [--print] [--no-record]

The names notebooks 04 and 05 use are importable from here.
"""
from .findings import beside_sweep
from .paper_tables import (Table, build_table, kind_of, kinds_beyond_paper, live_or_recorded, load_sweep_tables,
                           of_kind, recipe, recipe_note, recorded_tables, table_of_run)
from .render import (display_frame, heading, paper_frame, readme_section, record_sweeps, show, to_markdown,
                     total_run_time, write_readme)
from .rows import (RECORDED, aggregate_seeds, find_recorded, overview, read_manifest, read_run_folder,
                   recorded_results, rerank_gains, sweep_results)

__all__ = ["beside_sweep", "Table", "build_table", "kind_of", "kinds_beyond_paper", "live_or_recorded",
           "load_sweep_tables", "of_kind",
           "recipe", "recipe_note", "recorded_tables", "table_of_run", "display_frame", "heading", "paper_frame",
           "readme_section", "record_sweeps", "show", "to_markdown", "total_run_time", "write_readme", "RECORDED",
           "aggregate_seeds", "find_recorded", "overview", "read_manifest", "read_run_folder", "recorded_results",
           "rerank_gains", "sweep_results"]
