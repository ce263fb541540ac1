"""The authors' release, exactly: ``GSF(layout="release")`` and ``gsf.release.convert_state_dict``
against our statements of what their code computes (tests/release_reference.py for the module,
tests/release_models.py for the whole video models), their checkpoints' keys, and loading.

Module level: outputs, input gradients and BatchNorm statistics, train and eval, several shift
ratios, both implementations, float64 (tight) and float32. Whole models: for each released
backbone a state dict with every release key converts with no key left over or missing, and the
built model computes the release's video model on it (float64).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from release_keys import release_model_keys  # noqa: E402
from release_models import random_release_state, release_video_forward, save_release_checkpoint  # noqa: E402
from release_reference import random_release_weights, release_gsf_forward, release_processed_channels  # noqa: E402

from gsf import GSF, build_model  # noqa: E402
from gsf.release import (ReleaseKeyError, convert_state_dict, describe, read_checkpoint,  # noqa: E402
                         release_names)

TOL64 = dict(rtol=1e-10, atol=1e-12)
TOL32 = dict(rtol=1e-4, atol=2e-5)
BACKBONES = {"resnet50": (496, 16, 0.25, 64), "bninception": (595, 10, 1.0, 64), "inception_v3": (781, 11, 1.0, 101)}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, one torch thread


# --------------------------------------------------------------------------------------------
# One module
# --------------------------------------------------------------------------------------------

def release_module(weights: dict, channels: int, t: int, ratio_percent: float, impl: str, dtype) -> GSF:
    m = GSF(channels, t, ratio_percent / 100, layout="release", impl=impl).to(dtype)
    m.load_state_dict(convert_state_dict(weights))
    return m


def max_diffs(channels, t, ratio, training, impl, dtype, seed=0):
    """max |ours - release| of outputs and input gradients, and of the updated running statistics."""
    w = random_release_weights(channels, ratio, seed=seed, dtype=dtype)
    m = release_module(w, channels, t, ratio, impl, dtype).train(training)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2 * t, channels, 5, 6, generator=g, dtype=dtype).requires_grad_()
    grad_out = torch.randn(2 * t, channels, 5, 6, generator=g, dtype=dtype)
    stats = {}
    y_release = release_gsf_forward(x, w, t, ratio, training, stats)
    (gx_release,) = torch.autograd.grad((y_release * grad_out).sum(), x)
    y = m(x)
    (gx,) = torch.autograd.grad((y * grad_out).sum(), x)
    assert m.processed == release_processed_channels(channels, ratio)
    stat = max((m.gate_norm.running_mean - stats["mean"]).abs().max().item(),
               (m.gate_norm.running_var - stats["var"]).abs().max().item())
    return (y - y_release).abs().max().item(), (gx - gx_release).abs().max().item(), stat, y_release, y, gx_release, gx


CASES = [(16, 4, 100), (32, 3, 25), (24, 5, 50), (40, 2, 30), (20, 1, 100), (64, 4, 12.5), (300, 2, 29)]


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("channels,t,ratio", CASES)
def test_release_layout_is_the_release_float64(channels, t, ratio, training, impl):
    _, _, stat, y_release, y, gx_release, gx = max_diffs(channels, t, ratio, training, impl, torch.float64)
    torch.testing.assert_close(y, y_release, **TOL64)
    torch.testing.assert_close(gx, gx_release, **TOL64)
    assert stat < 1e-12


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_release_layout_is_the_release_float32(training, impl):
    for channels, t, ratio in CASES[:4]:
        _, _, stat, y_release, y, gx_release, gx = max_diffs(channels, t, ratio, training, impl, torch.float32)
        torch.testing.assert_close(y, y_release, **TOL32)
        torch.testing.assert_close(gx, gx_release, **TOL32)


def test_paper_layout_is_not_the_release():
    """The check can fail: the paper layout (our default) on the same weights is far from the release."""
    w = random_release_weights(16, 100, dtype=torch.float64)
    x = torch.randn(8, 16, 5, 6, dtype=torch.float64)
    paper = GSF(16, 4, layout="paper").double()
    paper.load_state_dict(convert_state_dict(w))
    y = release_gsf_forward(x, w, 4, 100)
    assert (paper.eval()(x) - y).abs().max() > 0.1 * y.abs().max()


@pytest.mark.parametrize("channels,ratio,expected", [
    (256, 0.25, 64), (2048, 0.25, 512), (352, 1.0, 352), (10 * 8, 0.5, 40), (100, 0.125, 12), (300, 0.29, 88),
])
def test_release_processed_count(channels, ratio, expected):
    """int(C * percent / 100), then up to even. 0.29 must be 29 percent: 0.29 * 100 is 28.999999999999996,
    and int(300 * 28.999999999999996 / 100) is 86, where the release (29 percent) gets 87 -> 88."""
    m = GSF(channels, 4, ratio, layout="release")
    assert m.processed == expected == release_processed_channels(channels, round(ratio * 100, 6))


@pytest.mark.parametrize("channels,ratio", [(12, 0.5), (7, 1.0), (10, 0.1)])
def test_release_layout_refuses_sizes_the_release_cannot_run(channels, ratio):
    with pytest.raises(ValueError, match="divisible by 4"):
        GSF(channels, 4, ratio, layout="release")


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_release_shift_and_order_with_a_fixed_gate(impl):
    """gating=1 with summed fusion is a pure shift: in the release layout group 1 takes frame t+1,
    group 2 frame t-1, and each group's halves come out interleaved."""
    n, t, c = 1, 3, 8
    m = GSF(c, t, 1.0, gating=1, fusion="sum", layout="release", impl=impl)
    x = torch.randn(n * t, c, 2, 2)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            y = m(x.clone().requires_grad_(grad)).detach().view(n, t, c, 2, 2)
        v = x.view(n, t, c, 2, 2)
        shifted = torch.zeros_like(v)
        shifted[:, :-1, :4] = v[:, 1:, :4]
        shifted[:, 1:, 4:] = v[:, :-1, 4:]
        assert torch.equal(y, shifted[:, :, [0, 2, 1, 3, 4, 6, 5, 7]])


