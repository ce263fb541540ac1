"""The TSN video classifier and ``build_model``, the one entry point the harness uses.

Add your own temporal module or backbone by registering it in ``TEMPORAL_MODULES`` or
``BACKBONES``; a spec can then name it in its ``model`` section.
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from .backbones.bninception import build_bninception
from .backbones.inception_v3 import build_inception_v3
from .backbones.resnet import build_resnet18, build_resnet34, build_resnet50, build_resnet101
from .modules import GSF, SpatioTemporalShift, TemporalShift

# name -> factory(channels, num_frames, **options) -> nn.Module. ``options`` always holds
# shift_ratio, gating and fusion, ``layout`` when it is "release", plus the spec's
# ``module_options``; a factory takes what it needs.
TEMPORAL_MODULES: dict[str, Callable[..., nn.Module] | None] = {
    "gsf": lambda c, t, shift_ratio, gating, fusion, layout="paper", impl="auto", **_: GSF(
        c, t, shift_ratio, gating, fusion, layout, impl=impl),
    "gsm": lambda c, t, shift_ratio, gating, layout="paper", impl="auto", **_: GSF(
        c, t, shift_ratio, gating, "sum", layout, impl=impl),
    "tsm": lambda c, t, fold_div=8, impl="auto", **_: TemporalShift(c, t, fold_div, impl),
    "stsm": lambda c, t, temporal_fold_div=8, spatial_fold_div=16, impl="auto", **_: SpatioTemporalShift(
        c, t, temporal_fold_div, spatial_fold_div, impl),
    "none": None,
}


class BackboneSpec:
    """A backbone builder with the paper's defaults for where the module goes."""

    def __init__(self, build: Callable[..., nn.Module], placement: str, shift_ratio: float, placements: tuple[str, ...]):
        self.build, self.placement, self.shift_ratio, self.placements = build, placement, shift_ratio, placements


_INCEPTION_PLACEMENTS = ("branch1", "branch2", "branch3", "branch4", "all")
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(build_resnet18, "conv2", 0.25, ("conv1", "conv2", "all", "input")),
    "resnet34": BackboneSpec(build_resnet34, "conv2", 0.25, ("conv1", "conv2", "all", "input")),
    "resnet50": BackboneSpec(build_resnet50, "conv3", 0.25, ("conv1", "conv2", "conv3", "all", "input")),
    "resnet101": BackboneSpec(build_resnet101, "conv3", 0.25, ("conv1", "conv2", "conv3", "all", "input")),
    "bninception": BackboneSpec(build_bninception, "branch4", 1.0, _INCEPTION_PLACEMENTS),
    "inception_v3": BackboneSpec(build_inception_v3, "branch4", 1.0, ("branch4",)),
}


class TSN(nn.Module):
    """Temporal Segment Network: per-frame backbone -> dropout -> fc, averaged over frames.

    ``(B, T, 3, H, W) -> (B, num_classes)``. The temporal modules inside the backbone are what
    let frames talk to each other; without them this is the order-blind TSN baseline.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_frames: int, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.num_frames = num_frames
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.num_features, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        if t != self.num_frames:
            raise ValueError(f"model was built for {self.num_frames} frames, got clips of {t}")
        frames = clips.reshape(b * t, *clips.shape[2:])
        logits = self.fc(self.dropout(self.backbone(frames)))
        return logits.view(b, t, -1).mean(dim=1)


def build_model(
    backbone: str = "resnet50",
    module: str = "gsf",
    num_classes: int = 174,
    num_frames: int = 8,
    shift_ratio: float | None = None,
    gating: str | float = "learned",
    fusion: str = "learned",
    placement: str | None = None,
    num_blocks: int | None = None,
    pretrained: str | None = None,
    width_mult: float = 1.0,
    dropout: float = 0.5,
    module_options: dict[str, Any] | None = None,
    layout: str | None = None,
    release_checkpoint: str | None = None,
) -> TSN:
    """Build a TSN video classifier with ``module`` inserted into ``backbone``.

    ``placement``, ``shift_ratio`` default to the paper's final configuration for the backbone
    (ResNet: after conv3 on 25% of the channels; Inception: the 1x1 branch, 100%).

    The authors' release (``gsf/release.py``): ``layout="release"`` builds their arrangement
    (GSF's release layout, placed between the host conv and its BatchNorm, and their
    Inception-v3 variant); ``release_checkpoint=PATH`` builds the model a released checkpoint
    holds (``layout`` then defaults to "release") and loads its weights.
    """
    if release_checkpoint is not None:
        from .release import build_released_model

        return build_released_model(
            release_checkpoint, backbone=backbone, module=module, num_classes=num_classes, num_frames=num_frames,
            shift_ratio=shift_ratio, gating=gating, fusion=fusion, placement=placement, num_blocks=num_blocks,
            pretrained=pretrained, width_mult=width_mult, dropout=dropout, module_options=module_options,
            layout=layout)
    layout = layout or "paper"
    if layout not in ("paper", "release"):
        raise ValueError(f"layout must be 'paper' or 'release', got {layout!r}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; registered: {sorted(BACKBONES)}")
    if module not in TEMPORAL_MODULES:
        raise ValueError(f"unknown module {module!r}; registered: {sorted(TEMPORAL_MODULES)}")
    spec = BACKBONES[backbone]
    placement = placement or spec.placement
    if placement not in spec.placements:
        raise ValueError(f"placement {placement!r} is not one of {list(spec.placements)} for {backbone}")
    factory = TEMPORAL_MODULES[module]
    release = {}
    if layout == "release":
        if module not in ("gsf", "gsm", "none"):
            raise ValueError(f"layout='release' is the authors' released GSF; module {module!r} has no release layout")
        if "layout" not in inspect.signature(spec.build).parameters:
            raise ValueError(f"backbone {backbone!r} has no release layout (its builder takes no 'layout')")
        release = {"layout": layout}
    insert = None
    if factory is not None:
        options = dict(
            shift_ratio=spec.shift_ratio if shift_ratio is None else shift_ratio,
            gating=gating, fusion=fusion, **release, **(module_options or {}))
        insert = partial(factory, t=num_frames, **options)
    features = spec.build(insert, placement=placement, num_blocks=num_blocks, pretrained=pretrained,
                          width_mult=width_mult, **release)
    return TSN(features, num_classes, num_frames, dropout)
