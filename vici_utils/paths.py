"""Where things live. Every path is resolved from the repository root, never from the caller's cwd."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PARAMS_DIR = REPO_ROOT / "params"


def outputs_root() -> Path:
    """The outputs folder; `VICI_OUTPUTS` moves it (tests point it at a temporary folder)."""
    return Path(os.environ.get("VICI_OUTPUTS") or REPO_ROOT / "outputs").resolve()


def worlds_dir() -> Path:
    return outputs_root() / "worlds"


def resolve_user_path(path: str | os.PathLike, base: Path | None = None) -> Path:
    """A path a user typed: absolute as given, `~` expanded, relative to `base` (default: the cwd)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ((base or Path.cwd()) / p).resolve()
