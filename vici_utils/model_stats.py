"""Parameters, multiply-accumulates and embedding size of a timm backbone, measured from the model itself.

No weights are needed: the model is built with pretrained=False on PyTorch's meta device (shapes only, no
memory, no arithmetic), and torch.utils.flop_counter counts the operations of one forward pass of one image
at the size the run uses. The VICI paper's "FLOPs (G)" column is what fvcore-style counters report, i.e.
multiply-accumulates (DINOv2-L at 518 px: 507 G), so we report GMACs = counted FLOPs / 2 to compare like
with like. Results are cached in outputs/model_stats.json, keyed by model, image size and timm version.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from .models import TwoTower, create_backbone
from .paths import outputs_root
from .run_folder import write_atomic

CACHE_NAME = "model_stats.json"


def cache_path() -> Path:
    return outputs_root() / CACHE_NAME


def _create(name: str, image_size: Optional[int], device: str):
    with torch.device(device):  # the workbook's own constructor: same input size rule, same pooled output
        return create_backbone(name, pretrained=False, image_size=image_size)


def _count(forward, size: int, device: str) -> tuple[float, int]:
    """FLOPs of one forward pass of one image (counted by torch.utils.flop_counter) and the output size."""
    x = torch.zeros(1, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = forward(x)
    return counter.get_total_flops(), int(y.shape[-1])


def measure(name: str, image_size: Optional[int] = None) -> dict:
    """{'timm_name', 'image_size', 'params_M', 'gmacs', 'dims'} for one tower (no projection head);
    image_size None = the model's own input size."""
    try:
        model, device = _create(name, image_size, "meta"), "meta"
        size = image_size or model.pretrained_cfg["input_size"][-1]
        flops, dims = _count(model.eval(), size, device)
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count on the CPU instead
        model, device = _create(name, image_size, "cpu"), "cpu"
        size = image_size or model.pretrained_cfg["input_size"][-1]
        flops, dims = _count(model.eval(), size, device)
    n_params = sum(p.numel() for p in model.parameters())
    return {"timm_name": name, "image_size": int(size), "params_M": round(n_params / 1e6, 3),
            "gmacs": round(flops / 2e9, 4), "dims": dims}


def stats(name: str, image_size: Optional[int] = None) -> dict:
    """measure(), cached on disk: the cache survives runs, and one ViT-L count on a CPU is not free."""
    key = f"{name}@{image_size or 'native'}|timm {timm.__version__}"
    path = cache_path()
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if key not in cache:
        cache[key] = measure(name, image_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(cache, indent=1, sort_keys=True))
    return cache[key]


def model_summary(model: TwoTower) -> dict:
    """A built model as notebook 02 shows it: parameters (all towers), GMACs of one tower on one image at the
    training size (the unit of the paper's "FLOPs" column), image size and embedding size."""
    size = model.config["image_size"]
    was_training = model.training
    flops, dims = _count(model.eval().encode_street, size, next(model.parameters()).device)
    model.train(was_training)
    return {
        "backbone": model.config["backbone"],
        "towers": "shared" if model.shared else "separate",
        "params (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "GMACs per image": round(flops / 2e9, 3),
        "image size": size,
        "embedding dim": dims,
    }
