"""Inception-v3 (Szegedy et al., 2016; torchvision's) with insertion points for a temporal module.

Placement (``branch4``, the only one the paper uses for Inception-v3): the least parametrized
branch of each of the 11 Mixed blocks, i.e. ``branch1x1``; the reduction blocks have none, and
there the module sits where the authors' release puts it: on Mixed_6a's single 3x3/2 conv
(``branch3x3``, 384 channels) and on Mixed_7a's first 1x1 conv (``branch3x3_1``, 192 channels).
Of the alternatives this is also the closest to the paper's 22.22 M (skipping the two reduction
blocks gives 22.19 M, Mixed_6a's ``branch3x3dbl_1`` instead 22.20 M).

Input size: 229x229, as in the authors' release, with Caffe-style ``ceil_mode`` on the two stem
max pools (their model is built from Caffe layers, which round pooled sizes up): the Mixed blocks
then see 27/13/6 pixels. With GSF and a 174-class head: 22.21 M parameters and 26.79 G fvcore
multiply-adds per 8-frame view against the paper's 22.22 M / 26.96 G (-0.6%, the same offset
as BN-Inception and ResNet-50). Floor-mode pooling at 229 gives 23.48 G (-13%) and 224 gives
22.84 G, so neither is what the paper measured. At the standard 299 the two pooling modes give
the same sizes, so the ceil mode changes nothing for torchvision's own use of the weights.

``pretrained`` (a local file; nothing is ever downloaded), for the paper layout: a torchvision
``inception_v3`` ImageNet state dict (e.g. the file ``inception_v3_google-0cc3c7bd.pth``);
``fc.*`` and ``AuxLogits.*`` are ignored. As torchvision does for these weights,
``transform_input`` is then switched on, so frames normalized with the usual ImageNet mean/std
are rescaled to the [-1, 1] range the weights were trained on.

``layout="release"``: the authors' release (``gsf/release.py``) is not torchvision's network but
the "inceptionv3-cuhk" model built from ``backbones/inceptionv3_gsf.yaml`` of swathikirans/GSF.
Its variant here keeps torchvision's blocks, names and concat order and changes what differs:
every conv has a bias and every BatchNorm eps 1e-5 (``layer_factory.py:35, 72``); every
non-square kernel, and its padding, is the transpose of torchvision's at that position (the yaml's
7x7 branches run 7x1 then 1x7, Mixed_7b/7c's split convs are 3x1 then 1x3); Mixed_7c's pool
branch max-pools (``mixed_10_tower_2_pool``, ``mode: max``); no ``transform_input`` (their input
is BGR 0-255 minus (104, 117, 128)); the module sits between the host conv and its BN. The
release's max pools round up (ceil mode); at its 229x229 input only the two stem pools change
size, which this variant (like the paper one) sets; Mixed_6a/7a's pools give the same sizes either
way there, and sizes where they would not are not the release's.

``pretrained`` for ``layout="release"``: the ImageNet file the release starts from,
``https://yjxiong.blob.core.windows.net/models/inceptionv3-cuhk-0e09b300b493bc74c.pth``
("inceptionv3-cuhk", keys named by the ids of the release's ``backbones/inceptionv3.yaml``:
``<unit>_Conv2D.weight/.bias``, ``<unit>_batchnorm.*``; a leading dim of 1 is squeezed, the
classifier ``top_cls_fc.*`` ignored), mapped key for key onto this variant with the release's
name table (``release_units``); or this variant's own keys (what ``python -m harness.prepare weights
inception_v3`` writes). Those weights expect BGR 0-255 minus (104, 117, 128)
(``data.normalize: caffe_bgr``); torchvision's weights do not fit this variant, nor these the
paper layout.
"""
from __future__ import annotations

import os
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.inception import (Inception3, InceptionA, InceptionAux, InceptionB, InceptionC, InceptionD,
                                          InceptionE)

from ..registry import register_backbone
from . import Insert, blocks_to_convert, on_fresh_input
from .conv_unit import ConvBNReLU, unit_key_map
from .weights import fit_state_dict, read_state_dict

__all__ = ["build_inception_v3", "cuhk_key_map", "PLACEMENTS", "BLOCK_NAMES", "INPUT_SIZE"]

INPUT_SIZE = 229

# Block -> the conv (a BasicConv2d attribute of the block) whose output gets the module.
_BRANCH4 = {
    "Mixed_5b": "branch1x1", "Mixed_5c": "branch1x1", "Mixed_5d": "branch1x1",
    "Mixed_6a": "branch3x3",
    "Mixed_6b": "branch1x1", "Mixed_6c": "branch1x1", "Mixed_6d": "branch1x1", "Mixed_6e": "branch1x1",
    "Mixed_7a": "branch3x3_1",
    "Mixed_7b": "branch1x1", "Mixed_7c": "branch1x1",
}
BLOCK_NAMES = tuple(_BRANCH4)
PLACEMENTS = ("branch4",)

