"""Which device and precision a run uses."""
from __future__ import annotations

import contextlib
import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Use device: auto or cpu.")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """AMX / AVX512-BF16 make bf16 autocast ~3x faster on CPU; elsewhere it is slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def tune_for_training(device: torch.device) -> None:
    """Global speed settings for training on a GPU (nothing to do on the CPU)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 parts (and precision: fp32)
        torch.backends.cudnn.benchmark = True       # fixed input sizes: let cuDNN pick its fastest kernels


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast for bf16; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def data_workers(device: torch.device, persistent: bool) -> int:
    """DataLoader worker processes when num_workers is None: several to keep a GPU fed. On a small CPU, decoding and
    augmentation compete with the model for the same cores: at most half of them, and none for a loader that lives
    for one pass only (starting workers would cost more than they save)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return min(8, cpus - 1)
    return min(4, cpus // 2) if persistent else 0
