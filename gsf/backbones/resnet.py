"""torchvision ResNets with a temporal module after chosen convolutions of each residual block.

``placement`` (the paper's Table 3):
- ``"conv1"`` / ``"conv2"``: after that conv's BN + ReLU, on the block's ``planes`` channels;
- ``"conv3"``: after conv3's BN, before the residual add, on the ``4 * planes`` expansion channels
  (bottlenecks only; the authors' release puts GSF here with 25% of those channels);
- ``"all"``: after every conv of the block;
- ``"input"``: at the start of the residual branch, before conv1 — TSM's "residual shift".

``layout="release"`` (the authors' release, ``gsf/release.py``): the module sits between each
chosen conv and that conv's BN instead (released ResNet-50: conv3 -> GSF -> bn3 in every block,
``backbones/resnetGSFModels.py:74-78`` of swathikirans/GSF); ``"input"`` stays where it is.

Layer names are torchvision's, so a torchvision ImageNet state dict loads unchanged
(``pretrained=path``) before the modules are inserted.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..registry import register_backbone
from . import Insert, blocks_to_convert, on_fresh_input
from .weights import load_state_dict

PLACEMENTS = ("conv1", "conv2", "conv3", "all", "input")
BASIC_PLACEMENTS = tuple(p for p in PLACEMENTS if p != "conv3")  # basic blocks have two convs


class TemporalBlock(nn.Module):
    """A torchvision residual block with temporal modules at its insertion points."""

    def __init__(self, block: nn.Module, insert: Insert, placement: str, layout: str = "paper"):
        super().__init__()
        bottleneck = isinstance(block, Bottleneck)
        convs = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
        allowed = PLACEMENTS if bottleneck else BASIC_PLACEMENTS
        if placement not in allowed:
            raise ValueError(f"placement {placement!r} is not one of {list(allowed)} for {type(block).__name__}")
        self.block = block
        self.before_bn = layout == "release"
        wanted = convs if placement == "all" else (placement,)
        self.temporal = nn.ModuleDict(
            {name: insert(self._channels(name)) if name == "input" else on_fresh_input(insert(self._channels(name)))
             for name in ("input",) + convs if name in wanted}
        )

    def _channels(self, name: str) -> int:
        if name == "input":
            return self.block.conv1.in_channels
        return getattr(self.block, name).out_channels

    def _temporal(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.temporal[name](x) if name in self.temporal else x

    def _conv_bn(self, name: str, x: torch.Tensor, relu: bool) -> torch.Tensor:
        """conv -> BN (-> ReLU) with the temporal module after them, or between conv and BN (release)."""
        b = self.block
        conv, bn = getattr(b, name), getattr(b, name.replace("conv", "bn"))
        if self.before_bn:
            out = bn(self._temporal(name, conv(x)))
            return b.relu(out) if relu else out
        out = bn(conv(x))
        return self._temporal(name, b.relu(out) if relu else out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        identity = x if b.downsample is None else b.downsample(x)
        out = self._conv_bn("conv1", self._temporal("input", x), relu=True)
        if isinstance(b, Bottleneck):
            out = self._conv_bn("conv2", out, relu=True)
            out = self._conv_bn("conv3", out, relu=False)
        else:
            out = self._conv_bn("conv2", out, relu=False)
        # In place, as torchvision's own block does (autograd too: neither BN nor the temporal
        # modules keep their output for backward, and autograd would refuse if one did). A fresh
        # full-size tensor per block was ~4% of ResNet-50's forward time.
        out += identity
        return b.relu(out)


class ResNetFeatures(nn.Module):
    """ResNet trunk without the classifier: (N*T, 3, H, W) -> (N*T, D)."""

    def __init__(self, net: ResNet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = net.fc.in_features

    def blocks(self) -> list[tuple[nn.Sequential, int]]:
        return [(layer, i) for layer in (self.layer1, self.layer2, self.layer3, self.layer4) for i in range(len(layer))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(torch.mean(x, dim=(2, 3)), 1)


class _WidthResNet(ResNet):
    """torchvision's ResNet with every width scaled (thin models for CPU smoke runs)."""

    def __init__(self, block, layers, width_mult: float):
        super().__init__(block, layers)
        if width_mult == 1.0:
            return
        widths = [_scaled(w, width_mult) for w in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.fc = nn.Linear(widths[3] * block.expansion, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _scaled(width: int, mult: float) -> int:
    return max(8, int(round(width * mult / 8)) * 8)


def build_resnet(
    block,
    layers: list[int],
    insert: Insert | None,
    placement: str,
    num_blocks: int | None = None,
    pretrained: str | None = None,
    width_mult: float = 1.0,
    layout: str = "paper",
) -> ResNetFeatures:
    net = _WidthResNet(block, layers, width_mult)
    if pretrained:
        load_state_dict(net, pretrained, ignore_prefixes=("fc.",))
    features = ResNetFeatures(net)
    if insert is None:
        return features
    blocks = features.blocks()
    n = blocks_to_convert(num_blocks, len(blocks), "ResNet")
    for layer, i in blocks[len(blocks) - n:]:
        layer[i] = TemporalBlock(layer[i], insert, placement, layout)
    return features


# The paper's final configuration: 25% of the channels; ResNet-50/101 after conv3 (the authors'
# release, Table 3's best), basic blocks after conv2.
build_resnet18 = register_backbone("resnet18", BASIC_PLACEMENTS, "conv2", 0.25)(
    partial(build_resnet, BasicBlock, [2, 2, 2, 2]))
build_resnet34 = register_backbone("resnet34", BASIC_PLACEMENTS, "conv2", 0.25)(
    partial(build_resnet, BasicBlock, [3, 4, 6, 3]))
build_resnet50 = register_backbone("resnet50", PLACEMENTS, "conv3", 0.25)(
    partial(build_resnet, Bottleneck, [3, 4, 6, 3]))
build_resnet101 = register_backbone("resnet101", PLACEMENTS, "conv3", 0.25)(
    partial(build_resnet, Bottleneck, [3, 4, 23, 3]))
