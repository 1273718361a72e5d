"""Contrastive losses over a batch of (street, satellite) pairs, with negatives from every process.

Row i of the street batch and row i of the satellite batch show the same building; every other row is
a negative. Each loss is registered by name in vici_utils.registry.LOSSES (the `loss` parameter takes those names).
- `info_nce` (CLIP's): the cross-view matrix S = street @ satellite.T / T is scored with cross-entropy towards
  its diagonal, once per row (street -> satellite) and once per column (satellite -> street).
- `nt_xent` (SimCLR's NT-Xent, VICI's loss: pytorch-metric-learning's SelfSupervisedLoss(NTXentLoss(0.1))):
  all 2N embeddings against each other, so the other buildings' images of the *same* view are negatives too.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .registry import DEFAULT_LOSS, LOSSES, labelled

MAX_LOGIT_SCALE = 100.0  # temperature >= 0.01, as in CLIP: keeps a learnable temperature from collapsing


@labelled("InfoNCE: CLIP's cross-view cross-entropy")
def info_nce(street: torch.Tensor, satellite: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Mean of the street->satellite and satellite->street cross-entropies; features L2-normalised."""
    logits = logit_scale * street @ satellite.T
    target = torch.arange(len(street), device=street.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@labelled("NT-Xent: VICI's loss, over all 2N embeddings (same-view negatives too)")
def nt_xent(street: torch.Tensor, satellite: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Mean over the 2N anchors of cross-entropy towards the anchor's other view, against the 2N - 2 others."""
    n = len(street)
    z = torch.cat([street, satellite])
    logits = logit_scale * z @ z.T
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.arange(2 * n, device=z.device).roll(n)  # anchor i's positive is row i + N (mod 2N)
    return F.cross_entropy(logits, target)


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


class ContrastiveLoss(nn.Module):
    """A registered loss with a fixed or learnable temperature (learned as log(1/T), CLIP's parametrisation)."""

    def __init__(self, temperature: float = 0.1, learnable: bool = False, loss: str = DEFAULT_LOSS):
        super().__init__()
        self.fn = LOSSES.load(loss)
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
        return self.fn(gather(street.float()), gather(satellite.float()), self.scale())
