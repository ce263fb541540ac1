"""Registries, module options and backbones by pattern: what a user adds without editing gsf/.

- modules and backbones register with decorators, the built-ins the same way, in their own files;
- a module gets only the options its signature names; an option it does not take, set
  explicitly, is an error (build_model and the spec, one line naming the key and the allowed ones);
- timm backbones by glob, and the proof of the general route against the specific one:
  torchvision's ResNet-50 with GSF inserted by ``layer*.*.bn3`` is our ``resnet50`` at conv3
  (parameters, FLOPs and outputs, float64).
"""
from __future__ import annotations

import pytest
import torch
import torchvision
import yaml
from torch import nn

import gsf
from gsf import build_model, register_backbone, register_module
from gsf.backbones.pattern import insert_after
from gsf.backbones.weights import load_state_dict
from gsf.registry import _BACKBONES, _MODULES, _PREFIXES, Backbone, get_backbone, module_options, register_backbone_prefix
from harness.measure import count_flops, count_params
from harness.spec import SpecError, load_spec


@pytest.fixture
def registered():
    """Names registered by a test are removed after it."""
    before = set(_MODULES), set(_BACKBONES), set(_PREFIXES)
    yield
    for registry, names in zip((_MODULES, _BACKBONES, _PREFIXES), before):
        for name in set(registry) - names:
            del registry[name]


class Recorder(nn.Module):
    """A module that remembers what it was built with and does nothing."""

    def __init__(self, channels, num_frames, shift_ratio=1.0, strength=0.5):
        super().__init__()
        self.args = dict(channels=channels, num_frames=num_frames, shift_ratio=shift_ratio, strength=strength)

    def forward(self, x):
        return x


# --- the registries ---------------------------------------------------------------------------

def test_built_ins_are_registered_where_they_are_defined():
    assert gsf.list_modules() == ["gsf", "gsm", "none", "stsm", "tsm"]
    assert gsf.list_backbones() == ["bninception", "inception_v3", "resnet101", "resnet18", "resnet34", "resnet50"]
    assert get_backbone("resnet50").build.func.__module__ == "gsf.backbones.resnet"
    assert _MODULES["gsf"] is gsf.GSF and _MODULES["tsm"] is gsf.TemporalShift
    assert get_backbone("resnet18").placements == ("conv1", "conv2", "all", "input")
    assert (get_backbone("bninception").default_placement, get_backbone("bninception").default_shift_ratio) == ("branch4", 1.0)
    assert not hasattr(gsf, "TEMPORAL_MODULES") and not hasattr(gsf, "BACKBONES")
    # timm/ is a prefix the timm backbones register from their own file: the registry imports no backbone
    assert _PREFIXES["timm/"].resolve.__module__ == "gsf.backbones.timm_models"


def test_a_registered_module_gets_only_the_options_it_names(registered):
    register_module("recorder")(Recorder)
    assert module_options("recorder") == ("shift_ratio", "strength")
    model = build_model(backbone="resnet18", width_mult=0.125, module="recorder", num_classes=3, num_frames=4,
                        module_options={"strength": 2.0})
    built = [m.args for m in model.modules() if isinstance(m, Recorder)]
    assert len(built) == 8 and all(a["strength"] == 2.0 and a["num_frames"] == 4 for a in built)
    assert all(a["shift_ratio"] == 0.25 for a in built), "the backbone's default shift_ratio"
    assert {a["channels"] for a in built} == {8, 16, 32, 64}


class ReadsItsWeights(nn.Module):
    """A module whose construction reads a tensor's value: it cannot be built on the meta device."""

    def __init__(self, channels, num_frames):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.factor = float(self.scale.sum().item())

    def forward(self, x):
        return x * self.factor


def test_a_module_the_meta_device_cannot_build_is_checked_by_its_trial_and_says_so(registered):
    from gsf.model import _BUILD_ERRORS, ModelConfig, check_buildable

    register_module("reads_weights")(ReadsItsWeights)
    _BUILD_ERRORS.clear()
    cfg = ModelConfig(backbone="resnet18", width_mult=0.125, module="reads_weights", num_classes=3, num_frames=4)
    with pytest.warns(UserWarning, match=r"model check skipped: resnet18 with module 'reads_weights' does not build "
                                         r"on torch's meta device \(.*\); its trial builds it for real"):
        check_buildable(cfg)
    model = build_model(backbone="resnet18", width_mult=0.125, module="reads_weights", num_classes=3, num_frames=4)
    assert sum(isinstance(m, ReadsItsWeights) for m in model.modules()) == 8 and model.fc.out_features == 3


