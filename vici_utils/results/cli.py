"""The paper's tables, regenerated: record every finished sweep's rows as committed data, then write the README
results section from that record.

    python -m vici_utils results [--readme README.md] [--print] [--no-record]

Step 1 copies outputs/<sweep>/results.csv (the rows a sweep collected from its run folders: metrics, recipe,
seed, code version, hardware, dates) to docs/results/<sweep>.csv. Step 2 builds every table from
docs/results/*.csv, sets the paper's published numbers beside ours (always labelled as the paper's) and writes
the section between README.md's results markers. Notebooks 04 and 05 read the same files through the same
loader (results.recorded_tables) when their outputs folder has no sweep. Nothing here is typed by hand.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..params import ParamsError
from ..paths import REPO_ROOT
from .paper_tables import recorded_tables
from .render import readme_section, record_sweeps, total_run_time, write_readme
from .rows import RECORDED, find_recorded


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vici_utils results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"), help="the README to update")
    parser.add_argument("--record", default=str(RECORDED), help="the folder of the committed record")
    parser.add_argument("--print", action="store_true", help="print the section instead of writing it")
    parser.add_argument("--no-record", action="store_true", help="leave the record as it is (README only)")
    args = parser.parse_args(argv)
    record = Path(args.record)
    if not args.no_record:
        written, skipped = record_sweeps(folder=record)
        for path in written:
            print(f"recorded {path}")
        for line in skipped:
            print(line)
    text = readme_section(recorded_tables(record), cost=total_run_time(paths=find_recorded(record)))
    if args.print:
        print(text)
        return 0
    try:
        print(f"results section written to {write_readme(text, Path(args.readme))}")
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
