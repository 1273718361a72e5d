"""The two-tower retrieval model: a street tower and a satellite tower, each any timm backbone.

Each tower gives the backbone's pooled embedding (num_classes=0: CLS token for ViTs, global average
for CNNs), an optional linear projection head, and L2 normalisation, so a dot product is a cosine.

Weights come from the timm hub (`pretrained: true`), a local weights file, nothing (from scratch), or
one of our checkpoints / VICI's released Lightning checkpoint (`init_checkpoint`).
"""
from __future__ import annotations

import copy
import difflib
import sys
from pathlib import Path
from typing import Optional, Union

import timm
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config
from torch import nn

# The keys that decide a model's architecture; checkpoints store them so the model can be rebuilt alone.
MODEL_KEYS = ("backbone", "image_size", "shared_towers", "embed_dim")
VIEWS = ("street", "satellite")
# VICI's Lightning module keeps its towers at model.street_conv / model.sat_conv (model.*_head if used).
VICI_PREFIXES = {"model.street_conv.": "street.", "model.sat_conv.": "satellite."}


class WeightsError(RuntimeError):
    """Backbone weights or a checkpoint that cannot be used; the message says which and what to do."""


# --- backbones ---------------------------------------------------------------------------------------
def _check_backbone_name(name: str) -> None:
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


def load_weights_file(backbone: nn.Module, path: Union[str, Path], name: str) -> None:
    """Load a local weights file (timm / Hugging Face .safetensors, .pth, .bin) into a backbone; every
    backbone tensor must be found in the file (the classifier, which we drop, may be extra)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"pretrained: weights file {path} not found for backbone '{name}' "
                           "(give the path to a .safetensors/.pth file, true for hub weights, or false)")
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as e:  # corrupt or not a checkpoint: one sentence, not a traceback
        raise WeightsError(f"pretrained: cannot read {path} as weights for '{name}' ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    # The model's own converter adapts foreign layouts (e.g. resamples ViT position embeddings).
    convert = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if convert is not None:
        try:
            state = convert(state, backbone)
        except Exception:  # a converter that does not fit this file: compare the raw keys below
            pass
    classifier = backbone.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else classifier
    state = {k: v for k, v in state.items() if not any(k.startswith(c + ".") for c in classifier)}
    _load_exact(backbone, state, f"weights file {path} for backbone '{name}'")


def create_backbone(name: str, pretrained: Union[bool, str] = False, image_size: Optional[int] = None) -> nn.Module:
    """A timm backbone without classifier (pooled embedding), with hub, file or no weights."""
    _check_backbone_name(name)
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
    if isinstance(pretrained, (str, Path)) and pretrained:
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
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        z = self.tower(view)(x)
        head = self.head(view)
        if head is not None:
            z = head(z)
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
    """The model a run trains: architecture and weights from the parameters, then `init_checkpoint`."""
    model = TwoTower(cfg.backbone, cfg.pretrained, cfg.image_size, cfg.shared_towers, cfg.embed_dim)
    if cfg.init_checkpoint:
        load_init_checkpoint(model, cfg.init_checkpoint)
    return model


# --- transforms --------------------------------------------------------------------------------------
class RandomRot90:
    """Rotate a CHW tensor by a random multiple of 90 degrees: a north-up tile has no canonical heading
    relative to the street photo, and a rotated tile is still a plausible tile."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))


class ViewTransform:
    """PIL image -> normalised tensor; `size` lets the decoder downscale big JPEGs at decode time."""

    def __init__(self, transform, size: int, extra=None):
        self.transform, self.size, self.extra = transform, size, extra

    def __call__(self, img):
        x = self.transform(img)
        return self.extra(x) if self.extra is not None else x

    def __repr__(self):
        return f"ViewTransform(size={self.size}, {self.transform}, extra={self.extra})"


def model_transforms(cfg, model: TwoTower, train: bool, view: str) -> ViewTransform:
    """Image transforms from the model's own data config (size, mean/std, interpolation).

    Evaluation: resize the short side and centre-crop to the square input without cropping a margin.
    Training: small random crops/shifts and colour jitter for both views, no flips (a mirrored street
    view no longer matches its tile), random 90-degree rotations for satellite (and drone) tiles.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    dc = model.data_config
    size = dc["input_size"][-1]
    common = dict(input_size=dc["input_size"], interpolation=dc["interpolation"], mean=dc["mean"], std=dc["std"])
    if not train:
        return ViewTransform(create_transform(**common, is_training=False, crop_pct=1.0, crop_mode="center"), size)
    tf = create_transform(**common, is_training=True, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.0,
                          color_jitter=(0.2, 0.2, 0.1, 0.0))  # mild: colours are cues; hue jitter triples CPU cost
    return ViewTransform(tf, size, RandomRot90() if view == "satellite" else None)


# --- checkpoints -------------------------------------------------------------------------------------
def _short(keys, n=5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _load_exact(module: nn.Module, state: dict, what: str) -> None:
    """Load `state` so that every module tensor gets a value and every file tensor finds a home."""
    own = module.state_dict()
    missing = set(own) - set(state)
    leftover = set(state) - set(own)
    wrong = {k for k in set(own) & set(state) if own[k].shape != state[k].shape}
    if missing or leftover or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model tensors not in it ({_short(missing)})")
        if leftover:
            parts.append(f"{len(leftover)} of its tensors with no place in the model ({_short(leftover)})")
        if wrong:
            parts.append("shape mismatches (" + _short(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                      for k in wrong) + ")")
        raise WeightsError(f"{what} does not fit: " + "; ".join(parts))
    module.load_state_dict(state)


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Lightning checkpoints may pickle hyper-parameter objects; only load files you trust.
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise WeightsError(f"init_checkpoint: cannot read {path} ({type(e).__name__}: {e})") from None


def _resize_pos_embed(model: TwoTower, state: dict) -> dict:
    """A checkpoint trained at another image size: resample ViT position embeddings to this model's grid."""
    from timm.layers import resample_abs_pos_embed

    own = model.state_dict()
    for k, v in list(state.items()):
        if k.endswith("pos_embed") and k in own and own[k].shape != v.shape and v.ndim == 3:
            tower = model.tower("street" if k.startswith("street.") else "satellite")
            grid = tower.patch_embed.grid_size
            prefix = 0 if getattr(tower, "no_embed_class", False) else tower.num_prefix_tokens
            state[k] = resample_abs_pos_embed(v, new_size=grid, num_prefix_tokens=prefix)
    return state