def test_registration_errors_and_reregistration(registered):
    with pytest.raises(ValueError, match="must take \\(channels, num_frames"):
        register_module("bad")(lambda channels: nn.Identity())
    with pytest.raises(ValueError, match="already registered as gsf.modules.gsf.GSF"):
        register_module("gsf")(Recorder)
    with pytest.raises(ValueError, match="other than 'none'"):
        register_module("none")
    with pytest.raises(ValueError, match="timm's"):
        register_backbone("timm/x")
    register_module("recorder")(Recorder)
    register_module("recorder")(Recorder)  # the same definition again (a re-import) is fine
    with pytest.raises(ValueError, match="unknown module 'recordr' \\(did you mean 'recorder'\\?\\)"):
        build_model(module="recordr")


def test_a_registered_prefix_resolves_its_family_of_backbones(registered):
    resnet18 = get_backbone("resnet18")
    asked = []

    @register_backbone_prefix("tiny/", owner="tiny", names="a width in eighths")
    def tiny(rest: str) -> Backbone:
        asked.append(rest)
        if not rest.isdigit():
            raise ValueError(f"unknown tiny backbone {rest!r}")
        return Backbone(f"tiny/{rest}", lambda insert, placement, num_blocks=None: resnet18.build(
            insert, placement, num_blocks, width_mult=int(rest) / 8), resnet18.placements, "conv2", 0.25)

    model = build_model(backbone="tiny/1", module="tsm", num_classes=3, num_frames=2)
    assert asked[-1] == "1" and model.backbone.num_features == 64  # 512 / 8
    with pytest.raises(ValueError, match="unknown tiny backbone 'x'"):
        get_backbone("tiny/x")
    with pytest.raises(ValueError, match="are tiny's"):
        register_backbone("tiny/2")
    with pytest.raises(ValueError, match="or tiny/<a width in eighths>"):
        get_backbone("tinyy")
    with pytest.raises(ValueError, match="already registered as"):
        register_backbone_prefix("tiny/", owner="tiny", names="")(lambda rest: None)
    with pytest.raises(ValueError, match="ending in '/'"):
        register_backbone_prefix("tiny", owner="tiny", names="")
    register_backbone("fam/a")(resnet18.build)
    with pytest.raises(ValueError, match="backbones registered under it: fam/a"):
        register_backbone_prefix("fam/", owner="fam", names="")


@pytest.mark.parametrize("options,needles", [
    ({"module": "tsm", "module_options": {"fold_dvi": 4}},
     ["module_options", "'fold_dvi' is not an option of module 'tsm' (did you mean 'fold_div'?); allowed: fold_div, impl"]),
    ({"module": "tsm", "shift_ratio": 0.5}, ["shift_ratio", "module 'tsm' does not take shift_ratio (its options: fold_div, impl)"]),
    ({"module": "gsm", "fusion": "sum"}, ["fusion", "module 'gsm' does not take fusion"]),
    ({"module": "gsf", "module_options": {"shift_ratio": 0.5}}, ["set model.shift_ratio, not module_options.shift_ratio"]),
    ({"module": "gsf", "module_options": {"inplace": True}}, ["'inplace': the backbone sets it"]),
    ({"backbone": "timm/resnet18d", "width_mult": 0.5}, ["width_mult does not apply to timm/resnet18d"]),
    ({"backbone": "timm/resnet50x"}, ["unknown timm model 'resnet50x'; close matches: resnet50, "]),
    ({"backbone": "resnet18", "placement": "conv3"}, ["placement 'conv3' is not one of conv1, conv2, all, input for resnet18"]),
])
def test_options_a_module_or_backbone_does_not_take_are_errors(options, needles):
    with pytest.raises(ValueError) as e:
        build_model(**options)
    for needle in needles:
        assert needle in str(e.value)


def test_unset_common_options_are_not_passed_and_not_dumped():
    """Defaults of options TSM does not take are neither passed to it nor part of its config
    (its trials' hashes and MLflow params), so they cannot tell two TSM rows apart."""
    cfg = gsf.ModelConfig(module="tsm", module_options={"fold_div": 4})
    assert cfg.module_kwargs() == {"fold_div": 4}
    assert {"shift_ratio", "gating", "fusion"}.isdisjoint(cfg.model_dump())
    assert "width_mult" not in gsf.ModelConfig(backbone="timm/resnet18d").model_dump()
    assert "module_options" not in gsf.ModelConfig(module="none", module_options={"impl": "fast"}).model_dump()


