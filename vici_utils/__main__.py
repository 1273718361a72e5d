"""Command line: `python -m vici_utils run|sweep|world ...`."""
from __future__ import annotations

import argparse
import sys

from . import params as P


def _run(args) -> int:
    from .runner import RunFailed, run

    cfg = P.load(args.params, P.parse_set(args.set))
    only = args.only.split(",") if args.only else None
    try:
        run(cfg, only=only)
    except RunFailed as e:
        print(f"\nRUN FAILED: {e}", file=sys.stderr)
        return 1
    return 0


def _world(args) -> int:
    from .world import WorldSpec, ensure_world

    cfg = P.load(args.params, P.parse_set(args.set))
    print(ensure_world(WorldSpec.from_params(cfg)))
    return 0


def _sweep(args) -> int:
    from .sweep import main as sweep_main

    return sweep_main(args.rest)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vici_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext, fn in (("run", "execute the numbered notebooks with papermill", _run),
                               ("world", "generate (or find cached) the embedded world and print its root", _world)):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("params", help="parameters file, e.g. params/default.yaml")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable)")
        if name == "run":
            p.add_argument("--only", metavar="01,03", help="run only these notebooks (by number)")
        p.set_defaults(fn=fn)
    p = sub.add_parser("sweep", help="run every variant of a sweep file and collect results.csv",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=_sweep)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except P.ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