def test_single_module_keys_convert():
    w = random_release_weights(32, 25)
    converted = convert_state_dict({f"module.{k}": v for k, v in w.items()})  # DataParallel prefix or not
    assert set(converted) == set(GSF(32, 4, 0.25, layout="release").state_dict())
    assert converted["gate_weight"].shape == (2, 4, 27)


# --------------------------------------------------------------------------------------------
# Whole released models
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """backbone -> (release state dict, checkpoint file in main.py's format); float32 as released."""
    folder = tmp_path_factory.mktemp("released")
    out = {}
    for i, backbone in enumerate(BACKBONES):
        state = random_release_state(backbone, seed=i)
        path = folder / f"{backbone}.pth.tar"
        save_release_checkpoint(path, backbone, state)
        out[backbone] = state, path
    return out


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_release_key_converts(backbone, released):
    total, modules, ratio, _ = BACKBONES[backbone]
    state, _ = released[backbone]
    assert len(state) == total
    found = describe(state)
    assert (found.backbone, found.num_classes, found.shift_ratio, len(found.modules)) == (backbone, 174, ratio, modules)
    converted = convert_state_dict(state)
    model = build_model(backbone=backbone, num_frames=2, shift_ratio=ratio, layout="release")
    ours = model.state_dict()
    assert len(converted) == len(ours) == total  # one to one: nothing left over, nothing missing
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    names = release_names(model, backbone)
    assert sorted(f"module.{n}" for n in names.values()) == sorted(state)
    for key, name in names.items():  # each tensor went where its release name says
        assert torch.equal(converted[key].flatten(), state[f"module.{name}"].flatten()), key


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_released_model_computes_the_release(backbone, released):
    """build_model(release_checkpoint=file) against our float64 statement of their whole VideoModel."""
    state, path = released[backbone]
    size = BACKBONES[backbone][3]
    model = build_model(backbone=backbone, num_frames=2, release_checkpoint=str(path)).double().eval()
    clips = torch.randn(1, 2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(clips)
    theirs = release_video_forward(backbone, {k: v.double() if v.is_floating_point() else v for k, v in state.items()},
                                   clips)
    assert theirs.abs().max() > 0.1 and torch.isfinite(theirs).all()
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10 * theirs.abs().max().item())


