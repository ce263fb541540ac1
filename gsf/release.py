"""The authors' released GSF (swathikirans/GSF): their checkpoints in our models, exactly.

What the release computes, stated from reading it (``docs/release_facts.md`` gives every fact
with its file and line; nothing here is their code):

- The module: ``GSF(..., layout="release")`` (``gsf/modules/gsf.py``): the release's shift
  directions, channel order and processed-channel count; the same parameters as ours.
- Where it sits: between a conv and that conv's BatchNorm, in every released backbone
  (``build_model(layout="release")``): ResNet's conv3 -> GSF -> bn3 in all 16 blocks at 25%;
  BN-Inception's 1x1 conv (3x3-reduce in 3c and 4e) of all ten blocks at 100%; Inception-v3's
  eleven hosts at 100%, in the authors' own Inception-v3 variant (``gsf/backbones/inception_v3.py``).
- The video model (``models.py``): backbone -> dropout -> ``new_fc`` -> mean of the frames' logits,
  as our ``TSN``.
- Checkpoints (``main.py:193-201``): a dict whose ``model_state_dict`` is the state dict of the
  ``nn.DataParallel``-wrapped model, so every key starts with ``module.``; backbone keys under
  ``base_model.``, the classifier under ``new_fc.``. The frame count is not in the file (each
  GSF fixes it at build time: ``test_models.py --test_segments``); give it as ``num_frames``.
- Their input (``models.py:80-107``, ``test_models.py:137-139``): ResNet RGB / 255 with
  ImageNet mean and std; both Inceptions BGR on the 0-255 scale minus (104, 117, 128), std 1
  (``RELEASED[...].normalize``, the harness's ``data.normalize``); Inception-v3 crops 229 from 261.

``convert_state_dict`` maps their key names to ours (a key left over or missing is an error that
lists them); ``build_model(release_checkpoint=PATH)`` reads a checkpoint file with
``torch.load(weights_only=True)``, builds the model it holds and loads it strictly.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import torch

from .backbones import bninception, inception_v3
from .model import ModelConfig, build_tsn
from .modules import release_processed_channels

__all__ = ["RELEASED", "ReleaseKeyError", "Released", "build_released_model", "check_request", "convert_state_dict",
           "describe", "load_release_checkpoint", "read_checkpoint", "release_names"]


@dataclass(frozen=True)
class ReleasedBackbone:
    """How the release builds and feeds one backbone (``models.py:77-107``)."""

    placement: str  # our placement word for the release's host convs
    input_size: int  # crop; the test-time resize is input_size * 256 // 224
    normalize: str  # harness data.normalize: "imagenet" (RGB / 255, mean/std) or "caffe_bgr"


RELEASED = {
    "resnet50": ReleasedBackbone("conv3", 224, "imagenet"),
    "resnet101": ReleasedBackbone("conv3", 224, "imagenet"),
    "bninception": ReleasedBackbone("branch4", 224, "caffe_bgr"),
    "inception_v3": ReleasedBackbone("branch4", 229, "caffe_bgr"),
}

# One release GSF module's keys (gsf.py:15-24) -> ours (gsf/modules/gsf.py).
GSF_KEYS = {
    "conv3D.weight": "gate_weight", "conv3D.bias": "gate_bias",
    "bn.weight": "gate_norm.weight", "bn.bias": "gate_norm.bias", "bn.running_mean": "gate_norm.running_mean",
    "bn.running_var": "gate_norm.running_var", "bn.num_batches_tracked": "gate_norm.num_batches_tracked",
    "channel_conv1.weight": "fuse1.weight", "channel_conv1.bias": "fuse1.bias",
    "channel_conv2.weight": "fuse2.weight", "channel_conv2.bias": "fuse2.bias",
}
_OURS_TO_GSF = {v: k for k, v in GSF_KEYS.items()}

class ReleaseKeyError(ValueError):
    """A state dict that is not (exactly) a released model: ``leftover`` and ``missing`` list the keys."""

    def __init__(self, message: str, leftover: list[str] = (), missing: list[str] = ()):
        super().__init__(message)
        self.leftover, self.missing = list(leftover), list(missing)


@dataclass(frozen=True)
class Released:
    """What a released state dict holds: its backbone, classes and GSF modules (name, channels, processed)."""

    backbone: str
    num_classes: int
    shift_ratio: float
    modules: tuple[tuple[str, int, int], ...]


# --- reading a checkpoint ----------------------------------------------------------------------

def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a released checkpoint file: ``main.py``'s dict (under ``model_state_dict``),
    or a bare state dict. Read with ``weights_only=True``: a user's file never runs code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: release checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a checkpoint torch.load(weights_only=True) can read: {reason}") from None
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: holds no state dict (expected main.py's checkpoint dict with 'model_state_dict', "
                         "or a dict of tensors)")
    return obj


def _strip_data_parallel(state: dict) -> dict:
    """Keys without nn.DataParallel's ``module.`` prefix (test_models.py:102-103 drops it too)."""
    return {k.removeprefix("module."): v for k, v in state.items()}


