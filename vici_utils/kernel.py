"""This clone's Jupyter kernel: a kernelspec inside the clone's own environment (sys.prefix/share/jupyter), so
JupyterLab launched from that environment (make lab) and papermill run from it start this clone's Python, import
this clone's package and write into this clone's outputs/.

Set-ups before this one registered `vici-workbook` per user (~/.local/share/jupyter), pointing at whichever clone
ran `make setup` last; Jupyter looks there before sys.prefix, so that stale spec is removed here.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable

from .paths import REPO_ROOT

NAME = "vici-workbook"  # the kernel the committed notebooks name in their metadata


def install(log: Callable[[str], None] = print, prefix: str = sys.prefix) -> Path:
    """Write the kernelspec into `prefix` (this environment) and remove a per-user one that would shadow it."""
    from ipykernel.kernelspec import install as install_kernelspec
    from jupyter_core.paths import jupyter_data_dir

    stale = Path(jupyter_data_dir()) / "kernels" / NAME
    if stale.is_dir():
        shutil.rmtree(stale)
        log(f"removed {stale}: a per-user '{NAME}' kernel runs whichever clone registered it last")
    path = Path(install_kernelspec(kernel_name=NAME, display_name=f"VICI workbook ({REPO_ROOT})", prefix=prefix))
    log(f"kernel '{NAME}' -> {sys.executable} ({path})")
    return path
