"""The "is this a toy?" baseline of notebook 03: street -> satellite retrieval by global colour alone (no learning).

If it came close to the trained model, the task would be a toy.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

from . import metrics
from .embed import cached_features
from .u1652 import RetrievalSet


class HistogramTransform:
    """PIL image -> float tensor [3, size, size] in [0, 1] (no normalisation: the histogram needs raw colours)."""

    def __init__(self, size: int = 64):
        self.size = size

    def __call__(self, img) -> torch.Tensor:
        img = img.resize((self.size, self.size))
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"HistogramTransform(size={self.size})"


def colour_histogram(x: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Joint RGB histogram [B, bins^3], square-rooted so a dot product of normalised histograms is the
    Bhattacharyya coefficient."""
    q = (x.float() * bins).long().clamp_(0, bins - 1)
    cell = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = torch.zeros(x.shape[0], bins ** 3, device=x.device)
    hist.scatter_add_(1, cell.flatten(1), torch.ones_like(cell.flatten(1), dtype=hist.dtype))
    return hist.sqrt()


def colour_histogram_baseline(cfg, rset: RetrievalSet, bins: int = 8, progress: bool = True) -> dict:
    """Official metrics of street -> satellite retrieval by global colour alone (no learning)."""
    transform = HistogramTransform()
    kwargs = dict(model_key=f"colour-histogram|bins={bins}", batch_size=256, device="cpu", precision="fp32",
                  num_workers=cfg.num_workers, progress=progress)
    fn = partial(colour_histogram, bins=bins)
    qf = cached_features(fn, rset.queries, transform, tag="histogram-queries", **kwargs)
    gf = cached_features(fn, rset.gallery, transform, tag="histogram-gallery", **kwargs)
    return metrics.evaluate(qf, gf, rset.query_ids, rset.gallery_ids)
