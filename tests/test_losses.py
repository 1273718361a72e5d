"""The contrastive losses (losses.py): InfoNCE by hand, the temperature, NT-Xent equal to VICI's
pytorch-metric-learning loss, and the loss gathered across 2 processes equal to one process's."""
import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from vici_utils.losses import ContrastiveLoss, info_nce


# --- the loss --------------------------------------------------------------------------------------------
def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_info_nce_matches_a_hand_computation():
    s, g, t = _unit(5, 7, 0), _unit(5, 7, 1), 0.1
    sim = (s @ g.T).numpy().astype(np.float64) / t
    rows = [-sim[i, i] + math.log(sum(math.exp(sim[i, j]) for j in range(5))) for i in range(5)]
    cols = [-sim[j, j] + math.log(sum(math.exp(sim[i, j]) for i in range(5))) for j in range(5)]
    expected = 0.5 * (sum(rows) / 5 + sum(cols) / 5)
    assert info_nce(s, g, 1 / t).item() == pytest.approx(expected, rel=1e-5)
    assert ContrastiveLoss(t)(s, g).item() == pytest.approx(expected, rel=1e-5)
    assert info_nce(s, s, 1 / t) < info_nce(s, g, 1 / t)  # matched pairs score lower


def test_temperature_fixed_or_learnable():
    fixed, learnable = ContrastiveLoss(0.1), ContrastiveLoss(0.1, learnable=True)
    assert list(fixed.parameters()) == [] and fixed.temperature == pytest.approx(0.1)
    s, g = _unit(4, 8, 0).requires_grad_(), _unit(4, 8, 1)
    learnable(s, g).backward()
    assert learnable.log_scale.grad is not None and learnable.log_scale.grad != 0
    assert ContrastiveLoss(0.001).temperature == pytest.approx(0.01)  # clamped: the scale never exceeds 100


def test_ntxent_equals_pytorch_metric_learning():
    """VICI's loss is pml's SelfSupervisedLoss(NTXentLoss(0.1))(satellite, street); ours must equal it."""
    from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss

    for n, seed in ((4, 0), (32, 1)):
        s, g = _unit(n, 16, seed), _unit(n, 16, seed + 100)
        expected = SelfSupervisedLoss(NTXentLoss(temperature=0.1))(g, s).item()
        assert ContrastiveLoss(0.1, loss="ntxent")(s, g).item() == pytest.approx(expected, abs=1e-5)
        assert ContrastiveLoss(0.1, loss="infonce")(s, g).item() != pytest.approx(expected, abs=1e-3)


def _ddp_worker(rank, world, init_file, s, g, out_file, kind="infonce"):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    head = torch.nn.Linear(s.shape[1], s.shape[1])
    ddp = torch.nn.parallel.DistributedDataParallel(head)
    n = len(s) // world
    lo, hi = rank * n, (rank + 1) * n
    loss = ContrastiveLoss(0.1, loss=kind)(F.normalize(ddp(s[lo:hi]), dim=1), g[lo:hi])
    loss.backward()
    if rank == 0:
        torch.save({"loss": loss.detach(), "grad": head.weight.grad}, out_file)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["infonce", "ntxent"])
def test_ddp_gathered_loss_and_gradient_equal_single_process(tmp_path, kind):
    s, g = _unit(8, 6, 2), _unit(8, 6, 3)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), s, g, str(tmp_path / "out.pt"), kind), nprocs=2,
             join=True)
    got = torch.load(tmp_path / "out.pt")
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 6)
    loss = ContrastiveLoss(0.1, loss=kind)(F.normalize(head(s), dim=1), g)
    loss.backward()
    assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(got["grad"], head.weight.grad, rtol=1e-5, atol=1e-7)
