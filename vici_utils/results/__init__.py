"""Results: our runs' numbers, read from outputs/ and set beside the paper's published tables.

    rows          one run folder -> one flat row (the one reader of run.json); seeds -> mean and spread
    paper_tables  Table, one shaping function per kind of table (KINDS), our rows beside the paper's
    render        cells as text, markdown, the README results section, display in a notebook
    cli           python -m vici_utils results [--readme README.md] [--print]

The names notebook 05 uses are importable from here.
"""
from .paper_tables import KINDS, Table, build_table, load_sweep_tables, of_kind, table_of_run
from .render import display_frame, paper_frame, readme_section, show, to_markdown, total_run_time, write_readme
from .rows import aggregate_seeds, overview, read_manifest, read_run_folder, rerank_gains, sweep_results

__all__ = ["KINDS", "Table", "build_table", "load_sweep_tables", "of_kind", "table_of_run", "display_frame",
           "paper_frame", "readme_section", "show", "to_markdown", "total_run_time", "write_readme",
           "aggregate_seeds", "overview", "read_manifest", "read_run_folder", "rerank_gains",
           "sweep_results"]
