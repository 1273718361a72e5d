"""The paper's tables, regenerated: read run folders and sweep results, average seeds, set our rows beside
the paper's published numbers, and write the README results section.

    python -m vici_utils results [--readme README.md] [--print]

Our numbers always come from outputs/ (run manifests, metrics.json files, sweeps' results.csv); the paper's
from vici_utils.paper, always labelled as the paper's. Nothing here is typed by hand.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..params import ParamsError
from ..paths import REPO_ROOT
from .paper_tables import load_sweep_tables
from .render import readme_section, total_run_time, write_readme


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vici_utils results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"), help="the README to update")
    parser.add_argument("--print", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args(argv)
    text = readme_section(load_sweep_tables(), cost=total_run_time())
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
