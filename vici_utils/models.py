"""The two-tower retrieval model: a street tower and a satellite tower, each any timm backbone.

Each tower gives the backbone's pooled embedding (num_classes=0: CLS token for ViTs, global average
for CNNs), an optional linear projection head, and L2 normalisation, so a dot product is a cosine.

Weights come from the timm hub (`pretrained: true`), a local weights file, nothing (from scratch), or
one of our checkpoints / VICI's released Lightning checkpoint (`init_checkpoint`).
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Optional, Union

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from torch import nn

from .checkpoints import WeightsError, load_exact, load_init_checkpoint, load_weights_file, read_checkpoint
from .params import DATA_KEYS, MODEL_KEYS, config_differences
from .provenance import initial_weights
from .run_folder import TRAIN, remake, stage_dir, trained_checkpoint
from .transforms import model_transforms
from .weight_sources import PACKAGE, load_package_weights, package_source

TOWERS = ("street", "satellite")  # the views the model embeds, a tower each (drone photos use the satellite one)

# --- backbones ---------------------------------------------------------------------------------------
def check_backbone_name(name: str) -> None:
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(name.split(".")[0]):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else " See timm.list_models('*name*')."
    raise WeightsError(f"backbone '{name}' is not a timm model.{hint}")


def _size_kwargs(name: str, image_size: Optional[int]) -> dict:
    """ViTs fix their input size (position embeddings); CNNs take any size."""
    cfg = timm.models.get_pretrained_cfg(name)
    if image_size and cfg is not None and cfg.fixed_input_size:
        return {"img_size": image_size}
    return {}


def create_backbone(name: str, pretrained: Union[bool, str] = False, image_size: Optional[int] = None) -> nn.Module:
    """A timm backbone without classifier (pooled embedding), with hub, packaged (`pretrained: package`, see
    weight_sources), file or no weights."""
    check_backbone_name(name)
    if pretrained == PACKAGE:
        package_source(name)  # no package source for this backbone: say which have one before building it
    kwargs = dict(num_classes=0, **_size_kwargs(name, image_size))
    if pretrained is True:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # offline, unknown tag, hub error: one clear sentence
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WeightsError(f"backbone '{name}': hub weights could not be loaded ({first[:200]}); connect to "
                               "the internet once (timm caches them), set pretrained to a local weights file, "
                               "or use pretrained: false") from None
    backbone = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained == PACKAGE:
        load_package_weights(backbone, name)
    elif isinstance(pretrained, (str, Path)) and pretrained:
        load_weights_file(backbone, pretrained, name)
    return backbone


# --- the model ---------------------------------------------------------------------------------------
class TwoTower(nn.Module):
    """Street and satellite towers (one shared module if `shared_towers`), each -> [head] -> L2 norm."""

    def __init__(self, backbone: str, pretrained: Union[bool, str] = False, image_size: Optional[int] = None,
                 shared_towers: bool = False, embed_dim: Optional[int] = None):
        super().__init__()
        self.street = create_backbone(backbone, pretrained, image_size)
        # A copy starts both towers from the same weights (as VICI does) and loads weights only once.
        self.satellite = None if shared_towers else copy.deepcopy(self.street)
        self.shared = shared_towers
        self.feature_dim = self.street.num_features
        self.head_street = nn.Linear(self.feature_dim, embed_dim) if embed_dim else None
        self.head_satellite = (None if shared_towers or not embed_dim
                               else nn.Linear(self.feature_dim, embed_dim))
        self.out_dim = embed_dim or self.feature_dim

        data_config = resolve_data_config({}, model=self.street)
        if image_size:
            data_config["input_size"] = (3, image_size, image_size)
        self.data_config = data_config
        self.config = {"backbone": backbone, "image_size": data_config["input_size"][-1],
                       "shared_towers": shared_towers, "embed_dim": embed_dim}

    def tower(self, view: str) -> nn.Module:
        return self.street if view == "street" or self.shared else self.satellite

    def head(self, view: str) -> Optional[nn.Module]:
        return self.head_street if view == "street" or self.shared else self.head_satellite

    def encode(self, x: torch.Tensor, view: str) -> torch.Tensor:
        if view not in TOWERS:
            raise ValueError(f"view must be one of {TOWERS}, got {view!r}")
        return self._embedding(self.tower(view)(x), view)

    def encode_with_maps(self, x: torch.Tensor, view: str, levels: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The embedding and the feature maps of the tower's last `levels` stages, from one forward pass."""
        tower = self.tower(view)
        final, maps = tower.forward_intermediates(x, indices=levels)
        return self._embedding(tower.forward_head(final), view), maps

    def _embedding(self, pooled: torch.Tensor, view: str) -> torch.Tensor:
        """A tower's pooled features -> the view's head (if any) -> unit length."""
        head = self.head(view)
        z = head(pooled) if head is not None else pooled
        return F.normalize(z.float(), dim=-1)  # normalise in fp32 even under bf16 autocast

    def encode_street(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x, "street")

    def encode_satellite(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x, "satellite")

    def forward(self, street: torch.Tensor, satellite: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_street(street), self.encode_satellite(satellite)

    def backbones(self) -> list[nn.Module]:
        return [self.street] if self.shared else [self.street, self.satellite]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for b in self.backbones():
            b.set_grad_checkpointing(enable)


def model_config(cfg) -> dict:
    return {k: getattr(cfg, k) for k in MODEL_KEYS}


def build_model(cfg) -> TwoTower:
    """The model a run trains: architecture and weights from the parameters, then `init_checkpoint`
    (provenance.initial_weights: the rule the provenance lines describe)."""
    model = TwoTower(cfg.backbone, cfg.pretrained, cfg.image_size, cfg.shared_towers, cfg.embed_dim)
    if initial_weights(cfg) == "init_checkpoint":
        load_init_checkpoint(model, cfg.init_checkpoint)
    return model


def model_from_checkpoint(path: Union[str, Path], ckpt: Optional[dict] = None) -> TwoTower:
    """Rebuild a model from one of our checkpoints alone (its stored model config and weights)."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    if not (isinstance(ckpt, dict) and "model_config" in ckpt):
        raise WeightsError(f"{path}: not one of our checkpoints (no model_config)")
    model = TwoTower(**ckpt["model_config"], pretrained=False)
    load_exact(model, ckpt["model"], f"checkpoint {path}")
    return model


def load_model_for_eval(cfg, run_dir: Union[str, Path, None] = None) -> tuple[TwoTower, dict]:
    """The model to evaluate for a run, and its eval transforms by view.

    outputs/<run>/train/best.pt (else last.pt) if training wrote one; else `init_checkpoint`; else the bare
    backbone with its `pretrained` weights (zero-shot). The model is rebuilt from the checkpoint's own model
    config; a checkpoint of other data or another architecture than `cfg` names is refused, naming the keys
    (training keys such as lr do not matter here: they matter only when resuming).
    """
    found = trained_checkpoint(Path(run_dir) / TRAIN if run_dir else stage_dir(cfg.run_name, TRAIN))
    if found:
        try:
            ckpt = read_checkpoint(found)
        except WeightsError as e:  # truncated, corrupt: name the file (the message does) and what remakes it
            raise WeightsError(f"{e}; remake it by training this run again: "
                               f"{remake(cfg.run_name, TRAIN, ' --set resume=false')}") from None
        diff = config_differences(ckpt.get("config", {}), cfg, DATA_KEYS + MODEL_KEYS)
        if diff:
            raise WeightsError(f"{found} was trained on other data or with another model ({', '.join(diff)}); "
                               "evaluate it with its own run's parameters, or train this run again (resume: false)")
        model = model_from_checkpoint(found, ckpt)
    else:
        model = build_model(cfg)
    model.eval()
    return model, {v: model_transforms(cfg, model, train=False, view=v) for v in TOWERS}
