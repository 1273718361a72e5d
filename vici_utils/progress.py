"""One progress-bar factory for the whole package.

Widget bars freeze at 0 % in notebooks saved by papermill, and text bars that refresh often fill logs,
so headless runs (papermill sets VICI_HEADLESS=1, as does any non-interactive use) get plain text bars
that refresh rarely; an interactive Jupyter session gets widget bars.
"""
from __future__ import annotations

import importlib.util
import os
import sys

from tqdm import tqdm as _text_tqdm


def _interactive_notebook() -> bool:
    if os.environ.get("VICI_HEADLESS"):
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def progress(iterable=None, **kwargs):
    """tqdm with sensible defaults; `disable=True` silences it (tests)."""
    if _interactive_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as _nb_tqdm

        return _nb_tqdm(iterable, **kwargs)
    headless = not sys.stderr.isatty()
    kwargs.setdefault("mininterval", 5.0 if headless else 0.2)
    kwargs.setdefault("dynamic_ncols", not headless)
    return _text_tqdm(iterable, **kwargs)
