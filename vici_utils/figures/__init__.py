"""Figures for the notebooks, one module per notebook topic. Every figure says which data and model it shows."""
from __future__ import annotations

from pathlib import Path


def describe_data(cfg) -> str:
    if cfg.is_embedded:
        return (f"embedded world (seed {cfg.world_seed}, {cfg.world_train_locations} train / "
                f"{cfg.world_test_locations} test + {cfg.world_distractors} distractor locations, "
                f"difficulty {cfg.world_difficulty:g})")
    return f"University-1652 at {Path(cfg.data_root).name or cfg.data_root}"


def describe_model(cfg) -> str:
    if cfg.init_checkpoint and cfg.epochs == 0:
        weights = f"checkpoint {Path(cfg.init_checkpoint).name}"
    elif cfg.pretrained is True:
        weights = "hub weights"
    elif isinstance(cfg.pretrained, str):
        weights = f"weights {Path(cfg.pretrained).name}"
    else:
        weights = "from scratch"
    towers = "shared tower" if cfg.shared_towers else "two towers"
    return f"{cfg.backbone} ({weights}, {towers}, {cfg.image_size or 'native'} px, drone P={cfg.drone_rate:g})"


def stamp(fig, cfg, model: str | None = None, data: str | None = None):
    """Write 'data: ... | model: ... | run: ...' under a figure, so a figure copied out of context still says
    where it came from. Pass model='' for figures of data alone."""
    model = describe_model(cfg) if model is None else model
    parts = [f"data: {data or describe_data(cfg)}"]
    if model:
        parts.append(f"model: {model}")
    parts.append(f"run: {cfg.run_name}")
    fig.text(0.01, 0.005, " | ".join(parts), fontsize=7, color="0.35", ha="left", va="bottom", wrap=True)
    fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, 0.12))
    return fig
