"""The VICI paper's published street -> satellite results on University-1652 (R@k in %).

Numbers from the VICI README tables; always shown labelled as the paper's, never as ours. `timm_name` is the
timm tag VICI's code (src/utils.py) builds for each row; it has no ViT-L entry, so that row names the closest
tag (the ViT-B row's pretraining, at ViT-L size).
"""
from __future__ import annotations

import pandas as pd

SOURCE = "VICI paper (Zhang, Shore et al.), University-1652 street->satellite"

BACKBONES = pd.DataFrame(
    [
        ("ConvNeXt-T", "convnextv2_tiny.fcmae_ft_in22k_in1k", 28, 4.5, 768, 1.36, 4.34, 7.95),
        ("ConvNeXt-B", "convnextv2_base.fcmae_ft_in22k_in1k", 89, 15.4, 1024, 3.14, 8.14, 13.22),
        ("ViT-B", "vit_base_patch16_224.augreg_in21k_ft_in1k", 86, 17.6, 768, 3.30, 8.92, 13.96),
        ("ViT-L", "vit_large_patch16_224.augreg_in21k_ft_in1k", 307, 60.6, 1024, 9.62, 23.42, 32.73),
        ("DINOv2-B", "vit_base_patch14_reg4_dinov2.lvd142m", 86, 152, 768, 17.37, 36.14, 46.96),
        ("DINOv2-L", "vit_large_patch14_dinov2.lvd142m", 304, 507, 1024, 27.49, 51.96, 63.13),
    ],
    columns=["backbone", "timm_name", "params_M", "flops_G", "dims", "R@1", "R@5", "R@10"],
)

VLMS = pd.DataFrame(
    [
        ("Without Re-ranking", 27.49, 51.96, 63.13),
        ("Gemini 2.5 Flash Lite", 23.54, 48.39, 63.13),
        ("Gemini 2.5 Flash", 30.21, 53.04, 63.13),
    ],
    columns=["vlm", "R@1", "R@5", "R@10"],
)

DRONE_RATE = pd.DataFrame(
    [(0.0, 24.47, 48.16, 60.99), (0.1, 26.98, 51.34, 61.92), (0.3, 27.49, 51.96, 63.13), (0.5, 24.89, 52.03, 62.66)],
    columns=["drone_rate", "R@1", "R@5", "R@10"],
)

ABLATION = pd.DataFrame(
    [
        ("U1652 (Zheng et al. 2020)", 1.20, None, None),
        ("LPN w/o drone (Wang et al. 2021)", 0.74, None, None),
        ("LPN w/ drone (Wang et al. 2021)", 0.81, None, None),
        ("DINOv2-L", 24.66, 48.00, 59.02),
        ("+ Drone Data", 27.49, 51.96, 63.13),
        ("+ VLM Re-rank (Ours)", 30.21, 53.04, 63.13),
    ],
    columns=["model", "R@1", "R@5", "R@10"],
)
