"""What the authors' released video models compute, stated from reading their model code (float64-friendly),
and random checkpoints in their format.

Sources read (swathikirans/GSF, commit 6127807; docs/release_facts.md has the line numbers):
``backbones/resnetGSFModels.py`` (the Bottleneck's forward, lines 64-86: conv3 -> gsf -> bn3),
``backbones/bn_inception_gsf.yaml`` and ``backbones/inceptionv3_gsf.yaml`` (every layer's kernel,
stride, pad and input, the concat orders, the pools' modes), ``backbones/layer_factory.py``
(Caffe pools are ceil-mode, ``nn.AvgPool2d`` counts padding, BatchNorm has PyTorch's eps 1e-5,
every conv of the yaml models has a bias), ``models.py`` (``VideoModel.forward``, lines 169-181:
backbone -> dropout -> ``new_fc`` -> mean of the frames' logits) and ``main.py:193-201`` (the
checkpoint dict). Each function reads a state dict under the release's key names (no
``module.``) and is written out plainly, layer by layer, so a test can hold
``build_model(release_checkpoint=...)`` to it on the same weights. Nothing here uses ``gsf``.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

from release_keys import (BNINCEPTION_BLOCKS, INCEPTION_V3_BLOCKS, RELEASED, RESNET50_LAYERS,
                          release_model_keys)
from release_reference import release_gsf_forward


def _bn(state, prefix: str, x):
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)


def _gsf(state, prefix: str, x, t: int, ratio: float):
    weights = {k.removeprefix(prefix + "."): v for k, v in state.items() if k.startswith(prefix + ".")}
    return release_gsf_forward(x, weights, t, ratio)


def _unit(state, conv: str, bn: str, x, t, ratio, stride=1, padding=0):
    """conv (with bias) -> [GSF, where the yaml has one on this conv] -> BN -> ReLU."""
    x = F.conv2d(x, state[f"{conv}.weight"], state[f"{conv}.bias"], stride, padding)
    gsf = f"gsf_{conv}"
    if f"{gsf}.conv3D.weight" in state:
        x = _gsf(state, gsf, x, t, ratio)
    return F.relu(_bn(state, bn, x))


def _maxpool(x, k, s, p=0):
    return F.max_pool2d(x, k, s, p, ceil_mode=True)


def _avgpool(x):  # 3x3/1, pad 1, ceil mode, padding counted
    return F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)


# --- ResNet-50 (resnetGSFModels.py) ------------------------------------------------------------

def resnet50_features(state, x, t: int, ratio: float = 25):
    x = F.relu(_bn(state, "bn1", F.conv2d(x, state["conv1.weight"], None, 2, 3)))
    x = F.max_pool2d(x, 3, 2, 1)
    for layer, (_, blocks) in enumerate(RESNET50_LAYERS, start=1):
        for i in range(blocks):
            p = f"layer{layer}.{i}."
            stride = 2 if i == 0 and layer > 1 else 1  # v1.5: the stride is on conv2 (and the skip's conv)
            out = F.relu(_bn(state, p + "bn1", F.conv2d(x, state[p + "conv1.weight"])))
            out = F.relu(_bn(state, p + "bn2", F.conv2d(out, state[p + "conv2.weight"], None, stride, 1)))
            out = F.conv2d(out, state[p + "conv3.weight"])
            out = _bn(state, p + "bn3", _gsf(state, p + "gsf", out, t, ratio))
            skip = x if i else _bn(state, p + "downsample.1", F.conv2d(x, state[p + "downsample.0.weight"], None, stride))
            x = F.relu(out + skip)
    return x.mean(dim=(2, 3))


# --- BN-Inception (bn_inception_gsf.yaml) --------------------------------------------------------

def bninception_features(state, x, t: int, ratio: float = 100):
    def unit(name, x, stride=1, padding=0):
        return _unit(state, name, f"{name}_bn", x, t, ratio, stride, padding)

    x = _maxpool(unit("conv1_7x7_s2", x, 2, 3), 3, 2)
    x = _maxpool(unit("conv2_3x3", unit("conv2_3x3_reduce", x), 1, 1), 3, 2)
    for b, (_, c1, *_rest) in BNINCEPTION_BLOCKS.items():
        p = f"inception_{b}_"
        stride = 2 if b in ("3c", "4e") else 1
        branches = [unit(p + "1x1", x)] if c1 else []
        branches.append(unit(p + "3x3", unit(p + "3x3_reduce", x), stride, 1))
        d = unit(p + "double_3x3_1", unit(p + "double_3x3_reduce", x), 1, 1)
        branches.append(unit(p + "double_3x3_2", d, stride, 1))
        if stride == 2:  # 3c, 4e: a bare 3x3/2 max pool, no projection
            branches.append(_maxpool(x, 3, 2))
        else:  # 5b pools with max, the others average
            pooled = _maxpool(x, 3, 1, 1) if b == "5b" else _avgpool(x)
            branches.append(unit(p + "pool_proj", pooled))
        x = torch.cat(branches, 1)
    return x.mean(dim=(2, 3))


# --- Inception-v3 (inceptionv3_gsf.yaml) -------------------------------------------------------

# Units with stride 2, and the 3x3 units without padding; every other conv pads (kh // 2, kw // 2).
_V3_STRIDE2 = {"conv", "mixed_3_conv", "mixed_3_tower_conv_2", "mixed_8_tower_conv_1", "mixed_8_tower_1_conv_3"}
_V3_VALID = _V3_STRIDE2 | {"conv_1", "conv_4"}


def inception_v3_features(state, x, t: int, ratio: float = 100):
    shapes = {unit: (kh, kw) for units in INCEPTION_V3_BLOCKS.values() for unit, _, _, kh, kw, _ in units}

    def unit(name, x):
        kh, kw = shapes[name]
        padding = 0 if name in _V3_VALID else (kh // 2, kw // 2)
        return _unit(state, f"{name}_Conv2D", f"{name}_batchnorm", x, t, ratio,
                     2 if name in _V3_STRIDE2 else 1, padding)

    def chain(x, *names):
        for name in names:
            x = unit(name, x)
        return x

    x = _maxpool(chain(x, "conv", "conv_1", "conv_2"), 3, 2)
    x = _maxpool(chain(x, "conv_3", "conv_4"), 3, 2)
    for m in ("mixed", "mixed_1", "mixed_2"):  # 35x35 blocks
        x = torch.cat([unit(f"{m}_conv", x), chain(x, f"{m}_tower_conv", f"{m}_tower_conv_1"),
                       chain(x, f"{m}_tower_1_conv", f"{m}_tower_1_conv_1", f"{m}_tower_1_conv_2"),
                       unit(f"{m}_tower_2_conv", _avgpool(x))], 1)
    x = torch.cat([unit("mixed_3_conv", x), chain(x, "mixed_3_tower_conv", "mixed_3_tower_conv_1", "mixed_3_tower_conv_2"),
                   _maxpool(x, 3, 2)], 1)
    for m in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):  # 17x17 blocks: 7x1 then 1x7
        x = torch.cat([unit(f"{m}_conv", x), chain(x, f"{m}_tower_conv", f"{m}_tower_conv_1", f"{m}_tower_conv_2"),
                       chain(x, *(f"{m}_tower_1_conv" + s for s in ("", "_1", "_2", "_3", "_4"))),
                       unit(f"{m}_tower_2_conv", _avgpool(x))], 1)
    x = torch.cat([chain(x, "mixed_8_tower_conv", "mixed_8_tower_conv_1"),
                   chain(x, *(f"mixed_8_tower_1_conv" + s for s in ("", "_1", "_2", "_3"))), _maxpool(x, 3, 2)], 1)
    for m in ("mixed_9", "mixed_10"):  # 8x8 blocks; mixed_10's pool is a max pool
        tower = unit(f"{m}_tower_conv", x)
        tower_1 = chain(x, f"{m}_tower_1_conv", f"{m}_tower_1_conv_1")
        pooled = _maxpool(x, 3, 1, 1) if m == "mixed_10" else _avgpool(x)
        x = torch.cat([unit(f"{m}_conv", x), unit(f"{m}_tower_mixed_conv", tower), unit(f"{m}_tower_mixed_conv_1", tower),
                       unit(f"{m}_tower_1_mixed_conv", tower_1), unit(f"{m}_tower_1_mixed_conv_1", tower_1),
                       unit(f"{m}_tower_2_conv", pooled)], 1)
    return x.mean(dim=(2, 3))


FEATURES = {"resnet50": resnet50_features, "bninception": bninception_features, "inception_v3": inception_v3_features}


def release_video_forward(backbone: str, state: dict, clips: torch.Tensor, ratio: float | None = None) -> torch.Tensor:
    """The released ``VideoModel`` in eval mode: clips (B, T, 3, H, W) -> logits (B, classes)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    base = {k.removeprefix("base_model."): v for k, v in state.items() if k.startswith("base_model.")}
    b, t = clips.shape[:2]
    ratio = RELEASED[backbone][1] if ratio is None else ratio
    features = FEATURES[backbone](base, clips.flatten(0, 1), t, ratio)
    logits = F.linear(features, state["new_fc.weight"], state["new_fc.bias"])  # dropout: identity in eval
    return logits.view(b, t, -1).mean(1)