# --- what a released state dict holds --------------------------------------------------------

def describe(state_dict: dict[str, torch.Tensor]) -> Released:
    """The released model a state dict (release key names, ``module.`` prefix or not) holds."""
    state = _strip_data_parallel(state_dict)
    backbone = _backbone_of(state)
    fc = state.get("new_fc.weight")
    if fc is None or fc.dim() != 2:
        raise ReleaseKeyError("no 'new_fc.weight' (the release's classifier, models.py:58): not a released video model",
                              missing=["new_fc.weight"])
    modules = []
    for key in sorted(k for k in state if k.startswith("base_model.") and k.endswith(".conv3D.weight")):
        prefix = key.removesuffix("conv3D.weight")
        name = prefix.removeprefix("base_model.").rstrip(".")
        # The host conv: its output feeds the GSF (resnetGSFModels.py:75-76, the yamls' gsf_<id> layers).
        host = (f"base_model.{name.removeprefix('gsf_')}.weight" if name.startswith("gsf_")
                else f"base_model.{name.removesuffix('gsf')}conv3.weight")
        if host not in state or f"{prefix}bn.weight" not in state:
            raise ReleaseKeyError(f"GSF module {name!r} has no host conv {host!r} or no 'bn.weight'",
                                  missing=[k for k in (host, f"{prefix}bn.weight") if k not in state])
        modules.append((name, state[host].shape[0], state[f"{prefix}bn.weight"].shape[0]))
    if not modules:
        raise ReleaseKeyError(f"a {backbone} state dict without GSF modules (no '*.conv3D.weight' keys)")
    return Released(backbone, fc.shape[0], _shift_ratio(modules), tuple(modules))


def _backbone_of(state: dict) -> str:
    if "base_model.conv1_7x7_s2.weight" in state:
        return "bninception"
    if "base_model.conv_Conv2D.weight" in state:
        return "inception_v3"
    if "base_model.layer1.0.conv1.weight" in state:
        blocks = sum(1 for k in state if k.startswith("base_model.layer3.") and k.endswith(".conv1.weight"))
        names = {6: "resnet50", 23: "resnet101"}
        if blocks in names:
            return names[blocks]
        raise ReleaseKeyError(f"a ResNet with {blocks} blocks in layer3: the release builds ResNet-50 (6) and -101 (23)")
    raise ReleaseKeyError("not a released GSF model: none of the keys of its ResNet (base_model.layer1.0.conv1.weight), "
                          "BN-Inception (base_model.conv1_7x7_s2.weight) or Inception-v3 (base_model.conv_Conv2D.weight); "
                          f"first keys: {sorted(state)[:4]}")


def _shift_ratio(modules: list[tuple[str, int, int]]) -> float:
    """The ``gsf_ch_ratio`` (as a fraction) that gives every module its processed count."""
    name, channels, processed = modules[0]
    exact = round(100 * processed / channels, 6)
    for percent in [exact] + sorted(range(1, 101), key=lambda p: abs(p - exact)):
        try:
            if all(release_processed_channels(c, percent / 100) == p for _, c, p in modules):
                return percent / 100
        except ValueError:
            continue
    raise ReleaseKeyError("no gsf_ch_ratio gives every GSF module its processed count: "
                          + ", ".join(f"{n} {p} of {c}" for n, c, p in modules[:6]))


# --- key names ---------------------------------------------------------------------------------

