"""Insert a temporal module after the layers of any 2D CNN whose names match a glob.

``insert_after(net, "layer*.*.bn3", insert)`` puts ``insert(C)`` right after every matching
layer (each becomes ``nn.Sequential(layer, module)``), with C the channels of that layer's
output. The glob is ``fnmatch``'s over ``net.named_modules()`` names (``*`` matches dots too;
``[1-9]`` a digit). The channels come from one forward of a small frame with hooks on the
matches (on the meta device, a model built there costs nothing to probe), which also refuses a
match that does not run exactly once per forward (a shared module: torchvision's ResNet blocks
use one ``relu`` three times) or whose output is not a frame tensor ``(N, C, H, W)``.

Where "after a layer" is depends on the layer a glob names: after a conv (before its norm), after
its norm, or after the activation. The built-in backbones put the module after the spatial conv's
norm and activation, on the tensor the block's next layer reads, and ``timm_models`` picks its
defaults the same way.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from . import Insert, blocks_to_convert, on_fresh_input

PROBE_SIZE = 64  # pixels: enough for 5 stride-2 stages; channels do not depend on it


def matching(net: nn.Module, placement: str) -> list[str]:
    """Names of ``net``'s modules that ``placement`` matches, in definition order."""
    names = [name for name, _ in net.named_modules() if name and fnmatchcase(name, placement)]
    if not names:
        convs = [name for name, m in net.named_modules() if isinstance(m, _ConvNd)]
        examples = ", ".join(convs[len(convs) // 2:len(convs) // 2 + 3]) or "none"
        raise ValueError(f"placement {placement!r} matches no module of {type(net).__name__} "
                         f"(a glob over module names; e.g. its convs {examples})")
    return names


def probe_channels(net: nn.Module, names: list[str], size: int = PROBE_SIZE) -> tuple[dict[str, int], int]:
    """The output channels of each named layer, and the width of ``net``'s output, from one forward
    of a ``size`` x ``size`` frame in eval mode (``net``'s mode and state are left as they were)."""
    modules = dict(net.named_modules())
    shapes: dict[str, list[tuple[int, ...]]] = {name: [] for name in names}

    def hook(name):
        return lambda module, args, out: shapes[name].append(tuple(out.shape) if torch.is_tensor(out) else None)

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    training = net.training
    try:
        net.eval()
        with torch.no_grad():
            out = net(torch.zeros(1, 3, size, size, device=device))
    finally:
        net.train(training)
        for h in handles:
            h.remove()
    channels = {}
    for name, seen in shapes.items():
        if len(seen) != 1:
            raise ValueError(f"placement matches {name!r}, which runs {len(seen)} times per forward "
                             f"({'a shared module' if seen else 'unused'}); match a layer that runs once")
        if seen[0] is None or len(seen[0]) != 4:
            raise ValueError(f"placement matches {name!r}, whose output {seen[0]} is not frames (N, C, H, W): "
                             "a temporal module goes after a CNN layer")
        channels[name] = seen[0][1]
    return channels, int(out.shape[-1])


def insert_after(net: nn.Module, placement: str, insert: Insert, num_blocks: int | None = None,
                 size: int = PROBE_SIZE) -> list[str]:
    """Put ``insert(channels)`` after each of the last ``num_blocks`` layers ``placement`` matches
    (None: all); returns their names."""
    names = matching(net, placement)
    n = blocks_to_convert(num_blocks, len(names), f"placement {placement!r} ({len(names)} matches):")
    names = names[len(names) - n:]
    if not names:
        return []
    channels, _ = probe_channels(net, names, size)
    # Deepest first, so that a match inside another match is wrapped before its parent is.
    for name in sorted(names, key=lambda s: s.count("."), reverse=True):
        parent, _, attr = name.rpartition(".")
        host = net.get_submodule(parent) if parent else net
        layer = getattr(host, attr)
        module = insert(channels[name])
        # A conv's or a norm's output is a new tensor that only the inserted module reads.
        if isinstance(layer, (_ConvNd, _BatchNorm)):
            module = on_fresh_input(module)
        setattr(host, attr, nn.Sequential(layer, module))
    return names
