"""The names a spec's ``model`` section can use: temporal modules and backbones.

Each registers where it is defined, with a decorator; your own do the same in your own file::

    @gsf.register_module("my_shift")
    class MyShift(nn.Module):
        def __init__(self, channels, num_frames, shift_ratio=0.25, mix=0.5): ...

    @gsf.register_backbone("my_net", placements=None, default_placement="blocks.*.conv_dw",
                           default_shift_ratio=0.25)
    def build_my_net(insert, placement, num_blocks=None, pretrained=None): ...

A module is a class or factory ``(channels, num_frames, **options)``: ``build_model`` passes it
the keyword arguments its signature names, out of the model's common options (``shift_ratio``,
``gating``, ...) and ``module_options``. A backbone is a builder
``(insert, placement, num_blocks, pretrained, width_mult)`` (the options it names) returning a
module that maps frames to pooled features and has ``num_features``; ``placements`` lists the
words its ``placement`` takes, or ``None`` for a glob over module names
(``gsf.backbones.pattern.insert_after``). A family too large to register name by name registers
a resolver for a name prefix instead (``register_backbone_prefix``): ``backbone: timm/<name>`` is
any timm CNN (``gsf.backbones.timm_models`` registers ``timm/``). This file imports no backbone:
the backbones import it.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Callable

from torch import nn

NO_MODULE = "none"  # the plain TSN: nothing inserted
# Set by the backbone where the module's input is a fresh activation, never by a spec.
RESERVED_OPTIONS = ("inplace",)


def check_shift_ratio(value: float, what: str = "shift_ratio") -> float:
    """The one range of a shift ratio, (0, 1]: the config, a backbone's default and GSF itself check it here."""
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must be in (0, 1], got {value}")
    return value

_MODULES: dict[str, Callable[..., nn.Module]] = {}
_BACKBONES: dict[str, "Backbone"] = {}
_PREFIXES: dict[str, "_Prefix"] = {}


@dataclass(frozen=True)
class Backbone:
    """A registered backbone: its builder and the paper's defaults for where the module goes."""

    name: str
    build: Callable[..., nn.Module]
    placements: tuple[str, ...] | None  # None: ``placement`` is a glob over module names
    default_placement: str | None
    default_shift_ratio: float

    @property
    def options(self) -> tuple[str, ...] | None:
        """The keyword arguments ``build`` names after ``insert`` (None: it takes any)."""
        return _keyword_names(self.build, skip=1)

    def check_placement(self, placement: str | None) -> str:
        """``placement``, or the default when None; a ValueError naming the allowed ones."""
        placement = placement if placement is not None else self.default_placement
        if placement is None:
            raise ValueError(f"{self.name} has no default placement; set placement to a glob over its module "
                             "names (e.g. 'layer*.*.conv2'), see gsf.backbones.pattern")
        if self.placements is not None and placement not in self.placements:
            raise ValueError(f"placement {placement!r} is not one of {', '.join(self.placements)} for {self.name}")
        return placement


@dataclass(frozen=True)
class _Prefix:
    """A resolver for every backbone name ``<prefix><rest>``: ``resolve(rest)`` is its Backbone."""

    resolve: Callable[[str], Backbone]
    owner: str  # whose names these are, for messages: "timm"
    names: str  # what ``<rest>`` may be, for messages: "any timm CNN"


def register_module(name: str) -> Callable:
    """Register a temporal module class or factory ``(channels, num_frames, **options)`` as ``name``."""
    _check_name(name, "register_module")

    def register(factory):
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):
            raise ValueError(f"register_module({name!r}): {factory!r} has no inspectable signature") from None
        positional = [p for p in signature.parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in positional):
            raise ValueError(f"register_module({name!r}): {_qualname(factory)} must take (channels, num_frames, "
                             f"**options), its signature is {signature}")
        _add(_MODULES, name, factory, "module")
        return factory

    return register


def register_backbone(name: str, placements: tuple[str, ...] | list[str] | None = None,
                      default_placement: str | None = None, default_shift_ratio: float = 0.25) -> Callable:
    """Register a backbone builder as ``name`` with the placements it takes (None: a glob over its
    module names) and the defaults a spec's ``placement`` and ``shift_ratio`` fall back to."""
    _check_name(name, "register_backbone")
    for prefix, entry in _PREFIXES.items():
        if name.startswith(prefix):
            raise ValueError(f"register_backbone({name!r}): names starting with {prefix!r} are {entry.owner}'s")
    placements = tuple(placements) if placements is not None else None
    if placements is not None and default_placement is not None and default_placement not in placements:
        raise ValueError(f"register_backbone({name!r}): default_placement {default_placement!r} "
                         f"is not one of {placements}")
    check_shift_ratio(default_shift_ratio, f"register_backbone({name!r}): default_shift_ratio")

    def register(build):
        _add(_BACKBONES, name, Backbone(name, build, placements, default_placement, default_shift_ratio), "backbone")
        return build

    return register


