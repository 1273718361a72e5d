"""The test gallery past University-1652's tiles: folders of satellite tiles that join it as distractors.

University-160k is University-1652's test set with 167,486 more satellite tiles (its gallery_satellite_160k
folder, names only, no building labels); any folder of tiles works the same way. Extra tiles carry the building
id EXTRA, which no query asks for: under the official protocol they compete as distractors, under
distractors_dropped they are junk. Answer files name a tile by its file stem, so a stem may occur once in the
whole gallery. On the embedded world, world_extra_distractors renders that many satellite-only tiles
(world/extra.py) and they join first, before the extra_gallery folders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .u1652 import DatasetError, ImageItem, RetrievalSet, _is_image

EXTRA = "extra"   # the building id of every extra tile


def extra_items(folders: Sequence[Path | str], taken: Sequence[str] = (), key: str = "extra_gallery") -> list[ImageItem]:
    """The tiles of `folders` (searched recursively, sorted; hidden files skipped) as gallery items, validated:
    each folder exists and holds images, and no tile's name (file stem) repeats one in `taken` or another's."""
    seen = set(taken)
    items = []
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"{key}: {folder} is not a folder (expected a folder of satellite tiles, "
                               "e.g. University-160k's gallery_satellite_160k)")
        tiles = sorted(p for p in folder.rglob("*") if _is_image(p) and not any(
            part.startswith(".") for part in p.relative_to(folder).parts))
        if not tiles:
            raise DatasetError(f"{key}: {folder} holds no .jpg, .jpeg or .png tiles")
        for p in tiles:
            if p.stem in seen:
                raise DatasetError(f"{key}: tile {p} is named {p.stem!r} like another gallery tile; answer files "
                                   "name tiles by file stem, so each stem may occur once in the gallery")
            seen.add(p.stem)
            items.append(ImageItem(p, EXTRA, p.stem))
    return items


def with_extra_tiles(cfg, test: RetrievalSet, progress: bool = True) -> RetrievalSet:
    """The run's test set: the queries against the gallery plus the world's rendered tiles and extra_gallery's."""
    extra = []
    if cfg.is_embedded and cfg.world_extra_distractors:
        from .world import WorldSpec
        from .world.extra import extra_tiles

        extra = [ImageItem(p, EXTRA, p.stem)
                 for p in extra_tiles(WorldSpec.from_params(cfg), cfg.world_extra_distractors, show=progress)]
    if not extra and not cfg.extra_gallery:
        return test
    extra += extra_items(cfg.extra_gallery, [g.name for g in test.gallery] + [e.name for e in extra])
    return RetrievalSet(test.queries, test.gallery + extra)