# The release's Inception-v3 units (backbones/inceptionv3_gsf.yaml ids: <unit>_Conv2D, <unit>_batchnorm,
# gsf_<unit>_Conv2D) by torchvision's block and attribute at the same position.
_V3_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
            "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
_V3_BLOCKS = {  # block -> (the release's unit prefix, block kind)
    "Mixed_5b": ("mixed", "A"), "Mixed_5c": ("mixed_1", "A"), "Mixed_5d": ("mixed_2", "A"),
    "Mixed_6a": ("mixed_3", "B"), "Mixed_6b": ("mixed_4", "C"), "Mixed_6c": ("mixed_5", "C"),
    "Mixed_6d": ("mixed_6", "C"), "Mixed_6e": ("mixed_7", "C"), "Mixed_7a": ("mixed_8", "D"),
    "Mixed_7b": ("mixed_9", "E"), "Mixed_7c": ("mixed_10", "E"),
}
_V3_UNITS = {  # block kind -> torchvision attribute -> the release's unit suffix
    "A": {"branch1x1": "conv", "branch5x5_1": "tower_conv", "branch5x5_2": "tower_conv_1",
          "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3": "tower_1_conv_2",
          "branch_pool": "tower_2_conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower_conv", "branch3x3dbl_2": "tower_conv_1",
          "branch3x3dbl_3": "tower_conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower_conv", "branch7x7_2": "tower_conv_1", "branch7x7_3": "tower_conv_2",
          "branch7x7dbl_1": "tower_1_conv", "branch7x7dbl_2": "tower_1_conv_1", "branch7x7dbl_3": "tower_1_conv_2",
          "branch7x7dbl_4": "tower_1_conv_3", "branch7x7dbl_5": "tower_1_conv_4", "branch_pool": "tower_2_conv"},
    "D": {"branch3x3_1": "tower_conv", "branch3x3_2": "tower_conv_1", "branch7x7x3_1": "tower_1_conv",
          "branch7x7x3_2": "tower_1_conv_1", "branch7x7x3_3": "tower_1_conv_2", "branch7x7x3_4": "tower_1_conv_3"},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
          "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1",
          "branch_pool": "tower_2_conv"},
}


def _check(placement: str, num_blocks: int | None, width_mult: float) -> int:
    """Validate the arguments; returns the number of blocks that get a module."""
    if placement not in PLACEMENTS:
        raise ValueError(f"InceptionV3 placement must be one of {PLACEMENTS} (the 1x1 branch), got {placement!r}")
    if width_mult != 1.0:
        raise ValueError(f"InceptionV3 supports only width_mult=1.0, got {width_mult}")
    return blocks_to_convert(num_blocks, len(BLOCK_NAMES), "InceptionV3")


def _load_pretrained(net: nn.Module, path: str | os.PathLike) -> None:
    """torchvision's ImageNet weights into the paper-layout network."""
    source = read_state_dict(path, "InceptionV3 pretrained weights")
    if _is_release_file(source):
        raise ValueError(f"{path} holds the release's Inception-v3 (inceptionv3-cuhk) weights, which fit only "
                         "the authors' variant: set model.layout: release (and data.normalize: caffe_bgr)")
    state = {k: v for k, v in source.items() if not k.startswith(("fc.", "AuxLogits."))}
    state = fit_state_dict(net.state_dict(), state, path, "torchvision's inception_v3")
    net.load_state_dict(state, strict=False)
    net.transform_input = True  # the weights expect [-1, 1] inputs, as in torchvision


def _load_release_pretrained(net: nn.Module, path: str | os.PathLike) -> None:
    """The release's ImageNet file (inceptionv3-cuhk names), or this variant's own keys, into the
    release-layout network."""
    source = read_state_dict(path, "InceptionV3 pretrained weights")
    if "Conv2d_1a_3x3.conv.weight" in source and "Conv2d_1a_3x3.conv.bias" not in source:
        raise ValueError(f"{path} holds torchvision's inception_v3 weights, which do not fit the authors' variant "
                         "(layout: release; biased convs, transposed kernels); use them with layout: paper, "
                         "or the release's inceptionv3-cuhk file (python -m harness.prepare weights inception_v3)")
    mapping = cuhk_key_map(net)
    state = {mapping.get(k, k): v for k, v in source.items() if not k.startswith("top_cls_fc.")}
    back = {ours: theirs for theirs, ours in mapping.items()}
    state = fit_state_dict(net.state_dict(), state, path,
                           "the release's Inception-v3 (inceptionv3-cuhk key names, or this variant's own)",
                           shown=lambda keys: [back.get(k, k) for k in keys])
    net.load_state_dict(state, strict=False)


