"""Small timm backbones and random image batches for the model and checkpoint tests."""
import torch

VIT = "test_vit"  # timm's 0.3 M-parameter ViT for tests: CLS pooling, 16 px patches (32 px = 2x2 patches)
DINO = "vit_small_patch14_dinov2"  # the DINOv2 layout (layer scale), 28 px = 2x2 patches


def random_images(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