def release_names(model: torch.nn.Module, backbone: str) -> dict[str, str]:
    """For each key of ``model``'s state dict (a ``build_model(..., layout="release")`` TSN), the
    release's key for the same tensor (without ``module.``)."""
    units = _units(model.backbone, backbone)
    names = {}
    for key in model.state_dict():
        if key.startswith("fc."):
            names[key] = "new_fc." + key.removeprefix("fc.")
            continue
        rest = key.removeprefix("backbone.")
        if backbone.startswith("resnet"):
            name = _resnet_name(rest)
        else:
            unit = next((u for u in units if rest.startswith(u + ".")), None)
            if unit is None:
                raise KeyError(f"{key}: no release name (not inside a conv unit)")
            kind, param = rest[len(unit) + 1:].split(".", 1)
            conv, bn, gsf = units[unit]
            name = {"conv": f"{conv}.{param}", "bn": f"{bn}.{param}"}.get(kind) or f"{gsf}.{_OURS_TO_GSF[param]}"
        names[key] = "base_model." + name
    return names


def _resnet_name(rest: str) -> str:
    """layer1.0.block.conv1.weight -> layer1.0.conv1.weight; layer1.0.temporal.conv3.X -> layer1.0.gsf.<X>."""
    parts = rest.split(".")
    if parts[0].startswith("layer") and parts[2] == "block":
        return ".".join(parts[:2] + parts[3:])
    if parts[0].startswith("layer") and parts[2:4] == ["temporal", "conv3"]:
        return ".".join(parts[:2] + ["gsf", _OURS_TO_GSF[".".join(parts[4:])]])
    return rest


def _units(features: torch.nn.Module, backbone: str) -> dict[str, tuple[str, str, str]]:
    """Module path of each conv unit -> the release's ids of its conv, BN and GSF (each Inception
    backbone keeps its own name table; a ResNet has none)."""
    release_units = {"bninception": bninception.release_units, "inception_v3": inception_v3.release_units}.get(backbone)
    return release_units(features) if release_units else {}


# --- conversion --------------------------------------------------------------------------------

def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in the release's key names -> ours.

    - One GSF module's (``conv3D.*``, ``bn.*``, ``channel_conv1.*``, ``channel_conv2.*``) -> a
      ``GSF(..., layout="release")``'s (``gate_weight`` in its (2, C/2, 27) layout, ...).
    - A whole released model's (``base_model.*`` / ``new_fc.*``, with or without DataParallel's
      ``module.``; ResNet-50/101, BN-Inception, Inception-v3) -> the keys of
      ``build_model(backbone, num_classes=..., shift_ratio=..., layout="release")``.

    Every key must map and every key of our model must be given, with the same shape: otherwise
    a ``ReleaseKeyError`` listing the leftover and missing keys. BatchNorm's
    ``num_batches_tracked`` (it plays no part unless momentum is None) may be absent; it is then 0.
    """
    state = _strip_data_parallel(state_dict)
    if "conv3D.weight" in state and set(state) <= set(GSF_KEYS):
        return {GSF_KEYS[k]: _ours(GSF_KEYS[k], v) for k, v in state.items()}
    found = describe(state)
    model = _target_model(found)
    names = release_names(model, found.backbone)
    ours = model.state_dict()
    by_release = {rel: key for key, rel in names.items()}
    leftover = sorted(k for k in state if k not in by_release)
    missing = sorted(r for r in by_release if r not in state and not r.endswith("num_batches_tracked"))
    if leftover or missing:
        raise ReleaseKeyError(f"not a released {found.backbone} model as the release builds it: "
                              f"{_listed(leftover, 'left over')}{'; ' if leftover and missing else ''}"
                              f"{_listed(missing, 'missing')}", leftover, missing)
    converted = {}
    for key, rel in names.items():
        value = _ours(key, state[rel]) if rel in state else torch.zeros((), dtype=torch.long)
        if value.shape != ours[key].shape:
            raise ReleaseKeyError(f"{rel}: shape {tuple(state[rel].shape)}, the release's {found.backbone} has "
                                  f"{tuple(ours[key].shape)} there")
        converted[key] = value
    return converted


def _ours(key: str, value: torch.Tensor) -> torch.Tensor:
    """A release tensor in our layout: the gate's Conv3d kernel (2, C/2, 3, 3, 3) -> (2, C/2, 27)."""
    return value.flatten(2) if key.endswith("gate_weight") and value.dim() == 5 else value


