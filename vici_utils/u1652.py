"""Reader for the University-1652 folder layout (and the embedded world, which is written in it).

    root/train/{street,satellite,drone,google}/<building>/<image>
    root/test/{query_street,gallery_satellite}/<building>/<image>
    root/test/workshop_query_street/<name>.jpeg, workshop_gallery_satellite/<name>.jpg,
              query_street_name.txt                          (challenge layout, optional)

Quirks honoured: empty building folders (google/ has 12, gallery_street/1209 is one), mixed .jpg/.jpeg,
and the street -> satellite gallery keeps all 951 images, the 250 distractor buildings included. Hidden files
and folders (names starting with '.', such as macOS's ._*.jpg AppleDouble files) are not data and are skipped.
"""
from __future__ import annotations

import contextlib
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
VIEWS = ("street", "satellite", "drone")  # the image views of the data (folders of the training split)
CHALLENGE_QUERY_DIR = "workshop_query_street"
CHALLENGE_GALLERY_DIR = "workshop_gallery_satellite"
CHALLENGE_LIST = "query_street_name.txt"


class DatasetError(ValueError):
    """The data root is not usable; the message names the path and what was expected there."""


class DatasetWarning(UserWarning):
    """Data that is usable but not as expected (a part skipped, queries that cannot be answered)."""


@dataclass(frozen=True)
class ImageItem:
    path: Path
    building: Optional[str]  # 4-digit building id; None where it is unknown (challenge queries/gallery)
    name: str                # what answer files carry (see docs/architecture.md)


@dataclass
class RetrievalSet:
    queries: list[ImageItem]
    gallery: list[ImageItem]

    @property
    def query_ids(self) -> list[Optional[str]]:
        return [q.building for q in self.queries]

    @property
    def gallery_ids(self) -> list[Optional[str]]:
        return [g.building for g in self.gallery]

    @property
    def buildings_without_gallery(self) -> list[str]:
        """Query buildings with no gallery image (an empty gallery folder): their queries cannot be matched."""
        have = set(self.gallery_ids)
        return sorted({b for b in self.query_ids if b is not None and b not in have})

    @property
    def distractors(self) -> list[str]:
        """Gallery buildings that no query asks for."""
        asked = set(self.query_ids)
        return sorted({g.building for g in self.gallery if g.building is not None and g.building not in asked})


@dataclass
class TrainSplit:
    street: dict[str, list[Path]]
    satellite: dict[str, list[Path]]
    drone: dict[str, list[Path]]
    google: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def buildings(self) -> list[str]:
        """Buildings usable for street -> satellite training: at least one street and one satellite image."""
        return sorted(b for b in self.satellite if self.satellite[b] and self.street.get(b))


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def read_view(folder: Path) -> dict[str, list[Path]]:
    """building id -> sorted images; empty building folders stay (as empty lists) and never crash."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing folder (expected one sub-folder of images per building id)")
    return {d.name: list_images(d) for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def _items(view: dict[str, list[Path]], name_of) -> list[ImageItem]:
    return [ImageItem(p, b, name_of(p)) for b, paths in view.items() for p in paths]


@contextlib.contextmanager
def open_image(path: Path | str):
    """Image.open for data files: a missing, corrupt or truncated file, or one so large that decoding it could
    exhaust memory (Pillow's decompression-bomb limit), raises DatasetError naming its path. Pillow decodes
    lazily, so the body's errors (convert, verify, load) are caught too."""
    try:
        with Image.open(path) as im:
            yield im
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{path}: too large to open safely ({e}); the limit is Pillow's "
                           f"Image.MAX_IMAGE_PIXELS x 2 = {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels: "
                           "downscale the file (or, trusting it, raise PIL.Image.MAX_IMAGE_PIXELS)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot read this image ({e}); re-download or remove the file") from None


SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # I (32-bit integers) is read as 16-bit, as PNG/TIFF give it
WITH_ALPHA = {"RGBA", "LA", "PA", "La", "RGBa"}
AS_RGB = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", *WITH_ALPHA}
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as matplotlib and browsers show them


def orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored; 2-8 = mirrored and/or turned), 1 when there is none."""
    return int(im.getexif().get(0x0112, 1) or 1)


def to_rgb(im: Image.Image, path: Path | str) -> Image.Image:
    """8-bit RGB of any mode Pillow opens, turned upright by its EXIF orientation (the one rule for the model
    and the VLM: both see the image as a viewer shows it). 16-bit grey scales 0..65535 to 0..255; transparency
    is composited on white; float images (mode F) and modes with no RGB meaning are refused by name."""
    if orientation(im) != 1:
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in SIXTEEN_BIT:
        a = np.asarray(im, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DatasetError(f"{path}: 32-bit integer pixels outside 0..65535 (mode {mode}); convert the file to "
                               "8- or 16-bit RGB or greyscale")
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in WITH_ALPHA:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode not in AS_RGB:
        why = "floating point, range unknown" if mode == "F" else "no RGB meaning"
        raise DatasetError(f"{path}: pixel mode {mode} ({why}) cannot be read as an 8-bit RGB image; convert the "
                           "file to 8-bit RGB")
    return im.convert("RGB")


def load_image(path: Path | str, draft_size: Optional[int] = None, max_side: Optional[int] = None) -> Image.Image:
    """An image as upright 8-bit RGB (`to_rgb`). draft_size: a JPEG much bigger than it is decoded by libjpeg at
    1/2, 1/4 or 1/8 scale, still at least draft_size pixels on each side (fast; other formats are decoded at full
    size). max_side: a thumbnail whose longer side is at most max_side (what figures draw: a 12000-pixel photo
    then costs a figure kilobytes, not gigabytes)."""
    with open_image(path) as im:
        draft = min(filter(None, (draft_size, max_side)), default=None)
        if draft and im.format == "JPEG":
            im.draft("RGB", (draft, draft))
        image = to_rgb(im, path)
    if max_side:
        image.thumbnail((max_side, max_side))
    return image


def gallery_names_unique(rset: "RetrievalSet", where: Path) -> None:
    """Answer files name gallery images by stem: two files with one stem (in two building folders) would be one
    answer, so they are refused at set-up, naming both."""
    seen: dict[str, Path] = {}
    for item in rset.gallery:
        if item.name in seen:
            raise DatasetError(f"{where}: two gallery images share the name '{item.name}' that answer files use: "
                               f"{seen[item.name]} and {item.path}; rename one")
        seen[item.name] = item.path


def check_root(root: str | Path) -> Path:
    """`root` if it is a folder holding train/ and test/ (cheap: what a run checks before anything runs)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: data root not found (expected a University-1652 folder with "
                           "train/ and test/, or data_root: embedded)")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DatasetError(f"{root / split}: missing split folder; a University-1652 root holds "
                               f"train/ and test/ (found: {sorted(p.name for p in root.iterdir())})")
    return root


