"""The embedded cross-view world: procedural scenes rendered as satellite, drone and street views and
written in the University-1652 layout (see build.py for the folder contract)."""
from .build import WORLD_VERSION, WorldSpec, ensure_world, render_location

__all__ = ["WORLD_VERSION", "WorldSpec", "ensure_world", "render_location"]