def release_units(net: nn.Module) -> dict[str, tuple[str, str, str]]:
    """Module path of each conv unit of the release-layout network -> the release's ids of its
    conv, BN and GSF (``<unit>_Conv2D``, ``<unit>_batchnorm``, ``gsf_<unit>_Conv2D``)."""
    units = {}
    for path, m in net.named_modules():
        if isinstance(m, ConvBNReLU):
            block, _, attr = path.rpartition(".")
            if block:
                prefix, kind = _V3_BLOCKS[block]
                unit = f"{prefix}_{_V3_UNITS[kind][attr]}"
            else:
                unit = _V3_STEM[attr]
            units[path] = (f"{unit}_Conv2D", f"{unit}_batchnorm", f"gsf_{unit}_Conv2D")
    return units


def cuhk_key_map(net: nn.Module) -> dict[str, str]:
    """inceptionv3-cuhk key (the release yaml's ids) -> this release-layout network's key."""
    return unit_key_map({path: (conv, bn) for path, (conv, bn, _) in release_units(net).items()})


def _is_release_file(state: dict) -> bool:
    """The release's Inception-v3 weights, in its names (cuhk) or ours (biased convs)."""
    return "conv_Conv2D.weight" in state or "Conv2d_1a_3x3.conv.bias" in state


def release_conv(in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> ConvBNReLU:
    """A conv unit of the release's Inception-v3 in place of torchvision's ``BasicConv2d`` (same
    arguments): conv with bias, its kernel and padding transposed -> [temporal] -> BN (eps 1e-5;
    torchvision's BasicConv2d: 0.001) -> ReLU. ``temporal`` sits between the conv and the BN, as
    GSF in the release."""
    return ConvBNReLU(in_channels, out_channels, _transposed(kernel_size), stride, _transposed(padding))


def _transposed(size):
    return tuple(reversed(size)) if isinstance(size, (tuple, list)) else size


class _ReleaseMixed7c(InceptionE):
    """Mixed_7c as released: the pool branch takes a 3x3/1 max pool (torchvision's averages)."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return [self.branch1x1(x),
                torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
                torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1),
                self.branch_pool(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))]


def _release_inception_v3() -> Inception3:
    # Inception3 hands its conv block to the stem only: each Mixed block needs it given.
    blocks = [partial(block, conv_block=release_conv)
              for block in (InceptionA, InceptionB, InceptionC, InceptionD, InceptionE, InceptionAux)]
    net = Inception3(aux_logits=False, transform_input=False, inception_blocks=[release_conv, *blocks],
                     init_weights=False)
    net.Mixed_7c = _ReleaseMixed7c(2048, conv_block=release_conv)
    return net


@register_backbone("inception_v3", PLACEMENTS, "branch4", 1.0)
def build_inception_v3(insert: Insert | None, placement: str = "branch4", num_blocks: int | None = None,
                       pretrained: str | os.PathLike | None = None, width_mult: float = 1.0,
                       layout: str = "paper") -> nn.Module:
    """torchvision Inception-v3 trunk with ``insert(channels)`` on the 1x1 branch of the last
    ``num_blocks`` Mixed blocks: frames ``(N*T, 3, H, W)`` -> pooled features ``(N*T, 2048)``.
    ``layout="release"``: the authors' variant (see the module docstring)."""
    num_blocks = _check(placement, num_blocks, width_mult)
    release = layout == "release"
    if release:
        net = _release_inception_v3()
    else:
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    net.maxpool1.ceil_mode = net.maxpool2.ceil_mode = True  # Caffe pooling, as the paper's model
    net.dropout, net.fc = nn.Identity(), nn.Identity()  # the video classifier adds its own
    if pretrained is not None:
        (_load_release_pretrained if release else _load_pretrained)(net, pretrained)
    if insert is not None:
        for name in BLOCK_NAMES[len(BLOCK_NAMES) - num_blocks:]:
            block = getattr(net, name)
            conv = getattr(block, _BRANCH4[name])
            module = on_fresh_input(insert(conv.bn.num_features))
            if release:
                conv.temporal = module
            else:
                setattr(block, _BRANCH4[name], nn.Sequential(conv, module))
    net.num_features = 2048
    net.input_size = INPUT_SIZE
    return net