class University1652:
    """The dataset at `root`, validated on construction."""

    def __init__(self, root: str | Path, include_google: bool = False):
        self.root = check_root(root)
        train = self.root / "train"
        google = read_view(train / "google") if include_google and (train / "google").is_dir() else {}
        self.train = TrainSplit(*(read_view(train / v) for v in VIEWS), google=google)
        if not self.train.buildings:
            raise DatasetError(f"{train}: no building has both street/ and satellite/ images")
        self.test = self._read_test()
        if self.test.buildings_without_gallery:
            missing = self.test.buildings_without_gallery
            warnings.warn(f"{self.root / 'test/gallery_satellite'}: {len(missing)} queried buildings have no gallery "
                          f"image ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); their queries "
                          "cannot be matched (see test.buildings_without_gallery)", DatasetWarning, stacklevel=2)
        self.challenge = self._read_challenge()

    # --- splits ---------------------------------------------------------------------------------
    def _read_test(self) -> RetrievalSet:
        test = self.root / "test"
        queries = _items(read_view(test / "query_street"), lambda p: f"{p.parent.name}/{p.name}")
        gallery = _items(read_view(test / "gallery_satellite"), lambda p: p.stem)
        if not queries:
            raise DatasetError(f"{test / 'query_street'}: no query images")
        if not gallery:
            raise DatasetError(f"{test / 'gallery_satellite'}: no gallery images")
        rset = RetrievalSet(queries, gallery)
        gallery_names_unique(rset, test / "gallery_satellite")
        return rset

    def _read_challenge(self) -> Optional[RetrievalSet]:
        test = self.root / "test"
        qdir, gdir = test / CHALLENGE_QUERY_DIR, test / CHALLENGE_GALLERY_DIR
        if not qdir.is_dir() and not gdir.is_dir():
            return None
        places = (test / CHALLENGE_LIST, self.root / CHALLENGE_LIST, qdir / CHALLENGE_LIST)
        listing = next((p for p in places if p.is_file()), None)
        absent = [str(p) for p, ok in ((qdir, qdir.is_dir()), (gdir, gdir.is_dir())) if not ok]
        if listing is None:
            absent.append(f"{CHALLENGE_LIST} (looked for {', '.join(map(str, places))})")
        if absent:  # the challenge is optional: the test evaluation does not need it
            warnings.warn(f"{test}: incomplete challenge layout, missing {'; '.join(absent)}; the challenge is "
                          "skipped", DatasetWarning, stacklevel=3)
            return None
        files = {p.name: p for p in qdir.rglob("*") if _is_image(p)}
        names = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
        missing = [n for n in names if n not in files]
        if missing:
            raise DatasetError(f"{listing}: {len(missing)} listed queries are not in {qdir} "
                               f"(first: {missing[0]})")
        queries = [ImageItem(files[n], None, n) for n in names]
        gallery = [ImageItem(p, None, p.stem) for p in sorted(gdir.rglob("*")) if _is_image(p)]
        rset = RetrievalSet(queries, gallery)
        gallery_names_unique(rset, gdir)
        return rset

    def split_buildings(self, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
        """Hold out train buildings for validation (seeded), so model selection never sees the test set."""
        buildings = self.train.buildings
        n_val = int(round(val_fraction * len(buildings)))
        if val_fraction > 0 and n_val < 2:
            n_val = min(2, len(buildings) - 2)
        val = sorted(random.Random(seed).sample(buildings, n_val)) if n_val > 0 else []
        held = set(val)
        return [b for b in buildings if b not in held], val

    def val_set(self, val_buildings: list[str]) -> RetrievalSet:
        """Street queries of the held-out train buildings against their satellite images."""
        view = {b: self.train.street[b] for b in val_buildings}
        sats = {b: self.train.satellite[b] for b in val_buildings}
        return RetrievalSet(_items(view, lambda p: f"{p.parent.name}/{p.name}"), _items(sats, lambda p: p.stem))

    def summary(self) -> dict:
        t = self.train
        return {
            "train buildings": len(t.buildings),
            "train street images": sum(map(len, t.street.values())),
            "train satellite images": sum(map(len, t.satellite.values())),
            "train drone images": sum(map(len, t.drone.values())),
            "test queries (street)": len(self.test.queries),
            "test query buildings": len(set(self.test.query_ids)),
            "test gallery (satellite)": len(self.test.gallery),
            "test distractor buildings": len(self.test.distractors),
            "challenge queries": len(self.challenge.queries) if self.challenge else 0,
            "challenge gallery": len(self.challenge.gallery) if self.challenge else 0,
        }


def open_dataset(cfg, progress: bool = True) -> University1652:
    """The dataset a run uses: the embedded world (generated once, cached) or the folder at data_root."""
    if cfg.is_embedded:
        from .world import WorldSpec, ensure_world

        root = ensure_world(WorldSpec.from_params(cfg), progress=progress)
    else:
        root = cfg.data_root
    return University1652(root, include_google=cfg.include_google)


def images_per_building(view: dict[str, list[Path]]) -> list[int]:
    return [len(v) for v in view.values()]


def sample_image_sizes(paths: list[Path], n: int = 200, seed: int = 0) -> "pd.DataFrame":
    """Width/height of up to n images (Pillow reads only the header)."""
    import pandas as pd

    rng = random.Random(seed)
    picked = rng.sample(paths, min(n, len(paths)))
    rows = []
    for p in picked:
        with open_image(p) as im:
            rows.append({"width": im.width, "height": im.height})
    return pd.DataFrame(rows)
