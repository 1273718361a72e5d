"""Image transforms (transforms.py): from the model's data config; random turns for satellite tiles only."""
import torch
from PIL import Image

from vici_utils.models import TwoTower
from vici_utils.transforms import model_transforms


def test_transforms_from_the_model_data_config():
    m = TwoTower("resnet10t", image_size=40)
    img = Image.new("RGB", (120, 90), (200, 10, 10))
    ev = model_transforms(None, m, train=False, view="street")
    x = ev(img)
    assert x.shape == (3, 40, 40) and ev.size == 40
    # red after ImageNet normalisation: channel 0 high, channel 2 low
    assert x[0].mean() > 1.0 and x[2].mean() < -1.0
    tile = Image.new("RGB", (64, 64))
    tile.paste((255, 255, 255), (0, 0, 32, 32))  # a white top-left quadrant

    def quadrants(view):
        tr, seen = model_transforms(None, m, train=True, view=view), set()
        for seed in range(12):
            torch.manual_seed(seed)
            y = tr(tile)
            corners = [y[:, :8, :8].mean(), y[:, :8, -8:].mean(), y[:, -8:, :8].mean(), y[:, -8:, -8:].mean()]
            seen.add(int(torch.stack(corners).argmax()))
        return seen

    assert len(quadrants("satellite")) >= 3  # random 90-degree rotations move the white quadrant around
    assert quadrants("drone") == {0}          # a drone photo has a horizon: never turned