def _spec(tmp_path, grid, **model):
    spec = {"base": {"model": {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 4, "num_frames": 4,
                               "module": "gsf", **model}},
            "grid": grid}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("grid,needle", [
    ({"variants": [{"name": "TSM", "set": {"model.module": "tsm", "model.module_options": {"fold_dvi": 4}}}]},
     "grid.variants[0] (TSM).model.module_options: 'fold_dvi' is not an option of module 'tsm' (did you mean "
     "'fold_div'?); allowed: fold_div, impl"),
    # set in the base for GSF, refused on the row whose module does not take it
    ({"variants": [{"name": "GSF"}, {"name": "TSM", "set": {"model.module": "tsm"}}], "shift_ratio": 0.5},
     "grid.variants[1] (TSM).model.shift_ratio: module 'tsm' does not take shift_ratio (its options: fold_div, "
     "impl); set it only on rows whose module does"),
    ({"variants": [{"name": "R", "set": {"model.backbone": "timm/resnet18d"}}]},
     "grid.variants[0] (R).model.width_mult: width_mult does not apply to timm/resnet18d: timm models are not "
     "width-scaled (pick a smaller timm model instead, e.g. resnet18d, regnetx_002)"),
    ({"axes": {"model.backbone": ["resnet18", "timm/resnt18d"]}},
     "grid.axes.model.backbone: unknown timm model 'resnt18d'; close matches: resnet18d"),
    ({"variants": [{"name": "R", "set": {"model.backbone": "resnet50", "model.num_blocks": 17}}]},
     "grid.variants[0] (R): model: ResNet num_blocks must be in 0..16 (None = all), got 17"),
    ({"variants": [{"name": "R", "set": {"model.backbone": "timm/resnet18d", "model.width_mult": 1.0,
                                         "model.placement": "layer*.*.conv9"}}]},
     "(R).model.width_mult: width_mult does not apply"),
])
def test_spec_errors_name_the_row_and_the_key(tmp_path, grid, needle):
    model = {k: grid.pop(k) for k in list(grid) if k not in ("variants", "axes")}
    path = _spec(tmp_path, grid, **model)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert needle in str(e.value) and str(e.value).startswith(f"{path}: "), str(e.value)
    assert "\n" not in str(e.value)


def test_a_glob_that_matches_nothing_is_a_spec_error(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"base": {"model": {"backbone": "timm/resnet18d", "placement": "layer*.*.conv9"}}}))
    with pytest.raises(SpecError, match="base: model: placement 'layer\\*.\\*.conv9' matches no module of ResNet"):
        load_spec(path)


class MeanPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)


# --- backbones by pattern ---------------------------------------------------------------------

@pytest.fixture
def torchvision_by_pattern(registered):
    """torchvision's ResNet-50 with the module inserted by glob: the general route."""

    @register_backbone("tv_resnet50", placements=None, default_placement="layer*.*.bn3", default_shift_ratio=0.25)
    def build(insert, placement, num_blocks=None, pretrained=None):
        net = torchvision.models.resnet50()
        if pretrained:
            load_state_dict(net, pretrained, ignore_prefixes=("fc.",))
        net.fc = nn.Identity()
        # Pooled as our ResNetFeatures pools: fvcore counts adaptive_avg_pool2d's adds, not mean's.
        net.avgpool = MeanPool()
        net.num_features = 2048
        if insert is not None:
            insert_after(net, placement, insert, num_blocks)
        return net

    return build


@pytest.mark.parametrize("num_blocks", [None, 4])
def test_pattern_route_on_torchvision_resnet50_is_our_resnet50_at_conv3(tmp_path, torchvision_by_pattern, num_blocks):
    torch.manual_seed(0)
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), weights)
    common = dict(module="gsf", num_classes=10, num_frames=4, shift_ratio=0.25, num_blocks=num_blocks,
                  pretrained=str(weights), dropout=0.0)
    ours = build_model(backbone="resnet50", placement="conv3", **common)
    general = build_model(backbone="tv_resnet50", placement="layer*.*.bn3", **common)
    ours_gsf = [m for m in ours.modules() if isinstance(m, gsf.GSF)]
    general_gsf = [m for m in general.modules() if isinstance(m, gsf.GSF)]
    assert len(ours_gsf) == len(general_gsf) == (16 if num_blocks is None else num_blocks)
    for a, b in zip(ours_gsf, general_gsf):  # same channels, same inplace; then the same weights
        assert (a.channels, a.processed, a.inplace) == (b.channels, b.processed, b.inplace)
        b.load_state_dict(a.state_dict())
    general.fc.load_state_dict(ours.fc.state_dict())
    assert count_params(ours) == count_params(general)
    assert count_flops(ours, 4, 64)[0] == count_flops(general, 4, 64)[0]

    ours.double(), general.double()
    x = torch.randn(2, 4, 3, 64, 64, dtype=torch.float64)
    for train in (False, True):
        ours.train(train), general.train(train)
        torch.testing.assert_close(general(x), ours(x), rtol=1e-12, atol=1e-12)


