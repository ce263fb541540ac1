"""BN-Inception (Ioffe & Szegedy, 2015) with insertion points for a temporal module.

The network is the Caffe-converted BN-Inception that TSN, TSM and GSF use (Cadene's
``pretrainedmodels.bninception``): every conv has a bias and is followed by an affine BatchNorm
and a ReLU; ten Inception blocks 3a, 3b, 3c, 4a-4e, 5a, 5b (3c and 4e halve the resolution and
have no 1x1 branch); global average pool -> 1024 features. With a 174-class head it has 10.45 M
parameters and 16.31 G multiply-adds per 8-frame 224x224 view in fvcore (paper: 16.43 G; the
paper's counter reads ~0.7% higher throughout).

Placement: which branch of each block hosts the temporal module
----------------------------------------------------------------
The module goes on a branch's output (after its last conv+BN+ReLU, before the concat). The
authors' release puts it between that conv and its BN (``layout="release"`` does too:
``relu(bn(module(conv(x))))`` inside the host ``ConvBNReLU``; a module on the 3c/4e pooled
pass-through has no conv and stays where it is); parameter and FLOP counts are the same either
way, so the paper's tables cannot tell the two apart.

* ``branch4`` (the paper's final configuration, its "least parametrized branch"): the 1x1 branch;
  in 3c and 4e, which have none, the 3x3-reduce conv (as in the authors' release).
* ``branch1``: the 3x3 branch (reduce 1x1 -> 3x3), on its output.
* ``branch2``: the double-3x3 branch (reduce 1x1 -> 3x3 -> 3x3), on its output.
* ``branch3``: the pool branch (pool -> 1x1 projection), on its output; in 3c and 4e this branch
  is the bare stride-2 max pool, and the module sits on that pooled pass-through.
* ``all``: on the output of every branch that ends in a conv (1x1, 3x3, double-3x3, pool
  projection); the pass-through of 3c/4e gets none.

The paper does not say which branch is 1, 2 or 3. We measured every candidate position with
fvcore (GSF at 100% of the channels, 8 frames, 224x224, 174-class head; one GSF on C channels has
``29*C + 40`` parameters). The paper's FLOPs are ~0.7% higher on the network and ~7% higher on
the GSF overhead (Tables 2 and 6 pin the factor to 1.03-1.12), so "pred" below is
``16.433 + 1.07 * (ours - 16.314)``:

=========================================  ========  ======  ======  ===================
position (3c/4e in brackets)               params_M  GFLOPs  pred    paper row
=========================================  ========  ======  ======  ===================
1x1 out [3x3 reduce]                       10.500    16.405  16.531  Branch 4 10.50/16.53
pool proj out [pooled pass-through]        10.501    16.380  16.503  Branch 3 10.50/16.50
3x3 out [3x3 out]                          10.499    16.387  16.511  Branch 1 10.48/16.51
double-3x3 out [double-3x3 out]            10.495    16.389  16.514  Branch 2 10.49/16.52
every conv-branch output [3x3, double]     10.615    16.568  16.704  All     10.62/16.72
-----------------------------------------  --------  ------  ------  -------------------
pool proj out [nothing]                    10.474    16.358  16.480  none (10.47/16.48)
every branch output [3x3, double, pool]    10.642    16.589  16.727  (All: 10.64 != 10.62)
after 3x3 reduce [3x3 reduce]              10.483    16.390  16.514  (Branch 1 alt.)
after double reduce [double reduce]        10.484    16.384  16.508  (Branch 1 alt.)
=========================================  ========  ======  ======  ===================

Evidence: Branch 3 has the fewest FLOPs but the most parameters, which only the pool branch with
the module on the 3c/4e pass-through gives (320 and 608 channels at 14x14 and 7x7); without the
pass-through it would be 10.47 M. The "All" row's 10.62 M rules the pass-through out there (with
it: 10.64 M). The 3x3 and double-3x3 outputs both land on 16.51 G and 10.50 M; the paper's 10.48
and 10.49 M are 0.1-0.2% below any branch *output* (only positions after the reduce convs give
10.48 M, but none gives 10.49 M with 16.52 G), so within the parameter column's resolution Branch 1
and 2 are the 3x3 and double-3x3 branches; we take the order that fits both columns best
(3x3: FLOPs exact, double-3x3: params and FLOPs within rounding). Read as the figure's order this
is the concat order rotated so that the GSF-hosting 1x1 branch comes last.
``tests/test_inception_backbones.py`` checks all rows against the paper (0.5% / 1.5%).

Pretrained weights
------------------
``pretrained`` is a local file (nothing is ever downloaded) holding BN-Inception's ImageNet
weights in any of these key layouts:

* TSN's Caffe conversion, the file the authors' release starts from
  (``https://yjxiong.blob.core.windows.net/models/bn_inception-9f5701afb96c8044.pth``): flat Caffe
  names such as ``conv1_7x7_s2.weight``, ``conv1_7x7_s2_bn.running_mean``,
  ``inception_3a_double_3x3_1_bn.bias``, every BatchNorm vector stored as (1, C) (the release
  squeezes dim 0 of every tensor before loading; so do we, where the model has (C,)), and the
  ImageNet classifier ``fc.*``;
* Cadene's ``pretrainedmodels.bninception`` (``bn_inception-52deb4733.pth``): the same names,
  BatchNorm vectors (C,), classifier ``last_linear.*``;
* this module's own keys (what ``python -m harness.prepare weights bninception`` writes).

Each conv layer here remembers its Caffe name, which maps those keys onto the nested layout; the
classifier is ignored. All of them are the same network and expect BGR images in [0, 255] minus
the mean (104, 117, 128), std 1 (``data.normalize: caffe_bgr``).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn

from ..registry import register_backbone
from . import Insert, blocks_to_convert, on_fresh_input
from .conv_unit import ConvBNReLU, unit_key_map
from .weights import fit_state_dict, read_state_dict

__all__ = ["BNInception", "build_bninception", "caffe_state_dict", "load_pretrained", "PLACEMENTS", "BLOCK_NAMES", "INPUT_SIZE"]

INPUT_SIZE = 224

# Per block: 1x1, 3x3 reduce, 3x3, double-3x3 reduce, double 3x3, pool type, pool proj, stride.
# 0 channels = no such branch. Stride-2 blocks (3c, 4e) pass their max-pooled input through.
_BLOCKS = OrderedDict([
    ("3a", (64, 64, 64, 64, 96, "avg", 32, 1)),
    ("3b", (64, 64, 96, 64, 96, "avg", 64, 1)),
    ("3c", (0, 128, 160, 64, 96, "max", 0, 2)),
    ("4a", (224, 64, 96, 96, 128, "avg", 128, 1)),
    ("4b", (192, 96, 128, 96, 128, "avg", 128, 1)),
    ("4c", (160, 128, 160, 128, 160, "avg", 128, 1)),
    ("4d", (96, 128, 192, 160, 192, "avg", 128, 1)),
    ("4e", (0, 128, 192, 192, 256, "max", 0, 2)),
    ("5a", (352, 192, 320, 160, 224, "avg", 128, 1)),
    ("5b", (352, 192, 320, 192, 224, "max", 128, 1)),
])
BLOCK_NAMES = tuple(_BLOCKS)

# Insertion points per placement as (branch, after layer); after ``None`` = the branch's output.
# First list: four-branch blocks; second: the stride-2 blocks 3c and 4e (see the module docstring).
_POINTS = {
    "branch1": ([("3x3", None)], [("3x3", None)]),
    "branch2": ([("double_3x3", None)], [("double_3x3", None)]),
    "branch3": ([("pool", None)], [("pool", None)]),
    "branch4": ([("1x1", None)], [("3x3", "3x3_reduce")]),
    "all": ([("1x1", None), ("3x3", None), ("double_3x3", None), ("pool", None)],
            [("3x3", None), ("double_3x3", None)]),
}
PLACEMENTS = tuple(_POINTS)


def _scaled(channels: int, width_mult: float) -> int:
    """Channel count times ``width_mult``, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(channels * width_mult / 8)) * 8)