def register_backbone_prefix(prefix: str, owner: str, names: str) -> Callable:
    """Register ``resolve(rest) -> Backbone`` for every backbone name ``<prefix><rest>`` (a
    ValueError for a ``rest`` it does not know): a family of backbones too large to register one
    by one. ``owner`` and ``names`` say in messages whose names these are and what ``rest`` may be
    (``timm/``: "timm", "any timm CNN")."""
    if not isinstance(prefix, str) or not prefix.endswith("/") or prefix != prefix.strip() or len(prefix) < 2:
        raise ValueError(f"register_backbone_prefix: the prefix must be a name ending in '/', got {prefix!r}")
    clash = [name for name in _BACKBONES if name.startswith(prefix)]
    if clash:
        raise ValueError(f"register_backbone_prefix({prefix!r}): backbones registered under it: {', '.join(clash)}")

    def register(resolve):
        old = _PREFIXES.get(prefix)
        if old is not None and _qualname(old.resolve) != _qualname(resolve):
            raise ValueError(f"register_backbone_prefix({prefix!r}): already registered as {_qualname(old.resolve)}; "
                             f"choose another prefix for {_qualname(resolve)}")
        _PREFIXES[prefix] = _Prefix(resolve, owner, names)
        return resolve

    return register


def list_modules() -> list[str]:
    """The registered temporal module names, and ``none`` (no module: TSN)."""
    return sorted([*_MODULES, NO_MODULE])


def list_backbones() -> list[str]:
    """The registered backbone names (and any name under a registered prefix, e.g. ``timm/<name>``)."""
    return sorted(_BACKBONES)


def get_module(name: str) -> Callable[..., nn.Module] | None:
    """The factory registered as ``name`` (None for ``none``); a ValueError with close matches."""
    if name == NO_MODULE:
        return None
    if name not in _MODULES:
        raise ValueError(f"unknown module {name!r}{did_you_mean(name, list_modules())}; "
                         f"registered: {', '.join(list_modules())}")
    return _MODULES[name]


def get_backbone(name: str) -> Backbone:
    """The backbone registered as ``name``, or the one a registered prefix resolves it to
    (``timm/<name>``: the timm model)."""
    for prefix, entry in _PREFIXES.items():
        if name.startswith(prefix):
            return entry.resolve(name.removeprefix(prefix))
    if name not in _BACKBONES:
        families = "".join(f", or {prefix}<{entry.names}>" for prefix, entry in _PREFIXES.items())
        raise ValueError(f"unknown backbone {name!r}{did_you_mean(name, list_backbones())}; registered: "
                         f"{', '.join(list_backbones())}{families}")
    return _BACKBONES[name]


def module_options(name: str) -> tuple[str, ...] | None:
    """The keyword options module ``name`` takes (None: any, it has ``**kwargs``)."""
    factory = get_module(name)
    return () if factory is None else _keyword_names(factory, skip=2)


def _keyword_names(fn: Callable, skip: int) -> tuple[str, ...] | None:
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    named = [p for p in params if p.kind != p.VAR_POSITIONAL][skip:]
    return tuple(p.name for p in named if p.kind != p.POSITIONAL_ONLY and p.name not in RESERVED_OPTIONS)


def _add(registry: dict, name: str, entry, kind: str) -> None:
    old = registry.get(name)
    if old is not None:
        old_fn, new_fn = (old.build, entry.build) if kind == "backbone" else (old, entry)
        # The same definition again (a module re-imported or reloaded) replaces itself; another one is a clash.
        if _qualname(old_fn) != _qualname(new_fn):
            raise ValueError(f"register_{kind}({name!r}): already registered as {_qualname(old_fn)}; "
                             f"choose another name for {_qualname(new_fn)}")
    registry[name] = entry


def _check_name(name, caller: str) -> None:
    if not isinstance(name, str) or not name or name == NO_MODULE or name != name.strip():
        raise ValueError(f"{caller}: the name must be a non-empty string other than {NO_MODULE!r}, got {name!r}")


def _qualname(fn) -> str:
    fn = getattr(fn, "func", fn)  # functools.partial
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def did_you_mean(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
