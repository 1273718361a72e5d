"""Training and embedding throughput: the real data pipeline beside the same model on synthetic tensors.

    python benchmarks/bench_train.py                                   # embedded world, resnet10t, 64 px
    python benchmarks/bench_train.py --backbone vit_large_patch14_dinov2.lvd142m --image-size 518 \\
        --batch 32 --precision bf16 --data-root /data/University-1652 --workers 12 [--compile] [--grad-ckpt]

Prints training pairs/s (a step = forward of both towers, InfoNCE, backward, AdamW) and embedding
images/s, each with real JPEG decoding + transforms through DataLoader workers and with synthetic tensors
already on the device; "data only" is the loader alone. When "real" is well below "synthetic" and "data
only" is close to "real", decoding is the bottleneck: add workers. Weights are random (speed only).
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch

from vici_utils.datasets import ImageListDataset
from vici_utils.device import autocast, data_workers, resolve_device, resolve_precision, tune_for_training
from vici_utils.losses import ContrastiveLoss
from vici_utils.models import TwoTower
from vici_utils.params import validate
from vici_utils.transforms import model_transforms
from vici_utils.train import pair_data, train_step
from vici_utils.u1652 import University1652, open_dataset


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, batches, warmup: int, steps: int, device) -> float:
    """Seconds per step over `steps` steps after `warmup` untimed ones (compilation, cudnn autotune, workers)."""
    it = iter(batches)
    for _ in range(warmup):
        fn(next(it))
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn(next(it))
    _sync(device)
    return (time.perf_counter() - t) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=64, help="training pairs per step")
    ap.add_argument("--embed-batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: automatic)")
    ap.add_argument("--data-root", default="embedded", help="'embedded' or a University-1652 folder")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--shared-towers", action="store_true")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    tune_for_training(device)
    dtype = resolve_precision(args.precision, device)
    workers = data_workers(device, persistent=True) if args.workers is None else args.workers
    cfg = validate({"data_root": args.data_root, "backbone": args.backbone, "image_size": args.image_size,
                    "batch_size": args.batch, "drone_rate": 0.3, "precision": args.precision})
    ds = open_dataset(cfg) if cfg.is_embedded else University1652(args.data_root)
    torch.manual_seed(0)
    model = TwoTower(args.backbone, image_size=args.image_size, shared_towers=args.shared_towers)
    if args.grad_ckpt:
        model.set_grad_checkpointing(True)
    model.to(device, memory_format=torch.channels_last)
    loss_fn = ContrastiveLoss(0.1, learnable=True).to(device)
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-5, fused=True)
    fwd = torch.compile(model) if args.compile else model
    size = model.config["image_size"]
    print(f"{args.backbone} at {size} px, {dtype}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"batch {args.batch}, {workers} workers, compile={args.compile}, grad_ckpt={args.grad_ckpt}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters")

    def to_dev(x):
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)

    def step(batch):
        train_step(fwd, loss_fn, opt, batch[0], batch[1], device, dtype)

    @torch.inference_mode()
    def embed_step(batch):
        with autocast(device, dtype):
            model.encode_satellite(to_dev(batch[0]))

    n_batches = args.warmup + args.steps
    loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                     prefetch_factor=4 if workers else None)
    pairs, sampler = pair_data(cfg, model, ds)
    if len(sampler) == 0:
        raise SystemExit(f"{len(pairs)} training buildings cannot fill one batch of {args.batch}")

    def pair_batches():  # epochs one after another, as long as needed
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from torch.utils.data.DataLoader(pairs, batch_sampler=sampler, **loader_kw)

    synthetic = torch.randn(args.batch, 3, size, size, pin_memory=device.type == "cuda")
    results = {}
    model.train()
    results["train, synthetic"] = args.batch / _timed(step, itertools.repeat((synthetic, synthetic)),
                                                      args.warmup, args.steps, device)
    results["train, real data"] = args.batch / _timed(step, pair_batches(), args.warmup, args.steps, device)
    results["train, data only"] = args.batch / _timed(lambda b: None, pair_batches(), args.warmup, args.steps, device)
    if device.type == "cuda":
        results["train peak memory (GiB)"] = torch.cuda.max_memory_allocated(device) / 2**30

    model.eval()
    items = (ds.test.gallery + ds.test.queries) * (1 + n_batches * args.embed_batch // len(ds.test.gallery + ds.test.queries))
    tf = model_transforms(cfg, model, train=False, view="satellite")
    images = torch.utils.data.DataLoader(ImageListDataset(items, tf), batch_size=args.embed_batch, **loader_kw)
    synthetic = torch.randn(args.embed_batch, 3, size, size, pin_memory=device.type == "cuda")
    results["embed, synthetic"] = args.embed_batch / _timed(embed_step, itertools.repeat((synthetic,)),
                                                            args.warmup, args.steps, device)
    results["embed, real data"] = args.embed_batch / _timed(embed_step, images, args.warmup, args.steps, device)
    results["embed, data only"] = args.embed_batch / _timed(lambda b: None, iter(images), args.warmup, args.steps,
                                                            device)
    for k, v in results.items():
        unit = "" if "GiB" in k else (" pairs/s" if k.startswith("train") else " img/s")
        print(f"  {k:<28} {v:10.1f}{unit}")


if __name__ == "__main__":
    main()
