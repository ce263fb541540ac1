"""Self-checks of our statement of the authors' released GSF (tests/release_reference.py) and of the
release's key tables (tests/release_keys.py).

The statement is exercised three ways: constructed inputs whose output is known by hand (shift
direction, channel order, pass-through), an independent identity with our paper-layout GSF (the
release is the paper layout run backwards in time, with time-flipped kernels and the release's
channel order), and the key tables against torchvision / our BN-Inception table.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from release_keys import (INCEPTION_V3_GSF_HOST, inception_v3_units, release_model_keys,  # noqa: E402
                          RESNET50_LAYERS)
from release_reference import (random_release_weights, release_gsf_forward, release_output_order,  # noqa: E402
                               release_processed_channels)

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def frames(n, t, c, h=4, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n * t, c, h, w, generator=g, dtype=DT)


def constant_gate_weights(channels: int, gate: float) -> dict:
    """Weights whose gate is ``gate`` everywhere and whose fusion weight is exactly 0.5 (sigmoid(0))."""
    w = random_release_weights(channels)
    w["conv3D.weight"].zero_()
    w["conv3D.bias"].fill_(math.atanh(gate))
    for conv in ("channel_conv1", "channel_conv2"):
        w[f"{conv}.weight"].zero_()
        w[f"{conv}.bias"].zero_()
    return w


@pytest.mark.parametrize("channels, ratio, expected", [
    (256, 25, 64), (2048, 25, 512), (64, 100, 64), (352, 100, 352),  # the released configurations
    (10, 50, 6), (10, 30, 4), (100, 12.5, 12), (48, 12.5, 6), (100, 29, 30),  # floor, then odd -> even
])
def test_processed_channels_floor_then_odd_up(channels, ratio, expected):
    assert release_processed_channels(channels, ratio) == expected


def test_output_order_interleaves_each_groups_halves():
    assert release_output_order(8) == [0, 2, 1, 3, 4, 6, 5, 7]
    assert release_output_order(12) == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]
    for p in (4, 16, 64, 352):
        assert sorted(release_output_order(p)) == list(range(p))


def test_shape_and_untouched_channels_pass_through():
    x = frames(2, 4, 32)
    w = random_release_weights(32, ratio=25)
    for training in (False, True):
        y = release_gsf_forward(x, w, num_segments=4, ratio=25, training=training)
        assert y.shape == x.shape
        assert torch.equal(y[:, 8:], x[:, 8:])  # 25% of 32 = 8 processed
        assert not torch.allclose(y[:, :8], x[:, :8])


def test_channel_order_on_a_constructed_input():
    """Gate 0 (nothing shifts) and fusion weight 0.5: output channel k is 0.5 * input channel order[k]."""
    x = frames(1, 3, 8)
    y = release_gsf_forward(x, constant_gate_weights(8, 0.0), num_segments=3)
    torch.testing.assert_close(y, 0.5 * x[:, [0, 2, 1, 3, 4, 6, 5, 7]], **TOL)


def test_shift_direction_on_a_constructed_input():
    """Frame t holds the value t+1 everywhere. Group 1 must see frame t+1 (zero after the last),
    group 2 frame t-1 (zero before the first)."""
    t, c, gate = 4, 8, 0.6
    x = torch.arange(1, t + 1, dtype=DT).view(t, 1, 1, 1).expand(t, c, 3, 3).clone()
    y = release_gsf_forward(x, constant_gate_weights(c, gate), num_segments=t)
    value = torch.arange(1, t + 1, dtype=DT)
    from_next = torch.cat([value[1:], torch.zeros(1, dtype=DT)])
    from_prev = torch.cat([torch.zeros(1, dtype=DT), value[:-1]])
    expect1 = 0.5 * gate * from_next + 0.5 * (1 - gate) * value
    expect2 = 0.5 * gate * from_prev + 0.5 * (1 - gate) * value
    torch.testing.assert_close(y[:, :4], expect1.view(t, 1, 1, 1).expand(t, 4, 3, 3), **TOL)
    torch.testing.assert_close(y[:, 4:], expect2.view(t, 1, 1, 1).expand(t, 4, 3, 3), **TOL)


@pytest.mark.parametrize("channels, ratio", [(12, 50), (7, 100), (10, 10)])
def test_rejects_sizes_the_release_cannot_run(channels, ratio):
    """P = 6 (not a multiple of 4), P = 8 > 7 channels, P = 0: the release raises there."""
    with pytest.raises(ValueError):
        release_gsf_forward(frames(1, 2, channels), random_release_weights(16), num_segments=2, ratio=ratio)


def test_running_statistics_update_in_training_only():
    x = frames(2, 3, 16)
    w = random_release_weights(16)
    before = {k: v.clone() for k, v in w.items()}
    stats = {}
    release_gsf_forward(x, w, num_segments=3, training=True, running_stats=stats)
    clip = x.view(2, 3, 16, 4, 5).transpose(1, 2)  # (N, C, T, H, W)
    mean = clip.mean(dim=(0, 2, 3, 4))
    var = clip.var(dim=(0, 2, 3, 4), unbiased=True)
    torch.testing.assert_close(stats["mean"], 0.9 * before["bn.running_mean"] + 0.1 * mean, **TOL)
    torch.testing.assert_close(stats["var"], 0.9 * before["bn.running_var"] + 0.1 * var, **TOL)
    assert all(torch.equal(w[k], before[k]) for k in w)
    stats = {}
    release_gsf_forward(x, w, num_segments=3, training=False, running_stats=stats)
    assert torch.equal(stats["mean"], before["bn.running_mean"])


# --------------------------------------------------------------------------------------------
# An independent identity: release(x) = order(reverse_time(paper_gsf'(reverse_time(x)))), where
# paper_gsf' is our paper-layout GSF on the same weights with the gate kernel flipped in time and
# the fusion kernel flipped along its frame axis. Our paper layout shifts group 1 forward
# (out[t] = in[t-1]) and group 2 backward; the release does the opposite, which is the same
# module seen with time reversed. BatchNorm statistics do not depend on frame order.
# --------------------------------------------------------------------------------------------

def reverse_time(x: torch.Tensor, t: int) -> torch.Tensor:
    return x.view(x.shape[0] // t, t, *x.shape[1:]).flip(1).reshape(x.shape)


def paper_gsf_time_reversed(weights: dict, channels: int, t: int, shift_ratio: float, training: bool):
    from gsf.modules import GSF

    m = GSF(channels, t, shift_ratio).to(DT)
    with torch.no_grad():
        m.gate_weight.copy_(weights["conv3D.weight"].flip(2).flatten(2))  # (2, C/2, kt*kh*kw)
        m.gate_bias.copy_(weights["conv3D.bias"])
        for b in ("weight", "bias", "running_mean", "running_var"):
            getattr(m.gate_norm, b).copy_(weights[f"bn.{b}"])
        for ours, theirs in (("fuse1", "channel_conv1"), ("fuse2", "channel_conv2")):
            getattr(m, ours).weight.copy_(weights[f"{theirs}.weight"].flip(3))  # (1, 2, channel, frame)
            getattr(m, ours).bias.copy_(weights[f"{theirs}.bias"])
    return m.train(training)


@pytest.mark.parametrize("channels, t, ratio", [(16, 4, 100), (32, 3, 25), (24, 5, 50)])
@pytest.mark.parametrize("training", [False, True])
def test_release_is_paper_gsf_reversed_in_time(channels, t, ratio, training):
    w = random_release_weights(channels, ratio, seed=channels)
    p = release_processed_channels(channels, ratio)
    paper = paper_gsf_time_reversed(w, channels, t, ratio / 100, training)
    assert paper.processed == p
    x = frames(2, t, channels, seed=t).requires_grad_()
    g = frames(2, t, channels, seed=99)

    stats = {}
    y_release = release_gsf_forward(x, w, t, ratio, training, stats)
    (gx_release,) = torch.autograd.grad((y_release * g).sum(), x)

    z = reverse_time(paper(reverse_time(x, t)), t)
    y_paper = torch.cat([z[:, release_output_order(p)], z[:, p:]], dim=1)
    (gx_paper,) = torch.autograd.grad((y_paper * g).sum(), x)

    torch.testing.assert_close(y_release, y_paper, **TOL)
    torch.testing.assert_close(gx_release, gx_paper, **TOL)
    if training:
        torch.testing.assert_close(stats["mean"], paper.gate_norm.running_mean, **TOL)
        torch.testing.assert_close(stats["var"], paper.gate_norm.running_var, **TOL)


# --------------------------------------------------------------------------------------------
# Key tables
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone, total, modules", [("resnet50", 496, 16), ("bninception", 595, 10),
                                                      ("inception_v3", 781, 11)])
def test_release_key_counts(backbone, total, modules):
    keys = release_model_keys(backbone)
    assert len(keys) == total
    assert sum(k.endswith(".conv3D.weight") for k in keys) == modules
    assert all(k.startswith(("module.base_model.", "module.new_fc.")) for k in keys)
    assert keys["module.new_fc.weight"] == (174, 1024 if backbone == "bninception" else 2048)
    assert all(not k.startswith("module.") for k in release_model_keys(backbone, data_parallel=False))


def _without_gsf(keys: dict) -> dict:
    return {k.removeprefix("module.base_model."): s for k, s in keys.items()
            if k.startswith("module.base_model.") and ".gsf." not in k and not k.startswith("module.base_model.gsf_")}


def test_resnet50_keys_are_torchvisions_plus_gsf():
    import torchvision

    tv = {k: tuple(v.shape) for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    keys = release_model_keys("resnet50")
    assert _without_gsf(keys) == tv
    # 25% of conv3's 4*planes channels in every block
    for layer, (planes, blocks) in enumerate(RESNET50_LAYERS, start=1):
        for i in range(blocks):
            assert keys[f"module.base_model.layer{layer}.{i}.gsf.bn.weight"] == (planes,)


def test_bninception_keys_match_our_caffe_layout():
    from gsf.backbones.bninception import BNInception, caffe_state_dict

    ours = {k: tuple(v.shape) for k, v in caffe_state_dict(BNInception()).items()}
    assert _without_gsf(release_model_keys("bninception")) == ours


def test_inception_v3_units_are_torchvisions_transposed():
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    units = inception_v3_units()
    assert len(units) == sum(1 for m in net.modules() if type(m).__name__ == "BasicConv2d") == 94
    transposed = 0
    for block, unit, cin, cout, kh, kw, attr in units:
        conv = (getattr(net, attr) if block == "stem" else getattr(getattr(net, block), attr)).conv
        assert (conv.out_channels, conv.in_channels) == (cout, cin), unit
        assert tuple(conv.kernel_size) == (kw, kh), unit
        transposed += kh != kw
    assert transposed == 34
    hosts = {block: attr for block, unit, *_, attr in units if INCEPTION_V3_GSF_HOST.get(block) == unit}
    assert hosts == {**{b: "branch1x1" for b in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c",
                                                  "Mixed_6d", "Mixed_6e", "Mixed_7b", "Mixed_7c")},
                     "Mixed_6a": "branch3x3", "Mixed_7a": "branch3x3_1"}
