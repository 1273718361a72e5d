"""Weight files and checkpoints: read without running code from them, and fit into a model exactly.

- our checkpoints (train/best.pt, last.pt: tensors and plain types, weights-only loadable);
- VICI's released Lightning checkpoint (`init_checkpoint`): `model.street_conv.*` / `model.sat_conv.*` renamed to
  our towers; its pickled hyper-parameters are never built;
- a backbone's local weights file (`pretrained: <file>`, timm / Hugging Face .safetensors, .pth, .bin).
Every tensor must find its place and every place a tensor (`load_exact`), or the message says which did not.
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Union

import timm
import torch
from torch import nn

# VICI's Lightning module keeps its towers at model.street_conv / model.sat_conv (model.*_head if used).
VICI_PREFIXES = {"model.street_conv.": "street.", "model.sat_conv.": "satellite."}


class WeightsError(RuntimeError):
    """Backbone weights or a checkpoint that cannot be used; the message says which and what to do."""


def _short(keys, n=5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_exact(module: nn.Module, state: dict, what: str) -> None:
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


class _NotLoaded:
    """Stands in for a class or function that a checkpoint names outside torch's weights-only allow-list. It
    keeps the pickled arguments and state as plain data; the original is never imported nor called."""
    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self.qualname}, not loaded>"


def _holds_stand_in(obj, depth: int = 0) -> bool:
    if isinstance(obj, _NotLoaded) or (isinstance(obj, type) and issubclass(obj, _NotLoaded)):
        return True
    if isinstance(obj, dict):
        return depth > 50 or any(_holds_stand_in(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return depth > 50 or any(_holds_stand_in(v, depth + 1) for v in obj)
    return False


def _unsafe_globals(path: Path) -> list[str]:
    """The classes and functions a torch file's pickle names outside torch's allow-list (none if unreadable)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return []


def _pickle_refusal(path: Path, what: str, names) -> str:
    names = sorted(names) or ["objects torch's safe loader refuses"]
    out = path.with_name(f"{path.stem}-tensors{path.suffix}")
    return (f"{what} {path} holds pickled Python objects ({', '.join(names[:4])}"
            f"{', ...' if len(names) > 4 else ''}) where weights should be; building them could run any code in "
            "the file, so it is not loaded (our checkpoints and VICI's keep their weights as plain tensors). If you "
            f"trust the file, keep only its tensors: python -c \"import torch; ck = torch.load('{path}', "
            f"weights_only=False); torch.save({{'state_dict': ck['state_dict']}}, '{out}')\" (ck.state_dict() for a "
            f"pickled model), then point {what} at {out}")


def _torch_load(path: Path, what: str = "checkpoint") -> dict:
    """Read a checkpoint without running code from it.

    torch's weights-only loader reads our checkpoints (tensors and plain types). A Lightning checkpoint also
    pickles objects (hyper_parameters: an omegaconf DictConfig in VICI's case); it is read again with each class
    or function it names replaced by an inert stand-in, and kept only if its state_dict is tensors alone: the
    entries holding stand-ins are dropped. Any other file that needs pickle is refused, saying how to convert it.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # names classes or functions outside the allow-list: see below
    except Exception as e:  # truncated, not a torch file
        raise WeightsError(f"{what}: cannot read {path} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    names = _unsafe_globals(path)
    try:
        stand_ins = [(type(n.rsplit(".", 1)[-1], (_NotLoaded,), {"qualname": n}), n) for n in names]
        with torch.serialization.safe_globals(stand_ins):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # e.g. a global of a blocked module (os, sys), or a dict subclass: never loaded
        raise WeightsError(_pickle_refusal(path, what, names)) from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise WeightsError(_pickle_refusal(path, what, names))
    return {k: v for k, v in ckpt.items() if not _holds_stand_in(v)}


def _resize_pos_embed(model, state: dict) -> dict:
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


def read_checkpoint(path: Union[str, Path], what: str = "checkpoint") -> dict:
    """One of our checkpoints or VICI's, read without running code from the file (see _torch_load)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{what} {path} not found (expected one of our .pt checkpoints or VICI's "
                           "Lightning .ckpt)")
    return _torch_load(path, what)


def load_init_checkpoint(model, path: Union[str, Path]) -> str:
    """Start the towers from our checkpoint or VICI's; every tensor must find a home. Returns the format."""
    ckpt = read_checkpoint(path, "init_checkpoint")
    if isinstance(ckpt, dict) and "model" in ckpt and "model_config" in ckpt:
        kind, state = "ours", ckpt["model"]
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) and any(
            k.startswith("model.street_conv.") for k in ckpt["state_dict"]):
        kind, state = "vici", vici_state_dict(ckpt["state_dict"], model.shared, path)
    else:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WeightsError(f"init_checkpoint {path}: not one of our checkpoints (model + model_config) nor a "
                           f"VICI Lightning checkpoint (state_dict with model.street_conv.*); found {keys}")
    load_exact(model, _resize_pos_embed(model, dict(state)), f"init_checkpoint {path} ({kind})")
    return kind


def load_weights_file(backbone: nn.Module, path: Union[str, Path], name: str) -> None:
    """Load a local weights file (timm / Hugging Face .safetensors, .pth, .bin) into a backbone; every
    backbone tensor must be found in the file (the classifier, which we drop, may be extra)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"pretrained: weights file {path} not found for backbone '{name}' "
                           "(give the path to a .safetensors/.pth file, true for hub weights, or false)")
    try:
        state = timm.models.load_state_dict(str(path))  # weights_only: never runs code from the file
    except Exception as e:  # corrupt or not a checkpoint: one sentence, not a traceback
        if path.suffix != ".safetensors" and _unsafe_globals(path):  # pickled objects: refused, say why
            raise WeightsError(_pickle_refusal(path, "pretrained", _unsafe_globals(path))) from None
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
    load_exact(backbone, state, f"weights file {path} for backbone '{name}'")