def _listed(keys: list[str], what: str, shown: int = 20) -> str:
    if not keys:
        return ""
    more = f", ... and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} {what} ({', '.join(keys[:shown])}{more})"


def _target_model(found: Released) -> torch.nn.Module:
    """The model a released state dict fills, on the meta device (keys and shapes only)."""
    with torch.device("meta"):
        return build_tsn(ModelConfig(backbone=found.backbone, module="gsf", num_classes=found.num_classes,
                                     num_frames=1, shift_ratio=found.shift_ratio, layout="release"))


# --- building the released model ---------------------------------------------------------------

def load_release_checkpoint(path: str | os.PathLike) -> tuple[Released, dict[str, torch.Tensor]]:
    """What the checkpoint file ``path`` holds and its weights under our key names; every error names the file."""
    state = read_checkpoint(path)
    try:
        return describe(state), convert_state_dict(state)
    except ReleaseKeyError as e:
        raise ReleaseKeyError(f"{path}: {e}", e.leftover, e.missing) from None


def check_request(found: Released, path, *, backbone: str, module: str = "gsf", num_classes: int = 174,
                  shift_ratio: float | None = None, gating="learned", fusion: str = "learned",
                  placement: str | None = None, num_blocks: int | None = None, pretrained: str | None = None,
                  width_mult: float = 1.0, layout: str | None = None, **_) -> None:
    """Raise if what ``build_model`` is asked for disagrees with the released model in ``path``.

    The file decides the architecture; the backbone and class count must be stated, not guessed,
    so a wrong file is an error rather than a surprise. ``num_frames``, ``dropout`` and
    ``module_options`` (e.g. ``impl``) are free: the file cannot tell the frame count.
    """
    release = RELEASED[found.backbone]
    problems = [
        (layout not in (None, "release"), f"layout is {layout!r}; its weights need layout 'release' (or unset)"),
        (backbone != found.backbone, f"holds a released {found.backbone} model, but backbone is {backbone!r}"),
        (num_classes != found.num_classes, f"has {found.num_classes} classes, but num_classes is {num_classes}"),
        (module != "gsf" or gating != "learned" or fusion != "learned",
         f"holds the release's GSF (learned gating and fusion), but module={module!r}, gating={gating!r}, fusion={fusion!r}"),
        (shift_ratio is not None and not _same_counts(found, shift_ratio),
         f"its GSF modules process {found.modules[0][2]} of {found.modules[0][1]} channels (shift_ratio "
         f"{found.shift_ratio:g}), but shift_ratio is {shift_ratio}"),
        (placement not in (None, release.placement),
         f"the release places GSF at {release.placement!r}, but placement is {placement!r}"),
        (num_blocks is not None, f"the release has GSF in every block, but num_blocks is {num_blocks}"),
        (pretrained is not None, "pretrained and a release checkpoint both give the weights: set one"),
        (width_mult != 1.0, f"width_mult is {width_mult}; released models are full width"),
    ]
    for bad, why in problems:
        if bad:
            raise ValueError(f"{path}: {why}")


def build_released_model(path: str | os.PathLike, *, num_frames: int, dropout: float = 0.5,
                         module_options: dict | None = None, **request) -> torch.nn.Module:
    """``build_model(..., release_checkpoint=path)``: the released model in ``path``, its weights loaded."""
    found, converted = load_release_checkpoint(path)
    check_request(found, path, **request)
    model = build_tsn(ModelConfig(backbone=found.backbone, module="gsf", num_classes=found.num_classes,
                                  num_frames=num_frames, shift_ratio=found.shift_ratio,
                                  placement=RELEASED[found.backbone].placement, dropout=dropout,
                                  module_options=module_options, layout="release"))
    model.load_state_dict(converted, strict=True)
    return model


def _same_counts(found: Released, shift_ratio: float) -> bool:
    try:
        return all(release_processed_channels(c, shift_ratio) == p for _, c, p in found.modules)
    except ValueError:
        return False