def test_released_checkpoint_format(released):
    """main.py's dict read with weights_only=True; without DataParallel's prefix or BatchNorm counters too."""
    state, path = released["bninception"]
    assert read_checkpoint(path).keys() == state.keys()
    bare = {k.removeprefix("module."): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    converted = convert_state_dict(bare)
    assert converted["backbone.stem.conv1_7x7_s2.bn.num_batches_tracked"] == 0
    assert converted.keys() == convert_state_dict(state).keys()


class NotWeights:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"model_state_dict": {"x": torch.zeros(1)}, "payload": NotWeights()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        read_checkpoint(path)


def test_leftover_and_missing_keys_are_listed():
    state = {k: torch.zeros(s) for k, s in release_model_keys("resnet50").items()}
    state["module.base_model.layer1.0.extra.weight"] = torch.zeros(1)
    del state["module.base_model.layer2.1.gsf.channel_conv2.bias"]
    del state["module.base_model.layer4.2.bn3.running_var"]
    with pytest.raises(ReleaseKeyError) as info:
        convert_state_dict(state)
    e = info.value
    assert e.leftover == ["base_model.layer1.0.extra.weight"]
    assert e.missing == ["base_model.layer2.1.gsf.channel_conv2.bias", "base_model.layer4.2.bn3.running_var"]
    assert all(k in str(e) for k in e.leftover + e.missing) and "1 left over" in str(e) and "2 missing" in str(e)


def test_wrong_shape_and_unknown_models_are_errors():
    state = {k: torch.zeros(s) for k, s in release_model_keys("bninception").items()}
    state["module.base_model.inception_3a_3x3.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ReleaseKeyError, match="inception_3a_3x3.weight: shape"):
        convert_state_dict(state)
    with pytest.raises(ReleaseKeyError, match="not a released GSF model"):
        convert_state_dict({"module.features.0.weight": torch.zeros(1), "new_fc.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize("request_, message", [
    ({"backbone": "resnet50"}, "holds a released bninception model, but backbone is 'resnet50'"),
    ({"num_classes": 10}, "has 174 classes, but num_classes is 10"),
    ({"layout": "paper"}, "its weights need layout 'release'"),
    ({"fusion": "sum"}, "learned gating and fusion"),
    ({"shift_ratio": 0.5}, "process 64 of 64 channels"),
    ({"placement": "branch1"}, "places GSF at 'branch4'"),
])
def test_released_model_must_match_what_is_asked(released, request_, message):
    _, path = released["bninception"]
    with pytest.raises(ValueError, match=message):
        build_model(**{"backbone": "bninception", "num_frames": 2, "release_checkpoint": str(path), **request_})


def test_release_layout_placement_is_before_the_bn():
    """ResNet: conv3 -> GSF -> bn3 in the release layout; after bn3 in ours."""
    seen = {}
    for layout in ("paper", "release"):
        model = build_model(backbone="resnet50", width_mult=0.25, num_classes=5, num_frames=2, layout=layout).eval()
        block = model.backbone.layer1[0]
        order = []
        block.block.conv3.register_forward_hook(lambda *a: order.append("conv3"))
        block.block.bn3.register_forward_hook(lambda *a: order.append("bn3"))
        block.temporal["conv3"].register_forward_hook(lambda *a: order.append("gsf"))
        model(torch.randn(1, 2, 3, 32, 32))
        seen[layout] = order
    assert seen == {"paper": ["conv3", "bn3", "gsf"], "release": ["conv3", "gsf", "bn3"]}
