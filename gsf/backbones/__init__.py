"""Per-frame 2D backbones with insertion points for a temporal module.

Every builder is registered where it is defined (``gsf.register_backbone``, with the placements
it takes and its defaults) and has the signature (the options after ``insert`` it supports)::

    build_X(insert, placement, num_blocks, pretrained, width_mult) -> nn.Module

- ``insert(channels) -> nn.Module``: makes the temporal module for a point with that many
  channels (``None``: plain TSN backbone, nothing inserted). Where the module's input is a fresh
  activation that nothing else reads, the builder passes the module through ``on_fresh_input``.
- ``placement``: where in each block the module goes: backbone-specific words (its registered
  ``placements``), or a glob over module names (``pattern.py``; ``timm_models.py``: any timm CNN).
- ``num_blocks``: only the last N blocks get a module (``None``: all of them).
- ``pretrained``: path of a local ImageNet state dict (never downloaded), or ``None``.
- ``width_mult``: scales every channel count (small models for CPU smoke runs; 1.0 = the paper's).

The returned module maps frames ``(N*T, 3, H, W)`` to pooled features ``(N*T, D)`` and has an
attribute ``num_features = D``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

Insert = Callable[[int], nn.Module]


def blocks_to_convert(num_blocks: int | None, total: int, backbone: str) -> int:
    """How many of the last blocks get a module: ``num_blocks`` checked against ``total`` (None = all)."""
    if num_blocks is None:
        return total
    if not 0 <= num_blocks <= total:
        raise ValueError(f"{backbone} num_blocks must be in 0..{total} (None = all), got {num_blocks}")
    return num_blocks


def on_fresh_input(module: nn.Module) -> nn.Module:
    """Let ``module`` overwrite its input, if it can (an ``inplace`` flag): always without
    autograd, and in training only where its own rules allow it (GSF: input straight from a BN).

    Only for insertion points whose input is a fresh activation read by nothing else (a conv's
    BN/ReLU output, a pool output): never at a residual branch's input, which the skip also reads.
    """
    if hasattr(module, "inplace"):
        module.inplace = True
    return module
