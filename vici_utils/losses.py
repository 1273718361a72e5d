"""Symmetric InfoNCE over a batch of (street, satellite) pairs, with negatives from every process.

Row i of the street batch and row i of the satellite batch show the same building; every other row is
a negative. The similarity matrix S = street @ satellite.T / T is scored with cross-entropy towards its
diagonal, once per row (street -> satellite) and once per column (satellite -> street).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0  # temperature >= 0.01, as in CLIP: keeps a learnable temperature from collapsing


def info_nce(street: torch.Tensor, satellite: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Mean of the street->satellite and satellite->street cross-entropies; features L2-normalised."""
    logits = logit_scale * street @ satellite.T
    target = torch.arange(len(street), device=street.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from all processes in rank order, keeping the gradient of every slice.

    Every rank computes the same global loss; the autograd all_gather sums the ranks' gradients for each
    slice and DDP then averages over ranks, which gives exactly the single-process gradient.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    # torch's differentiable all-gather (backward: reduce-scatter of the gradients, summed); the older
    # torch.distributed.nn.functional.all_gather is deprecated in its favour
    from torch.distributed._functional_collectives import all_gather_single

    return all_gather_single(x.contiguous(), 0, dist.group.WORLD)


class InfoNCE(nn.Module):
    """InfoNCE with a fixed or learnable temperature (learned as log(1/T), CLIP's parametrisation)."""

    def __init__(self, temperature: float = 0.1, learnable: bool = False):
        super().__init__()
        init = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale().item()

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, street: torch.Tensor, satellite: torch.Tensor) -> torch.Tensor:
        return info_nce(gather(street.float()), gather(satellite.float()), self.scale())
