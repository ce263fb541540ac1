"""The TSN video classifier, its options (``ModelConfig``) and ``build_tsn``, which builds it from
the backbone and module registries (``gsf.build_model`` builds a release checkpoint's model with
``gsf.release`` and every other one with ``build_tsn``: this file imports neither of them).

``ModelConfig`` is the one source of the model's options: ``build_model(cfg)`` builds one
(``build_model(**options)`` validates its keyword arguments into one first), and a spec's
``model`` section is the same model. Its range checks and the backbone's defaults (shift ratio,
placement) are applied once, when it is validated. An option
marked ``passed_to: module`` goes to the temporal module, one marked ``backbone`` to the
backbone builder, each only if its signature names it (``gsf.registry``); setting one that the
module or backbone does not take is an error, not a silently dropped value.
"""
from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache
from typing import Annotated, Any, Literal

import torch
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_serializer,
                      model_validator)
from torch import nn

from .backbones import bninception, inception_v3, resnet  # noqa: F401 (each registers its backbones)
from .backbones.timm_models import TIMM_PREFIX  # importing it registers the timm/ prefix
from .modules import GSF  # noqa: F401 (gsf.py and shift.py register the modules)
from .registry import (NO_MODULE, RESERVED_OPTIONS, check_shift_ratio, did_you_mean, get_backbone, get_module,
                       module_options)

NO_WEIGHTS = "none"  # model.pretrained: random initialisation, on purpose

# Who an option is passed to (Field's json_schema_extra): the temporal module or the backbone builder.
MODULE, BACKBONE = "module", "backbone"


def _to(*who: str) -> dict[str, list[str]]:
    return {"passed_to": list(who)}