def test_pattern_route_refuses_shared_and_non_frame_layers(torchvision_by_pattern):
    with pytest.raises(ValueError, match="'layer1.0.relu', which runs 3 times per forward \\(a shared module\\)"):
        build_model(backbone="tv_resnet50", placement="layer1.0.relu")
    with pytest.raises(ValueError, match="'fc', whose output .* is not frames"):
        build_model(backbone="tv_resnet50", placement="fc")
    with pytest.raises(ValueError, match="num_blocks must be in 0..16"):
        build_model(backbone="tv_resnet50", num_blocks=17)


# --- timm ---------------------------------------------------------------------------------------

# Channels after each block's spatial conv, from the architectures' published widths and depths.
FAMILIES = [
    ("resnet50d", "layer*.*.act2", [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3),
    ("resnet18d", "layer*.*.bn2", [64] * 2 + [128] * 2 + [256] * 2 + [512] * 2),
    ("regnety_016", "s*.b*.conv2", [48] * 2 + [120] * 6 + [336] * 17 + [888] * 2),
    ("convnext_tiny", "stages.*.blocks.*.conv_dw", [96] * 3 + [192] * 3 + [384] * 9 + [768] * 3),
    # inverted residuals: input width x 6 (stage 0's depthwise-separable block has no expansion)
    ("efficientnet_b0", "blocks.[1-9]*.*.bn2", [96, 144, 144, 240, 240, 480, 480, 480, 672, 672, 672, 1152, 1152,
                                               1152, 1152]),
]


@pytest.mark.parametrize("name,placement,channels", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_timm_family_defaults_put_the_module_after_each_blocks_spatial_conv(name, placement, channels):
    backbone = get_backbone(f"timm/{name}")
    assert (backbone.default_placement, backbone.default_shift_ratio) == (placement, 0.25)
    with torch.device("meta"):  # the full model, no memory
        model = build_model(backbone=f"timm/{name}", module="gsf", num_classes=5, num_frames=8)
    assert [m.channels for m in model.modules() if isinstance(m, gsf.GSF)] == channels


def test_timm_model_trains_a_step_with_gsf_and_loads_local_weights(tmp_path):
    from safetensors.torch import save_file

    import timm

    torch.manual_seed(0)
    source = timm.create_model("resnet18d", pretrained=False, num_classes=1000)
    for m in source.modules():  # timm zero-initialises the last BN of each block (zero_init_last)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    model = build_model(backbone="timm/resnet18d", module="gsf", num_classes=3, num_frames=4, num_blocks=2,
                        pretrained=str(tmp_path / "model.safetensors"))
    net = model.backbone.net
    torch.testing.assert_close(net.conv1[0].weight, source.conv1[0].weight)
    torch.testing.assert_close(net.layer4[1].bn2[0].weight, source.layer4[1].bn2.weight)
    assert sum(isinstance(m, gsf.GSF) for m in model.modules()) == 2
    assert isinstance(net.layer4[1].bn2, nn.Sequential), "the last two matches"
    loss = model(torch.randn(2, 4, 3, 32, 32)).logsumexp(1).sum()
    loss.backward()
    assert net.layer4[1].bn2[1].gate_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="does not match the backbone"):
        torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
        build_model(backbone="timm/resnet18d", pretrained=str(tmp_path / "bad.pth"))


def test_timm_model_without_a_family_default_needs_a_placement():
    with torch.device("meta"):
        with pytest.raises(ValueError, match="timm/vgg11 has no default placement; set placement"):
            build_model(backbone="timm/vgg11", module="tsm")
        build_model(backbone="timm/vgg11", module="none", num_classes=3)  # TSN needs none
        model = build_model(backbone="timm/vgg11", module="tsm", placement="features.1[0-9]")
    assert sum(isinstance(m, gsf.TemporalShift) for m in model.modules()) == 10
