"""State-dict key names (and shapes) of the authors' released video models, from reading their model code.

Sources read (swathikirans/GSF, commit 6127807; docs/release_facts.md has the line numbers):
``models.py`` (the TSN wrapper ``VideoModel``: attributes ``base_model`` and ``new_fc``),
``backbones/resnetGSFModels.py`` (torchvision's attribute names plus ``gsf`` in every
Bottleneck), ``backbones/pytorch_load.py`` + ``backbones/layer_factory.py`` (each yaml layer
becomes an attribute named by its ``id``; every conv has a bias) and the two yaml files
``backbones/bn_inception_gsf.yaml``, ``backbones/inceptionv3_gsf.yaml`` (ids, channels, kernels).

A released checkpoint (``main.py``) is ``{"model_state_dict": <these keys, each prefixed with
"module." by DataParallel>, "epoch", "arch", "scaler_state_dict", "best_prec1",
"current_prec1", "lr"}``. ``release_model_keys`` returns key -> shape in registration order, so
a test can build a full fake checkpoint from it.
"""
from __future__ import annotations

from collections import OrderedDict

from release_reference import release_processed_channels

Shape = tuple
BN_BUFFERS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def gsf_keys(prefix: str, channels: int, ratio: float) -> "OrderedDict[str, Shape]":
    """One release GSF module on ``channels`` input channels (gsf.py:11-24)."""
    p = release_processed_channels(channels, ratio)
    keys = OrderedDict([(f"{prefix}conv3D.weight", (2, p // 2, 3, 3, 3)), (f"{prefix}conv3D.bias", (2,))])
    keys.update(bn_keys(f"{prefix}bn.", p))
    for conv in ("channel_conv1", "channel_conv2"):
        keys[f"{prefix}{conv}.weight"] = (1, 2, 3, 3)
        keys[f"{prefix}{conv}.bias"] = (1,)
    return keys


def bn_keys(prefix: str, channels: int) -> "OrderedDict[str, Shape]":
    return OrderedDict((f"{prefix}{b}", () if b == "num_batches_tracked" else (channels,)) for b in BN_BUFFERS)


# --------------------------------------------------------------------------------------------
# ResNet-50 (backbones/resnetGSFModels.py): torchvision names; ``gsf`` registered last in a block.
# --------------------------------------------------------------------------------------------

RESNET50_LAYERS = ((64, 3), (128, 4), (256, 6), (512, 3))  # (planes, blocks); expansion 4


def resnet50_keys(ratio: float = 25) -> "OrderedDict[str, Shape]":
    keys = OrderedDict([("conv1.weight", (64, 3, 7, 7))])
    keys.update(bn_keys("bn1.", 64))
    inplanes = 64
    for layer, (planes, blocks) in enumerate(RESNET50_LAYERS, start=1):
        for i in range(blocks):
            pre = f"layer{layer}.{i}."
            keys[pre + "conv1.weight"] = (planes, inplanes, 1, 1)
            keys.update(bn_keys(pre + "bn1.", planes))
            keys[pre + "conv2.weight"] = (planes, planes, 3, 3)
            keys.update(bn_keys(pre + "bn2.", planes))
            keys[pre + "conv3.weight"] = (4 * planes, planes, 1, 1)
            keys.update(bn_keys(pre + "bn3.", 4 * planes))
            if i == 0:  # stride or width change: a 1x1 conv + BN on the skip path
                keys[pre + "downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                keys.update(bn_keys(pre + "downsample.1.", 4 * planes))
            keys.update(gsf_keys(pre + "gsf.", 4 * planes, ratio))
            inplanes = 4 * planes
    return keys


# --------------------------------------------------------------------------------------------
# BN-Inception (bn_inception_gsf.yaml): ids such as inception_3a_1x1 / inception_3a_1x1_bn.
# --------------------------------------------------------------------------------------------

# Per block: input channels, then 1x1, 3x3 reduce, 3x3, double reduce, double 3x3, pool proj
# (0 = no such layer: 3c and 4e have no 1x1 branch and a bare stride-2 max pool).
BNINCEPTION_BLOCKS = OrderedDict([
    ("3a", (192, 64, 64, 64, 64, 96, 32)),
    ("3b", (256, 64, 64, 96, 64, 96, 64)),
    ("3c", (320, 0, 128, 160, 64, 96, 0)),
    ("4a", (576, 224, 64, 96, 96, 128, 128)),
    ("4b", (576, 192, 96, 128, 96, 128, 128)),
    ("4c", (576, 160, 128, 160, 128, 160, 128)),
    ("4d", (608, 96, 128, 192, 160, 192, 128)),
    ("4e", (608, 0, 128, 192, 192, 256, 0)),
    ("5a", (1056, 352, 192, 320, 160, 224, 128)),
    ("5b", (1024, 352, 192, 320, 192, 224, 128)),
])
# The layer whose conv output feeds the block's GSF (before that layer's BN).
BNINCEPTION_GSF_HOST = {b: ("3x3_reduce" if b in ("3c", "4e") else "1x1") for b in BNINCEPTION_BLOCKS}


def _caffe_conv_bn(keys, name: str, cin: int, cout: int, k: int, gsf_ratio: float | None = None) -> None:
    keys[f"{name}.weight"] = (cout, cin, k, k)
    keys[f"{name}.bias"] = (cout,)
    if gsf_ratio is not None:
        keys.update(gsf_keys(f"gsf_{name}.", cout, gsf_ratio))
    keys.update(bn_keys(f"{name}_bn.", cout))


def bninception_keys(ratio: float = 100) -> "OrderedDict[str, Shape]":
    keys = OrderedDict()
    _caffe_conv_bn(keys, "conv1_7x7_s2", 3, 64, 7)
    _caffe_conv_bn(keys, "conv2_3x3_reduce", 64, 64, 1)
    _caffe_conv_bn(keys, "conv2_3x3", 64, 192, 3)
    for b, (cin, c1, c3r, c3, cdr, cd, cp) in BNINCEPTION_BLOCKS.items():
        layers = [("1x1", cin, c1, 1), ("3x3_reduce", cin, c3r, 1), ("3x3", c3r, c3, 3),
                  ("double_3x3_reduce", cin, cdr, 1), ("double_3x3_1", cdr, cd, 3), ("double_3x3_2", cd, cd, 3),
                  ("pool_proj", cin, cp, 1)]
        for layer, lin, lout, k in layers:
            if lout:
                host = ratio if BNINCEPTION_GSF_HOST[b] == layer else None
                _caffe_conv_bn(keys, f"inception_{b}_{layer}", lin, lout, k, host)
    return keys


# --------------------------------------------------------------------------------------------
# Inception-v3 (inceptionv3_gsf.yaml): conv id "<unit>_Conv2D", BN id "<unit>_batchnorm".
# --------------------------------------------------------------------------------------------

# (release unit, in, out, kernel_h, kernel_w, torchvision block.attribute at the same position).
# Every non-square kernel is the transpose of torchvision's at that position (the release's
# 7x7 branch runs 7x1 then 1x7; torchvision 1x7 then 7x1), and concat orders agree position-wise.
def _mixed_a(p, cin, pool_out):
    return [(f"{p}_conv", cin, 64, 1, 1, "branch1x1"), (f"{p}_tower_conv", cin, 48, 1, 1, "branch5x5_1"),
            (f"{p}_tower_conv_1", 48, 64, 5, 5, "branch5x5_2"), (f"{p}_tower_1_conv", cin, 64, 1, 1, "branch3x3dbl_1"),
            (f"{p}_tower_1_conv_1", 64, 96, 3, 3, "branch3x3dbl_2"), (f"{p}_tower_1_conv_2", 96, 96, 3, 3, "branch3x3dbl_3"),
            (f"{p}_tower_2_conv", cin, pool_out, 1, 1, "branch_pool")]


def _mixed_c(p, c7):
    return [(f"{p}_conv", 768, 192, 1, 1, "branch1x1"), (f"{p}_tower_conv", 768, c7, 1, 1, "branch7x7_1"),
            (f"{p}_tower_conv_1", c7, c7, 7, 1, "branch7x7_2"), (f"{p}_tower_conv_2", c7, 192, 1, 7, "branch7x7_3"),
            (f"{p}_tower_1_conv", 768, c7, 1, 1, "branch7x7dbl_1"), (f"{p}_tower_1_conv_1", c7, c7, 1, 7, "branch7x7dbl_2"),
            (f"{p}_tower_1_conv_2", c7, c7, 7, 1, "branch7x7dbl_3"), (f"{p}_tower_1_conv_3", c7, c7, 1, 7, "branch7x7dbl_4"),
            (f"{p}_tower_1_conv_4", c7, 192, 7, 1, "branch7x7dbl_5"), (f"{p}_tower_2_conv", 768, 192, 1, 1, "branch_pool")]


def _mixed_e(p, cin):
    return [(f"{p}_conv", cin, 320, 1, 1, "branch1x1"), (f"{p}_tower_conv", cin, 384, 1, 1, "branch3x3_1"),
            (f"{p}_tower_mixed_conv", 384, 384, 3, 1, "branch3x3_2a"), (f"{p}_tower_mixed_conv_1", 384, 384, 1, 3, "branch3x3_2b"),
            (f"{p}_tower_1_conv", cin, 448, 1, 1, "branch3x3dbl_1"), (f"{p}_tower_1_conv_1", 448, 384, 3, 3, "branch3x3dbl_2"),
            (f"{p}_tower_1_mixed_conv", 384, 384, 3, 1, "branch3x3dbl_3a"),
            (f"{p}_tower_1_mixed_conv_1", 384, 384, 1, 3, "branch3x3dbl_3b"),
            (f"{p}_tower_2_conv", cin, 192, 1, 1, "branch_pool")]


INCEPTION_V3_BLOCKS = OrderedDict([
    ("stem", [("conv", 3, 32, 3, 3, "Conv2d_1a_3x3"), ("conv_1", 32, 32, 3, 3, "Conv2d_2a_3x3"),
              ("conv_2", 32, 64, 3, 3, "Conv2d_2b_3x3"), ("conv_3", 64, 80, 1, 1, "Conv2d_3b_1x1"),
              ("conv_4", 80, 192, 3, 3, "Conv2d_4a_3x3")]),
    ("Mixed_5b", _mixed_a("mixed", 192, 32)),
    ("Mixed_5c", _mixed_a("mixed_1", 256, 64)),
    ("Mixed_5d", _mixed_a("mixed_2", 288, 64)),
    ("Mixed_6a", [("mixed_3_conv", 288, 384, 3, 3, "branch3x3"), ("mixed_3_tower_conv", 288, 64, 1, 1, "branch3x3dbl_1"),
                  ("mixed_3_tower_conv_1", 64, 96, 3, 3, "branch3x3dbl_2"),
                  ("mixed_3_tower_conv_2", 96, 96, 3, 3, "branch3x3dbl_3")]),
    ("Mixed_6b", _mixed_c("mixed_4", 128)),
    ("Mixed_6c", _mixed_c("mixed_5", 160)),
    ("Mixed_6d", _mixed_c("mixed_6", 160)),
    ("Mixed_6e", _mixed_c("mixed_7", 192)),
    ("Mixed_7a", [("mixed_8_tower_conv", 768, 192, 1, 1, "branch3x3_1"), ("mixed_8_tower_conv_1", 192, 320, 3, 3, "branch3x3_2"),
                  ("mixed_8_tower_1_conv", 768, 192, 1, 1, "branch7x7x3_1"),
                  ("mixed_8_tower_1_conv_1", 192, 192, 7, 1, "branch7x7x3_2"),
                  ("mixed_8_tower_1_conv_2", 192, 192, 1, 7, "branch7x7x3_3"),
                  ("mixed_8_tower_1_conv_3", 192, 192, 3, 3, "branch7x7x3_4")]),
    ("Mixed_7b", _mixed_e("mixed_9", 1280)),
    ("Mixed_7c", _mixed_e("mixed_10", 2048)),
])
# The unit whose conv output feeds the block's GSF (before that unit's BN).
INCEPTION_V3_GSF_HOST = {"Mixed_6a": "mixed_3_conv", "Mixed_7a": "mixed_8_tower_conv"}
INCEPTION_V3_GSF_HOST.update({b: units[0][0] for b, units in INCEPTION_V3_BLOCKS.items()
                              if b not in ("stem", "Mixed_6a", "Mixed_7a")})


def inception_v3_units():
    """(torchvision block, release unit, in, out, kernel_h, kernel_w, torchvision attribute), yaml order."""
    return [(block, *unit) for block, units in INCEPTION_V3_BLOCKS.items() for unit in units]


def inception_v3_keys(ratio: float = 100) -> "OrderedDict[str, Shape]":
    keys = OrderedDict()
    for block, unit, cin, cout, kh, kw, _ in inception_v3_units():
        keys[f"{unit}_Conv2D.weight"] = (cout, cin, kh, kw)
        keys[f"{unit}_Conv2D.bias"] = (cout,)
        if INCEPTION_V3_GSF_HOST.get(block) == unit:
            keys.update(gsf_keys(f"gsf_{unit}_Conv2D.", cout, ratio))
        keys.update(bn_keys(f"{unit}_batchnorm.", cout))
    return keys


# --------------------------------------------------------------------------------------------
# The whole TSN wrapper (models.py): base_model.* then new_fc.* (dropout 0.5 > 0).
# --------------------------------------------------------------------------------------------

RELEASED = {  # backbone -> (release ``--arch``, gsf_ch_ratio of the released checkpoints, feature dim)
    "resnet50": ("resnet50", 25, 2048),
    "bninception": ("bninception", 100, 1024),
    "inception_v3": ("inceptionv3", 100, 2048),
}


def release_model_keys(backbone: str, num_classes: int = 174, ratio: float | None = None,
                       data_parallel: bool = True) -> "OrderedDict[str, Shape]":
    """Every key of a released ``VideoModel`` state dict, in order, with its shape."""
    _, default_ratio, features = RELEASED[backbone]
    ratio = default_ratio if ratio is None else ratio
    base = {"resnet50": resnet50_keys, "bninception": bninception_keys, "inception_v3": inception_v3_keys}[backbone](ratio)
    prefix = "module." if data_parallel else ""
    keys = OrderedDict((f"{prefix}base_model.{k}", s) for k, s in base.items())
    keys[f"{prefix}new_fc.weight"] = (num_classes, features)
    keys[f"{prefix}new_fc.bias"] = (num_classes,)
    return keys