# --- random released checkpoints ---------------------------------------------------------------

def random_release_state(backbone: str, seed: int = 0, dtype=torch.float32, num_classes: int = 174,
                         ratio: float | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Every key of a released model (``module.`` prefixed, as saved), random values at scales that
    keep a deep network's activations finite: He-scaled convs, BatchNorms near identity with
    non-trivial statistics, small GSF and classifier weights."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape, scale):
        return torch.randn(shape, generator=g, dtype=dtype) * scale

    keys = release_model_keys(backbone, num_classes, ratio)
    norms = {k.removesuffix(".running_mean") for k in keys if k.endswith(".running_mean")}
    state = OrderedDict()
    for key, shape in keys.items():
        owner, name = key.rsplit(".", 1)
        bn = owner in norms
        if name == "num_batches_tracked":
            state[key] = torch.tensor(int(torch.randint(1, 1000, (), generator=g)))
        elif bn and name == "weight":
            state[key] = 1 + randn(shape, 0.1)
        elif bn and name == "running_var":
            state[key] = 1 + torch.rand(shape, generator=g, dtype=dtype) * 0.5
        elif bn:  # bias, running_mean
            state[key] = randn(shape, 0.1)
        elif ".conv3D." in key or ".channel_conv" in key:
            state[key] = randn(shape, 0.2)
        elif name == "weight" and len(shape) == 4:
            state[key] = randn(shape, math.sqrt(2.0 / math.prod(shape[1:])))
        else:  # conv biases, new_fc
            state[key] = randn(shape, 0.05)
    return state


def save_release_checkpoint(path, backbone: str, state: dict) -> None:
    """``state`` in a file as ``main.py`` saves it (its dict, accuracies as tensors)."""
    torch.save({"epoch": 60, "arch": RELEASED[backbone][0], "model_state_dict": state,
                "scaler_state_dict": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                      "growth_interval": 2000, "_growth_tracker": 0},
                "best_prec1": torch.tensor(50.0), "current_prec1": torch.tensor(49.5), "lr": 0.0}, path)
