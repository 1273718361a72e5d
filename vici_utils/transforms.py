"""Image transforms of the two towers, from the model's own timm data config (size, mean/std, interpolation).

Evaluation resizes and centre-crops; training augments per view (`augment: mild` or VICI's `timm`).
"""
from __future__ import annotations

import torch
from timm.data import create_transform

from .u1652 import VIEWS


class RandomRot90:
    """Rotate a CHW tensor by a random multiple of 90 degrees: a north-up tile has no canonical heading
    relative to the street photo, and a rotated tile is still a plausible tile."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))


class ViewTransform:
    """PIL image -> normalised tensor; `size` lets the decoder downscale big JPEGs at decode time."""

    def __init__(self, transform, size: int, extra=None):
        self.transform, self.size, self.extra = transform, size, extra

    def __call__(self, img):
        x = self.transform(img)
        return self.extra(x) if self.extra is not None else x

    def __repr__(self):
        return f"ViewTransform(size={self.size}, {self.transform}, extra={self.extra})"


def model_transforms(cfg, model, train: bool, view: str) -> ViewTransform:
    """Image transforms from the model's own data config (size, mean/std, interpolation); `view` is street,
    satellite, or drone (a drone image stands in for a tile and goes through the satellite tower).

    Evaluation: resize the short side and centre-crop to the square input without cropping a margin.
    Training, `augment: mild`: small random crops/shifts and colour jitter for every view, no flips (a mirrored
    street view no longer matches its tile), random 90-degree rotations for satellite tiles (north-up is
    arbitrary against a street photo) but not for drone photos, which have a horizon, unless `rotate_drone`.
    `augment: timm`: VICI's choice, timm's default training transform for every view.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    dc = model.data_config
    size = dc["input_size"][-1]
    common = dict(input_size=dc["input_size"], interpolation=dc["interpolation"], mean=dc["mean"], std=dc["std"])
    if not train:
        return ViewTransform(create_transform(**common, is_training=False, crop_pct=1.0, crop_mode="center"), size)
    if getattr(cfg, "augment", "mild") == "timm":  # VICI: timm's ImageNet training transform, the same for every view
        return ViewTransform(create_transform(**common, is_training=True), size)
    tf = create_transform(**common, is_training=True, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.0,
                          color_jitter=(0.2, 0.2, 0.1, 0.0))  # mild: colours are cues; hue jitter triples CPU cost
    rotate = view == "satellite" or (view == "drone" and getattr(cfg, "rotate_drone", False))
    return ViewTransform(tf, size, RandomRot90() if rotate else None)
