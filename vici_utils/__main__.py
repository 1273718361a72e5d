"""Command line: `python -m vici_utils run|world|sweep|results|headline|render|kernel|params-doc ...`."""
from __future__ import annotations

import argparse
import errno
import sys

from .params import ParamsError, load, parse_set

INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C


def _run(args) -> int:
    from .runner import RunFailed, RunInterrupted, run

    cfg = load(args.params, parse_set(args.set))
    only = args.only.split(",") if args.only else None
    try:
        run(cfg, only=only)
    except RunFailed as e:
        print(f"\nRUN FAILED: {e}", file=sys.stderr)
        return 1
    except RunInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return INTERRUPTED
    return 0


def _not_writable(e: OSError) -> str:
    """One sentence for a folder we cannot write; under the outputs folder, say how to move it."""
    from .paths import outputs_root

    where = e.filename or "?"
    root = outputs_root()
    if str(where).startswith(str(root)):
        return (f"cannot write {where} ({e.strerror}): the outputs folder {root} must be writable; make it so, "
                "or set VICI_OUTPUTS to a folder you can write (e.g. export VICI_OUTPUTS=$HOME/vici_outputs)")
    return f"{e.strerror}: {where}"


def _world(args) -> int:
    from .world import WorldSpec, ensure_world

    cfg = load(args.params, parse_set(args.set))
    print(ensure_world(WorldSpec.from_params(cfg)))
    return 0


def _render(args) -> int:
    from pathlib import Path

    from .rendered import render

    for page in render([Path(b) for b in args.notebooks], Path(args.out_dir)):
        print(f"{page}: {page.stat().st_size / 1e6:.1f} MB")
    return 0


def _sweep(argv) -> int:
    from .sweep import main as sweep_main

    return sweep_main(argv)


def _results(argv) -> int:
    from .results.cli import main as results_main

    return results_main(argv)


def _kernel(args) -> int:
    from .kernel import install

    install()
    return 0


def _params_doc(args) -> int:
    from .params_doc import PARAMETERS_DOC, parameters_markdown

    PARAMETERS_DOC.write_text(parameters_markdown())
    print(f"wrote {PARAMETERS_DOC}")
    return 0


def _headline(argv) -> int:
    from .headline import main as headline_main

    return headline_main(argv)


# These parse their own arguments (options may come first).
PASS_THROUGH = {"sweep": _sweep, "results": _results, "headline": _headline}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # outside a run (a run says more itself): one line, no traceback
        print("\ninterrupted; run the same command again to start over", file=sys.stderr)
        return INTERRUPTED
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            from .runner import disk_full

            print(f"error: {disk_full(e.filename or '?', e.strerror)}", file=sys.stderr)
            return 1
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        print(f"error: {_not_writable(e)}", file=sys.stderr)
        return 1


def _main(argv) -> int:
    if argv and argv[0] in PASS_THROUGH:
        try:
            return PASS_THROUGH[argv[0]](argv[1:])
        except ParamsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
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
    sub.add_parser("sweep", help="run every variant of sweep files and collect results.csv (sweep --help)")
    sub.add_parser("results", help="write the README results section from the sweeps (results --help)")
    p = sub.add_parser("render", help="executed notebooks -> small HTML pages (as make docs renders its run)")
    p.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="executed .ipynb files")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the pages")
    p.set_defaults(fn=_render)
    sub.add_parser("kernel", help="register this clone's Jupyter kernel inside its environment (make setup does)"
                   ).set_defaults(fn=_kernel)
    sub.add_parser("headline", help="run the workbook timed; write the README headline and docs/rendered/ "
                   "(headline --help)")
    sub.add_parser("params-doc", help="write docs/parameters.md from the descriptions in vici_utils/params.py"
                   ).set_defaults(fn=_params_doc)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
