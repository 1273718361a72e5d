"""Provenance text: which data, which model and which epoch's weights a run's numbers come from.

One line each, from the run's parameters alone, so that metrics files, tables and figures all say it the same
way. Compute code (retrieval, results) imports this module; the figures stamp the same lines under each plot.
"""
from __future__ import annotations

from pathlib import Path

from .weight_sources import PACKAGE, package_source


def describe_data(cfg) -> str:
    if cfg.is_embedded:
        return (f"embedded world (seed {cfg.world_seed}, {cfg.world_train_locations} train / "
                f"{cfg.world_test_locations} test + {cfg.world_distractors} distractor locations, "
                f"difficulty {cfg.world_difficulty:g}"
                + (f", {cfg.world_drone_views} drone views per building" if cfg.world_drone_views else "") + ")"
                + describe_extra(cfg))
    return f"University-1652 at {Path(cfg.data_root).name or cfg.data_root}" + describe_extra(cfg)


def describe_extra(cfg) -> str:
    """The extra distractor tiles of the test gallery (vici_utils.gallery), '' when there are none."""
    parts = ([f"{cfg.world_extra_distractors:,} rendered tiles"] if cfg.is_embedded and cfg.world_extra_distractors
             else []) + [Path(f).name or str(f) for f in cfg.extra_gallery]
    return f"; test gallery + extra distractors: {', '.join(parts)}" if parts else ""


def backbone_weights(cfg) -> str:
    """Where the backbone's own weights come from: hub, package, file or scratch (the `pretrained` key)."""
    if cfg.pretrained is True:
        return "hub"
    if cfg.pretrained == PACKAGE:
        return "package"
    return "file" if isinstance(cfg.pretrained, str) else "scratch"


def initial_weights(cfg) -> str:
    """Where a run's towers start from before it trains them: init_checkpoint, or the backbone's weights. The one
    rule models.build_model follows, and describe_weights and retrieval.weights_source say in words."""
    return "init_checkpoint" if cfg.init_checkpoint else backbone_weights(cfg)


def describe_model(cfg) -> str:
    kind = initial_weights(cfg) if cfg.epochs == 0 else backbone_weights(cfg)
    weights = {"init_checkpoint": f"checkpoint {Path(cfg.init_checkpoint or '').name}", "hub": "hub weights",
               "package": "ImageNet weights from a pip package", "file": f"weights {Path(str(cfg.pretrained)).name}",
               "scratch": "from scratch"}[kind]
    towers = "shared tower" if cfg.shared_towers else "two towers"
    chosen = ", epoch chosen on TEST" if cfg.epochs and cfg.select_on == "test" and cfg.select_epoch == "best" else ""
    return f"{cfg.backbone} ({weights}, {towers}, {cfg.image_size or 'native'} px, drone P={cfg.drone_rate:g}{chosen})"


def describe_selection(cfg) -> str:
    """Which epoch's weights a run evaluates, and so how far its test numbers can be trusted."""
    if not cfg.epochs:
        return "no training in this run"
    if cfg.select_epoch == "last":
        scored = "the TEST set is" if cfg.select_on == "test" else "the held-out buildings are"
        return f"the last epoch (select_epoch: last; {scored} scored for the curve, never to choose)"
    if cfg.select_on == "test":
        return "the epoch with the best test R@1 (VICI's protocol: the test set chose it, so test numbers are optimistic)"
    if not cfg.val_fraction:
        return "the last epoch (no held-out buildings to choose with)"
    return "the epoch with the best R@1 on held-out training buildings (the test set never chose)"


def describe_weights(cfg) -> str:
    """Where a run's backbone weights come from before training, in a sentence."""
    kind = initial_weights(cfg)
    if kind == "init_checkpoint":
        return f"the checkpoint {Path(cfg.init_checkpoint).name} (init_checkpoint)"
    if kind == "hub":
        return f"timm hub weights of {cfg.backbone} (pretrained: true)"
    if kind == "package":
        return package_source(cfg.backbone).summary + " (pretrained: package)"
    if kind == "file":
        return f"the weights file {cfg.pretrained} (pretrained: <file>)"
    return "random initialisation: trained from scratch (pretrained: false)"
