"""Any timm CNN as a backbone: ``backbone: timm/<name>``, the temporal module inserted by glob.

``placement`` is a glob over the timm model's module names (``gsf.backbones.pattern``) and the
module goes after every match, ``num_blocks`` of them counted from the end. Without one, the
family default below applies: after each block's spatial conv, as the paper places GSF ("after a
2D convolution"; in ResNet after the bottleneck's 3x3 conv2), on the normalised and activated
tensor the block's next layer reads, as the built-in backbones do:

| timm family (module) | default placement | where that is |
|---|---|---|
| ResNet, ResNet-D, ResNeXt, SE-ResNet (``resnet``), bottleneck | ``layer*.*.act2`` | after conv2 (3x3) + BN + ReLU: our ``resnet50`` ``conv2`` |
| the same, basic blocks (``resnet18d``, ``resnet34d``) | ``layer*.*.bn2`` | after conv2 + BN, before the residual add: our ``resnet18`` ``conv2`` |
| RegNetX/Y (``regnet``) | ``s*.b*.conv2`` | after the grouped 3x3 ConvNormAct |
| ConvNeXt (``convnext``) | ``stages.*.blocks.*.conv_dw`` | after the 7x7 depthwise conv: its LayerNorm works channels-last |
| EfficientNet, MobileNetV2/V3 (``efficientnet``, ``mobilenetv3``) | ``blocks.[1-9]*.*.bn2`` | after the depthwise conv + BN + act of each inverted residual (stage 0's depthwise-separable blocks have no expansion) |

``shift_ratio`` defaults to 0.25 (the paper's ResNet value). The paper's own ResNet-50 setting,
after conv3's BN before the residual add (our ``resnet50`` default), is
``placement: "layer*.*.bn3"``. Other families need a ``placement``.

Weights: ``pretrained: /path/file.pth`` (or ``.safetensors``, e.g. timm's ``model.safetensors``
from the Hugging Face hub, fetched by you) loads into the plain model before the modules go in;
the classifier's keys are ignored. timm never downloads anything here (``pretrained=False``).
``width_mult`` does not apply (timm models come in sizes: pick a smaller one).
"""
from __future__ import annotations

import difflib
from functools import lru_cache, partial

import torch
from torch import nn

from ..registry import Backbone, register_backbone_prefix
from . import Insert
from .pattern import insert_after, matching
from .weights import load_state_dict

TIMM_PREFIX = "timm/"
SHIFT_RATIO = 0.25


def _resnet(names: list[str]) -> str:
    return "layer*.*.act2" if any(n.endswith(".conv3") for n in names) else "layer*.*.bn2"


FAMILY_PLACEMENTS = {
    "resnet": _resnet,
    "regnet": lambda names: "s*.b*.conv2",
    "convnext": lambda names: "stages.*.blocks.*.conv_dw",
    "efficientnet": lambda names: "blocks.[1-9]*.*.bn2",
    "mobilenetv3": lambda names: "blocks.[1-9]*.*.bn2",
}


class TimmFeatures(nn.Module):
    """A timm model without its classifier: frames ``(N*T, 3, H, W)`` -> pooled features ``(N*T, D)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        # What forward returns with num_classes=0 (MobileNetV3's conv head makes it differ from num_features).
        self.num_features = getattr(net, "head_hidden_size", None) or net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def create(name: str) -> nn.Module:
    """The timm model ``name`` with random weights and no classifier (never a download)."""
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0)


def build_timm(name: str, insert: Insert | None, placement: str, num_blocks: int | None = None,
               pretrained: str | None = None) -> TimmFeatures:
    """timm's ``name`` with ``insert(channels)`` after the last ``num_blocks`` layers ``placement`` matches."""
    net = create(name)
    if pretrained:
        classifier = net.pretrained_cfg.get("classifier") or ()
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        load_state_dict(net, pretrained, ignore_prefixes=tuple(f"{c}." for c in classifier))
    if insert is not None:
        insert_after(net, placement, insert, num_blocks, size=_probe_size(net))
    return TimmFeatures(net)


def _probe_size(net: nn.Module) -> int:
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    return cfg["input_size"][-1] if cfg.get("fixed_input_size") else 64


@register_backbone_prefix(TIMM_PREFIX, owner="timm", names="any timm CNN")
@lru_cache(maxsize=None)
def timm_backbone(name: str) -> Backbone:
    """The registry entry of ``timm/<name>``: a ValueError with close matches for an unknown name."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"unknown timm model {name!r}; "
                         + (f"close matches: {', '.join(close)}" if close else "see timm.list_models()"))
    with torch.device("meta"):  # names only: no memory, no init
        net = create(name)
    family = type(net).__module__.rsplit(".", 1)[-1]
    default = FAMILY_PLACEMENTS[family]([n for n, _ in net.named_modules()]) if family in FAMILY_PLACEMENTS else None
    if default is not None:
        matching(net, default)  # a family default that matches nothing is our bug: say so here
    return Backbone(f"{TIMM_PREFIX}{name}", partial(build_timm, name), None, default, SHIFT_RATIO)