class InceptionBlock(nn.Module):
    """One BN-Inception block: parallel branches concatenated along channels.

    ``branches`` maps "1x1", "3x3", "double_3x3", "pool" (in concat order; 3c and 4e have no
    "1x1") to an ``nn.Sequential`` of named layers; a temporal module becomes one more layer.
    """

    def __init__(self, name: str, in_ch: int, cfg: tuple, width_mult: float = 1.0):
        super().__init__()
        c1, c3r, c3, cdr, cd, pool, cp, stride = cfg
        c1, c3r, c3, cdr, cd, cp = (_scaled(c, width_mult) if c else 0 for c in (c1, c3r, c3, cdr, cd, cp))
        self.in_channels = in_ch
        self.stride = stride

        def conv(layer: str, cin: int, cout: int, kernel: int, s: int = 1) -> tuple[str, ConvBNReLU]:
            return layer, ConvBNReLU(cin, cout, kernel, s, kernel // 2, caffe_name=f"inception_{name}_{layer}")

        branches = OrderedDict()
        if c1:
            branches["1x1"] = [conv("1x1", in_ch, c1, 1)]
        branches["3x3"] = [conv("3x3_reduce", in_ch, c3r, 1), conv("3x3", c3r, c3, 3, stride)]
        branches["double_3x3"] = [conv("double_3x3_reduce", in_ch, cdr, 1), conv("double_3x3_1", cdr, cd, 3),
                                  conv("double_3x3_2", cd, cd, 3, stride)]
        if stride == 2:
            branches["pool"] = [("pool", nn.MaxPool2d(3, stride=2, ceil_mode=True))]
        else:
            pool_layer = (nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True) if pool == "avg"
                          else nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True))
            branches["pool"] = [("pool", pool_layer), conv("pool_proj", in_ch, cp, 1)]
        self.branches = nn.ModuleDict({k: nn.Sequential(OrderedDict(v)) for k, v in branches.items()})
        self.out_channels = sum(self.channels_at(b, None) for b in self.branches)

    def channels_at(self, branch: str, after: str | None) -> int:
        """Channels flowing out of ``after`` (``None``: the branch's output) in ``branch``."""
        layers = list(self.branches[branch].named_children())
        if after is not None:
            layers = layers[:[n for n, _ in layers].index(after) + 1]
        convs = [m for _, m in layers if isinstance(m, ConvBNReLU)]
        return convs[-1].out_channels if convs else self.in_channels  # pool pass-through

    def insert(self, branch: str, after: str | None, module: nn.Module, before_bn: bool = False) -> None:
        """Place ``module`` in ``branch`` right after layer ``after`` (``None``: at its end); with
        ``before_bn``, inside that point's conv layer, between its conv and its BN (where it has one)."""
        items = list(self.branches[branch].named_children())
        pos = len(items) if after is None else [n for n, _ in items].index(after) + 1
        if before_bn and isinstance(items[pos - 1][1], ConvBNReLU):
            items[pos - 1][1].temporal = module
            return
        self.branches[branch] = nn.Sequential(OrderedDict(items[:pos] + [("temporal", module)] + items[pos:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches.values()], dim=1)


class BNInception(nn.Module):
    """Per-frame BN-Inception trunk: frames ``(N*T, 3, H, W)`` -> pooled features ``(N*T, 1024)``."""

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        w = lambda c: _scaled(c, width_mult)  # noqa: E731
        self.stem = nn.Sequential(OrderedDict([
            ("conv1_7x7_s2", ConvBNReLU(3, w(64), 7, 2, 3, caffe_name="conv1_7x7_s2")),
            ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
            ("conv2_3x3_reduce", ConvBNReLU(w(64), w(64), 1, 1, 0, caffe_name="conv2_3x3_reduce")),
            ("conv2_3x3", ConvBNReLU(w(64), w(192), 3, 1, 1, caffe_name="conv2_3x3")),
            ("pool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        ]))
        blocks, in_ch = OrderedDict(), w(192)
        for name, cfg in _BLOCKS.items():
            blocks[name] = InceptionBlock(name, in_ch, cfg, width_mult)
            in_ch = blocks[name].out_channels
        self.blocks = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)  # = Caffe's 7x7 global pool at 224, any size here
        self.num_features = in_ch
        self.input_size = INPUT_SIZE

    def insert_modules(self, insert: Insert, placement: str = "branch4", num_blocks: int | None = None,
                       layout: str = "paper") -> None:
        """Add ``insert(channels)`` at ``placement`` in each of the last ``num_blocks`` blocks
        (``layout="release"``: between the host conv and its BN)."""
        num_blocks = _check(placement, num_blocks)
        four_branch, stride2 = _POINTS[placement]
        for block in list(self.blocks)[len(BLOCK_NAMES) - num_blocks:]:
            for branch, after in stride2 if block.stride == 2 else four_branch:
                # Always after a layer of the branch (never at its shared input): a fresh tensor.
                block.insert(branch, after, on_fresh_input(insert(block.channels_at(branch, after))),
                             before_bn=layout == "release")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            # Caffe's ceil-mode pools in 3c/4e only line up with their stride-2 convs then.
            raise ValueError(f"BNInception needs an input size that is a multiple of 32, got {tuple(x.shape[-2:])}")
        return torch.flatten(self.pool(self.blocks(self.stem(x))), 1)


def _check(placement: str, num_blocks: int | None) -> int:
    """Validate the arguments; returns the number of blocks that get a module."""
    if placement not in _POINTS:
        raise ValueError(f"BNInception placement must be one of {PLACEMENTS}, got {placement!r}")
    return blocks_to_convert(num_blocks, len(BLOCK_NAMES), "BNInception")


def release_units(model: nn.Module) -> dict[str, tuple[str, str, str]]:
    """Module path of each conv unit -> the Caffe (and release) ids of its conv, BN and GSF."""
    return {path: (m.caffe_name, f"{m.caffe_name}_bn", f"gsf_{m.caffe_name}")
            for path, m in model.named_modules() if isinstance(m, ConvBNReLU)}


def _caffe_key_map(model: nn.Module) -> dict[str, str]:
    """Caffe/Cadene state-dict key -> this module's key, for every conv+BN layer."""
    return unit_key_map({path: (conv, bn) for path, (conv, bn, _) in release_units(model).items()})


def caffe_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s trunk weights under Cadene's key names (what ``pretrained`` files hold)."""
    own = model.state_dict()
    return {caffe: own[native] for caffe, native in _caffe_key_map(model).items()}


def load_pretrained(model: BNInception, path: str | os.PathLike) -> None:
    """Load BN-Inception ImageNet weights from ``path`` (TSN, Cadene or native keys, see the module
    docstring) into a plain ``model``; any key left over or missing is an error naming the file."""
    source = read_state_dict(path, "BNInception pretrained weights")
    own = model.state_dict()
    mapping = _caffe_key_map(model)
    state = {}
    for key, value in source.items():
        if key.startswith(("last_linear.", "fc.")):
            continue  # ImageNet classifier: the video model brings its own head
        # A key that is neither a Caffe name nor ours stays as it is, to be listed as unexpected.
        state[mapping.get(key, key)] = value
    state = fit_state_dict(own, state, path, "BN-Inception (TSN/Cadene Caffe key names, or this module's own)",
                           shown=lambda keys: _reverse(mapping, keys))
    model.load_state_dict(state, strict=False)


def _reverse(mapping: dict[str, str], natives: list[str]) -> list[str]:
    back = {v: k for k, v in mapping.items()}
    return [back.get(k, k) for k in natives]


@register_backbone("bninception", PLACEMENTS, "branch4", 1.0)
def build_bninception(insert: Insert | None, placement: str = "branch4", num_blocks: int | None = None,
                      pretrained: str | os.PathLike | None = None, width_mult: float = 1.0,
                      layout: str = "paper") -> BNInception:
    """BN-Inception with ``insert(channels)`` at ``placement`` in the last ``num_blocks`` blocks.

    Weights from ``pretrained`` are loaded before the modules go in, so the file needs no keys
    for them. ``insert=None`` or ``num_blocks=0`` gives the plain TSN backbone.
    """
    _check(placement, num_blocks)  # fail before any file is read
    model = BNInception(width_mult)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    if insert is not None:
        model.insert_modules(insert, placement, num_blocks, layout)
    return model