def vici_state_dict(lightning_state: dict, shared_towers: bool, path) -> dict:
    """Rename a VICI Lightning state_dict (model.street_conv.*, model.sat_conv.*) to our towers."""
    has_sat = any(k.startswith("model.sat_conv.") for k in lightning_state)
    if shared_towers and has_sat:
        raise WeightsError(f"init_checkpoint {path} holds two towers (model.sat_conv.*); set shared_towers: false")
    if not shared_towers and not has_sat:
        raise WeightsError(f"init_checkpoint {path} holds one shared tower (no model.sat_conv.*); "
                           "set shared_towers: true")
    out = {}
    for k, v in lightning_state.items():
        for src, dst in VICI_PREFIXES.items():
            if k.startswith(src):
                out[dst + k[len(src):]] = v
                break
        else:
            out[k] = v  # no home: reported as a leftover
    return out


def read_checkpoint(path: Union[str, Path]) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} not found (expected one of our .pt checkpoints or VICI's "
                           "Lightning .ckpt)")
    return _torch_load(path)


def load_init_checkpoint(model: TwoTower, path: Union[str, Path]) -> str:
    """Start the towers from our checkpoint or VICI's; every tensor must find a home. Returns the format."""
    ckpt = read_checkpoint(path)
    if isinstance(ckpt, dict) and "model" in ckpt and "model_config" in ckpt:
        kind, state = "ours", ckpt["model"]
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) and any(
            k.startswith("model.street_conv.") for k in ckpt["state_dict"]):
        kind, state = "vici", vici_state_dict(ckpt["state_dict"], model.shared, path)
    else:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WeightsError(f"init_checkpoint {path}: not one of our checkpoints (model + model_config) nor a "
                           f"VICI Lightning checkpoint (state_dict with model.street_conv.*); found {keys}")
    _load_exact(model, _resize_pos_embed(model, dict(state)), f"init_checkpoint {path} ({kind})")
    return kind


def model_from_checkpoint(path: Union[str, Path], ckpt: Optional[dict] = None) -> TwoTower:
    """Rebuild a model from one of our checkpoints alone (its stored model config and weights)."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    if not (isinstance(ckpt, dict) and "model_config" in ckpt):
        raise WeightsError(f"{path}: not one of our checkpoints (no model_config)")
    model = TwoTower(**ckpt["model_config"], pretrained=False)
    _load_exact(model, ckpt["model"], f"checkpoint {path}")
    return model


def load_model_for_eval(cfg, run_dir: Union[str, Path, None] = None) -> tuple[TwoTower, dict]:
    """The model to evaluate for a run, and its eval transforms by view.

    outputs/<run>/train/best.pt (else last.pt) if training wrote one; else `init_checkpoint`; else the bare
    backbone with its `pretrained` weights (zero-shot). A stored checkpoint trained with other parameters
    is refused, naming the keys.
    """
    from .paths import run_dir as _run_dir
    from .train import config_differences

    train_dir = Path(run_dir or _run_dir(cfg.run_name)) / "train"
    found = next((p for p in (train_dir / "best.pt", train_dir / "last.pt") if p.is_file()), None)
    if found:
        ckpt = read_checkpoint(found)
        diff = config_differences(ckpt.get("config", {}), cfg)
        if diff:
            raise WeightsError(f"{found} was trained with other parameters ({', '.join(diff)}); train this run "
                               "again (resume: false) or use another run_name")
        model = model_from_checkpoint(found, ckpt)
    else:
        model = build_model(cfg)
    model.eval()
    return model, {v: model_transforms(cfg, model, train=False, view=v) for v in VIEWS}


# --- summary -----------------------------------------------------------------------------------------
def model_summary(model: TwoTower) -> dict:
    """Parameters (all towers), forward GFLOPs of one tower on one image, image and embedding size."""
    from torch.utils.flop_counter import FlopCounterMode

    size = model.config["image_size"]
    x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode_street(x)
    model.train(was_training)
    return {
        "backbone": model.config["backbone"],
        "towers": "shared" if model.shared else "separate",
        "params (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "GMACs per image": round(counter.get_total_flops() / 2e9, 3),  # the unit of the paper's "FLOPs" column
        "image size": size,
        "embedding dim": model.out_dim,
    }