class ModelConfig(BaseModel):
    """The keyword arguments of ``build_model``, and a spec's ``model`` section."""

    # strict: "8" is not a count and true is not 1 (YAML and pydantic would otherwise coerce them)
    model_config = ConfigDict(extra="forbid", strict=True)

    backbone: str = Field("resnet50", description="a registered backbone (gsf.list_backbones()) or timm/<name>")
    module: str = Field("gsf", description="a registered temporal module (gsf.list_modules()); none: TSN")
    num_classes: int = Field(174, ge=1, le=100_000, description="classes the classifier predicts")
    num_frames: int = Field(8, ge=1, le=256, description="frames per clip (T)")
    shift_ratio: float | None = Field(
        None, json_schema_extra=_to(MODULE),
        description="fraction of channels gated/shifted/fused, in (0, 1]; unset: the backbone's default, filled in "
        "when the config is validated (a release_checkpoint's file decides it instead)")
    gating: Literal["learned"] | Annotated[float, Field(ge=-1, le=1)] = Field(
        "learned", json_schema_extra=_to(MODULE),
        description='"learned", or a fixed gate in [-1, 1] (1: TSM-like, -1: TDN-like, 0: TSN)')
    fusion: Literal["learned", "sum"] = Field("learned", json_schema_extra=_to(MODULE),
                                              description='"learned", or "sum" (GSM)')
    layout: Literal["paper", "release"] | None = Field(
        None, json_schema_extra=_to(MODULE, BACKBONE),
        description='"paper" (default): the paper\'s equations and our insertion points; "release": what the '
        "authors' released code computes (GSF's shift directions and channel order, GSF between the host conv "
        'and its BN, their Inception-v3 variant). Default "release" with release_checkpoint.')
    placement: str | None = Field(
        None, json_schema_extra=_to(BACKBONE),
        description="where the module goes: one of the backbone's placements, or a glob over its module "
                    "names (timm/...); unset: the backbone's default, filled in when the config is validated")
    num_blocks: int | None = Field(None, ge=0, le=1000, json_schema_extra=_to(BACKBONE),
                                   description="only the last N blocks (matches) get a module (None: all)")
    pretrained: str | None = Field(None, json_schema_extra=_to(BACKBONE),
                                   description="a local ImageNet weights file for the backbone (never downloaded); "
                                   '"none": random initialisation, said explicitly (a run records which). In a spec, '
                                   "relative to the directory the sweep command runs in, and \"imagenet\" names the "
                                   "file python -m harness.prepare weights writes: data/weights/<backbone>_imagenet.pth")
    width_mult: float = Field(1.0, ge=1 / 64, le=4, json_schema_extra=_to(BACKBONE),
                              description="backbone channel multiplier (thin CPU stand-ins)")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout before the classifier")
    module_options: dict[str, Any] = Field(
        {}, description="more keyword arguments for the module, those its signature names (e.g. impl, fold_div)")
    release_checkpoint: str | None = Field(
        None, description="A checkpoint file of the authors' release (swathikirans/GSF, main.py's .pth.tar): "
        "builds the model it holds in the release layout and loads its weights (torch.load weights_only=True). "
        "A relative path is taken from the folder the sweep is started in.")

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data):
        if isinstance(data, dict) and "channel_shuffle" in data:
            raise ValueError("channel_shuffle was removed: it interleaved the two groups, which is neither the "
                             "paper's order nor the authors' release's; use layout: release for the release's")
        return data

    # Field validators run only on the values given, so these see exactly what a caller (or a spec,
    # merged over base, profile, variant and axes) set. ``context={"partial": True}`` skips the checks
    # across fields, for a spec's base section, which a variant may complete.

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        get_backbone(v)
        return v

    @field_validator("module")
    @classmethod
    def _known_module(cls, v: str) -> str:
        get_module(v)
        return v

    @field_validator("shift_ratio")
    @classmethod
    def _ratio(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None:
            check_shift_ratio(v)
        return _module_takes(v, info)

    _common = field_validator("gating", "fusion")(lambda cls, v, info: _module_takes(v, info))

    @field_validator("layout")
    @classmethod
    def _layout(cls, v: str | None, info: ValidationInfo) -> str | None:
        name = info.data.get("backbone")
        if v is not None and not _partial(info) and name is not None:
            taken = get_backbone(name).options
            if taken is not None and "layout" not in taken:
                raise ValueError(f"backbone {name!r} has no {v!r} layout (its builder takes no layout)")
        return _module_takes(v, info)

    @field_validator("release_checkpoint")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        # A trial runs in its own working folder: the path must not depend on it.
        return None if v is None else os.path.abspath(os.path.expanduser(v))

    @field_validator("placement", "num_blocks", "pretrained", "width_mult")
    @classmethod
    def _backbone_takes(cls, v, info: ValidationInfo):
        name = info.data.get("backbone")
        if _partial(info) or name is None:
            return v
        backbone = get_backbone(name)
        taken = backbone.options
        if taken is not None and info.field_name not in taken:
            if name.startswith(TIMM_PREFIX) and info.field_name == "width_mult":
                raise ValueError(f"width_mult does not apply to {name}: timm models are not width-scaled "
                                 "(pick a smaller timm model instead, e.g. resnet18d, regnetx_002)")
            raise ValueError(f"backbone {name!r} does not take {info.field_name} (its options: {', '.join(taken)})")
        if info.field_name == "placement" and v is not None:
            backbone.check_placement(v)
        return v

    @field_validator("module_options")
    @classmethod
    def _module_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        module = info.data.get("module")
        if _partial(info) or module in (None, NO_MODULE):
            return v
        taken = module_options(module)
        for key in v:
            if key in _fields(MODULE):
                raise ValueError(f"{key!r}: set model.{key}, not module_options.{key}")
            if key in RESERVED_OPTIONS:
                raise ValueError(f"{key!r}: the backbone sets it where the module's input allows, not a spec")
            if taken is not None and key not in taken:
                allowed = [k for k in taken if k not in _fields(MODULE)]
                raise ValueError(f"{key!r} is not an option of module {module!r}{did_you_mean(key, allowed)}; "
                                 f"allowed: {', '.join(allowed) or 'none'}")
        return v

    # The options ``_backbone_defaults`` filled in (the caller left them unset).
    _defaulted: tuple[str, ...] = PrivateAttr(())

    @model_validator(mode="after")
    def _backbone_defaults(self, info: ValidationInfo) -> "ModelConfig":
        """``shift_ratio`` and ``placement`` left unset take the backbone's registered defaults here,
        once, so that a trial's config, its hash and its MLflow params hold the values the model
        uses. Not for a release checkpoint, whose file decides them, nor for an option the module or
        backbone does not take (nor placement without a module), nor for a partial (a spec's base)."""
        if _partial(info) or self.release_checkpoint is not None:
            return self
        backbone, skip = get_backbone(self.backbone), self.not_applicable()
        defaults = {"shift_ratio": backbone.default_shift_ratio,
                    "placement": backbone.default_placement if self.module != NO_MODULE else None}  # TSN: nowhere
        filled = tuple(k for k, v in defaults.items() if getattr(self, k) is None and k not in skip and v is not None)
        for key in filled:
            setattr(self, key, defaults[key])
        self._defaulted = filled
        return self

    @property
    def defaulted(self) -> tuple[str, ...]:
        """The options this config filled in with the backbone's defaults (the caller left them
        unset): a config written before 2026-12-07 held None there (``harness.spec.Trial``)."""
        return self._defaulted

    @model_serializer(mode="wrap")
    def _only_what_applies(self, handler):
        """A dump (a trial's config, its hash, its MLflow params) holds only the options this module
        and backbone take: a TSM row has no gating to show or to tell two rows apart by."""
        return {k: v for k, v in handler(self).items() if k not in self.not_applicable()}

    def takes(self, who: str) -> tuple[str, ...] | None:
        """The keyword options the module (MODULE) or the backbone builder (BACKBONE) takes; None: any."""
        if who == MODULE:
            return module_options(self.module)
        return get_backbone(self.backbone).options

    def not_applicable(self) -> set[str]:
        """The options none of whose receivers takes them."""
        takes = {MODULE: self.takes(MODULE), BACKBONE: self.takes(BACKBONE)}
        out = {k for k in {*_fields(MODULE), *_fields(BACKBONE)}
               if all(takes[w] is not None and k not in takes[w] for w in _receivers(k))}
        return out | ({"module_options"} if self.module == NO_MODULE else set())

    def module_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the module gets: the common options it takes, and ``module_options``."""
        common = {k: getattr(self, k) for k in _fields(MODULE)}
        taken = self.takes(MODULE)
        # An option left None is not passed: the module's own default applies.
        return {k: v for k, v in common.items() if (taken is None or k in taken) and v is not None} | self.module_options

    def backbone_kwargs(self, pretrained: bool = True) -> dict[str, Any]:
        """The keyword arguments the backbone builder gets (after ``insert``)."""
        placement, backbone = self.placement, get_backbone(self.backbone)
        if self.module != NO_MODULE:  # a backbone without a default needs one set
            placement = backbone.check_placement(placement)
        elif placement is None:  # no module: the placement places nothing, but the builder needs one of its words
            placement = backbone.default_placement
        values = {"placement": placement, "num_blocks": self.num_blocks,
                  "pretrained": self.pretrained if pretrained and self.pretrained != NO_WEIGHTS else None,
                  "width_mult": self.width_mult,
                  "layout": self.layout}
        taken = self.takes(BACKBONE)
        return {k: v for k, v in values.items() if (taken is None or k in taken) and not (k == "layout" and v is None)}


def _module_takes(v, info: ValidationInfo):
    module = info.data.get("module")
    if _partial(info) or module in (None, NO_MODULE) or v is None:
        return v
    taken = module_options(module)
    if taken is not None and info.field_name not in taken:
        raise ValueError(f"module {module!r} does not take {info.field_name} (its options: "
                         f"{', '.join(taken) or 'none'}); set it only on rows whose module does")
    return v


def _partial(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("partial"))


def _receivers(field_name: str) -> list[str]:
    return (ModelConfig.model_fields[field_name].json_schema_extra or {}).get("passed_to", [])


@lru_cache(maxsize=None)
def _fields(who: str) -> tuple[str, ...]:
    """The options passed to ``who`` (MODULE or BACKBONE)."""
    return tuple(k for k, f in ModelConfig.model_fields.items() if who in (f.json_schema_extra or {}).get("passed_to", ()))


def effective_module(model: dict[str, Any]) -> str:
    """What the temporal module of a ``model`` section (``ModelConfig``'s keys, any of them
    missing) computes, whatever it was called: GSF with gating fixed at 1 is a TSM-like shift, at
    -1 TDN-like differencing, at 0 no temporal interaction (TSN); with summed fusion and learned
    gating it is GSM. Other modules keep their names."""
    module = model.get("module", "gsf")
    if module == NO_MODULE:
        return "tsn"
    if module not in ("gsf", "gsm"):
        return module
    fusion = "sum" if module == "gsm" else model.get("fusion", "learned")
    gating = model.get("gating", "learned")
    if gating == "learned":
        return "gsf" if fusion == "learned" else "gsm"
    g = float(gating)
    if g == 0:
        return "tsn-like"
    name = {1.0: "tsm-like", -1.0: "tdn-like"}.get(g, f"fixed-gate({g:g})")
    return name if fusion == "sum" else f"{name}+fusion"


class TSN(nn.Module):
    """Temporal Segment Network: per-frame backbone -> dropout -> fc, averaged over frames.

    ``(B, T, 3, H, W) -> (B, num_classes)``. The temporal modules inside the backbone are what
    let frames talk to each other; without them this is the order-blind TSN baseline.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_frames: int, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.num_frames = num_frames
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.num_features, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        if t != self.num_frames:
            raise ValueError(f"model was built for {self.num_frames} frames, got clips of {t}")
        frames = clips.reshape(b * t, *clips.shape[2:])
        logits = self.fc(self.dropout(self.backbone(frames)))
        return logits.view(b, t, -1).mean(dim=1)


def build_tsn(cfg: ModelConfig, pretrained: bool = True) -> TSN:
    """The TSN ``cfg`` describes, from the registries: ``cfg.module`` inserted into ``cfg.backbone``
    (``pretrained=False``: without reading ``cfg.pretrained``). A release checkpoint's model is
    ``gsf.build_model``'s to build."""
    if cfg.release_checkpoint is not None:
        raise ValueError("build_tsn builds from the registries; a release_checkpoint's model: gsf.build_model")
    factory = get_module(cfg.module)
    insert = None
    if factory is not None:
        kwargs = cfg.module_kwargs()

        def insert(channels: int) -> nn.Module:
            return factory(channels, cfg.num_frames, **kwargs)

    features = get_backbone(cfg.backbone).build(insert, **cfg.backbone_kwargs(pretrained))
    return TSN(features, cfg.num_classes, cfg.num_frames, cfg.dropout)


_BUILD_ERRORS: dict[str, str | None] = {}  # a config's JSON -> why it does not build (None: it does)


def check_buildable(cfg: ModelConfig) -> None:
    """Build ``cfg``'s model on the meta device (no memory, no weights read): a ValueError for what
    only building tells (num_blocks beyond the backbone's blocks, a glob that matches nothing, a
    module refusing its channels), before any trial starts. A release checkpoint's model is what
    its file holds: the trial reads it. Each config is built once per process (grids repeat rows)."""
    if cfg.release_checkpoint is not None:
        return
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    if blob not in _BUILD_ERRORS:
        _BUILD_ERRORS[blob] = _build_error(cfg)
    if _BUILD_ERRORS[blob] is not None:
        raise ValueError(_BUILD_ERRORS[blob])


def _build_error(cfg: ModelConfig) -> str | None:
    try:
        with torch.device("meta"):
            build_tsn(cfg, pretrained=False)
    except (ValueError, TypeError) as e:
        return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    except Exception as e:  # noqa: BLE001 (code that cannot run on the meta device: the trial builds it for real)
        warnings.warn(f"model check skipped: {cfg.backbone} with module {cfg.module!r} does not build on torch's "
                      f"meta device ({type(e).__name__}: {e}); its trial builds it for real and fails there if it "
                      "cannot", stacklevel=3)
    return None
