"""The conv unit of the Caffe-built networks the authors' release uses: conv (with bias) ->
[temporal module] -> BatchNorm -> ReLU. BN-Inception is made of it, and so is the release's
Inception-v3 variant (``inception_v3.py``, ``layout="release"``); the release puts GSF between
the conv and its BN, which is where ``temporal`` runs.

Weight files name each unit's conv and BN by ids of their own (Caffe layer names, the release's
yaml ids); ``unit_key_map`` turns such a name table into a state-dict key map.
"""
from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU(nn.Module):
    """Conv (with bias, as in the Caffe models) + BatchNorm + ReLU. ``temporal`` (None unless set):
    a module between the conv and the BN, as in the authors' release. ``caffe_name``: the unit's
    Caffe layer name (BN-Inception's weight files key by it; "" where there is none)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 caffe_name: str = ""):
        super().__init__()
        self.caffe_name = caffe_name
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.temporal = None
        self.bn = nn.BatchNorm2d(out_channels)  # eps 1e-5, as Caffe's
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.temporal is not None:
            x = self.temporal(x)
        return self.relu(self.bn(x))


def unit_key_map(units: dict[str, tuple[str, str]]) -> dict[str, str]:
    """A weight file's key -> ours, for each ``ConvBNReLU`` at module path -> (its conv's id, its BN's id)."""
    mapping = {}
    for path, (conv, bn) in units.items():
        for p in ("weight", "bias"):
            mapping[f"{conv}.{p}"] = f"{path}.conv.{p}"
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            mapping[f"{bn}.{p}"] = f"{path}.bn.{p}"
    return mapping
