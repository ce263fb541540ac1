"""Sweep specs: load a YAML file, validate all of it, expand the grid into frozen trial configs.

A spec::

    name: table4_resnet50_shift_ratio      # optional, defaults to the file stem
    description: ...
    paper_table: table4_resnet50_shift_ratio.csv   # optional, in reports/paper/
    base:     {model: {...}, data: {...}, train: {...}, measure: {...}}
    grid:
      variants:                            # named rows, each overriding dotted keys
        - {name: "25%", set: {model.shift_ratio: 0.25}, paper_row: {shift_percent: 25}}
      axes: {model.num_frames: [8, 16]}    # crossed with each other and with the variants
    seeds: [0, 1, 2]                       # optional; each grid point runs once per seed
    claims: ["GSF > GSM", "TSM > TSN"]     # optional; the report tests each (top-1, by seed)
    profiles: {paper: {...}, smoke: {...}} # each overrides keys of base (same sections)

Every error is a ``SpecError`` naming the file, the key and what is allowed.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.data import DataConfig

PAPER_DIR = Path(__file__).resolve().parent.parent / "reports" / "paper"


class SpecError(Exception):
    """A bad spec or command line: one line, naming the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """Keyword arguments of ``gsf.build_model``."""

    backbone: str = "resnet50"
    module: str = "gsf"
    num_classes: int = Field(174, ge=1)
    num_frames: int = Field(8, ge=1)
    shift_ratio: float | None = None
    gating: Literal["learned"] | float = "learned"
    fusion: Literal["learned", "sum"] = "learned"
    placement: str | None = None
    num_blocks: int | None = Field(None, ge=0)
    pretrained: str | None = None
    width_mult: float = Field(1.0, gt=0)
    dropout: float = Field(0.5, ge=0, lt=1)
    channel_shuffle: bool = False
    module_options: dict[str, Any] = {}

    @field_validator("backbone", "module")
    @classmethod
    def _registered(cls, v: str, info) -> str:
        import gsf

        registry = gsf.BACKBONES if info.field_name == "backbone" else gsf.TEMPORAL_MODULES
        if v not in registry:
            raise ValueError(f"unknown {info.field_name} {v!r}; allowed: {', '.join(sorted(registry))}")
        return v

    @field_validator("shift_ratio")
    @classmethod
    def _ratio(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError(f"shift_ratio must be in (0, 1], got {v}")
        return v

    def check_placement(self) -> None:
        from gsf import BACKBONES

        allowed = BACKBONES[self.backbone].placements
        if self.placement is not None and self.placement not in allowed:
            raise ValueError(f"placement {self.placement!r} is not allowed for {self.backbone}; allowed: {', '.join(allowed)}")


class TrainConfig(_Strict):
    """The paper's recipe (section 4.2) by default; ``lr`` is for a batch of ``lr_batch`` clips
    and scales linearly with ``batch_size``. ``momentum`` applies to SGD only."""

    epochs: int = Field(60, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"  # adamw: short CPU smoke runs learn faster
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0)
    lr_batch: int = Field(32, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(10, ge=0)
    clip_grad_norm: float | None = Field(20.0, gt=0)
    amp: bool = True
    eval_every: int = Field(1, ge=1)
    max_batches_per_epoch: int | None = Field(None, ge=1)


class MeasureConfig(_Strict):
    input_size: int = Field(224, ge=16)
    flops: bool = True
    latency: bool = True
    latency_runs: int = Field(20, ge=20)
    latency_warmup: int = Field(5, ge=1)
    latency_clips: int = Field(1, ge=1)
    fp16_on_gpu: bool = True
    train_step: bool = False


class TrialConfig(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    measure: MeasureConfig = MeasureConfig()


class Variant(_Strict):
    name: str
    set: dict[str, Any] = {}
    paper_row: dict[str, Any] | None = None
    baseline: str | None = None  # another variant's name: the table adds cost ratios to it


class Grid(_Strict):
    variants: list[Variant] = []
    axes: dict[str, list[Any]] = {}


class SpecFile(_Strict):
    name: str | None = None
    description: str = ""
    paper_table: str | None = None
    base: dict[str, Any] = {}
    grid: Grid = Grid()
    seeds: list[int] = [0]
    profiles: dict[str, dict[str, Any]] = {}
    claims: list[str] = Field([], description=(
        "the paper's claims about its rows, each 'A > B' with A and B variant names: A's top-1 "
        "is higher; the report gives each a difference, a 95% interval and a verdict"))


@dataclass(frozen=True)
class Trial:
    """One grid point at one seed: the resolved config and what the table shows about it."""

    config: dict[str, Any]
    variant: str
    axes: dict[str, Any]
    seed: int
    paper_row: dict[str, Any] | None
    baseline: str | None = None
    hash: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "hash", config_hash(self.config))

    @property
    def label(self) -> str:
        parts = [self.variant] if self.variant else []
        parts += [f"{k.split('.')[-1]}={v}" for k, v in self.axes.items()]
        return " ".join(parts) + f" seed={self.seed}"


@dataclass
class Spec:
    path: Path
    name: str
    description: str
    profile: str
    paper_table: Path | None
    trials: list[Trial]
    axis_keys: list[str]
    claims: list[tuple[str, str]] = field(default_factory=list)  # (better, worse) variant names


def parse_claims(claims: list[str], names: list[str], path: Path) -> list[tuple[str, str]]:
    """'A > B' -> (A, B); A and B must be variant names (which may contain spaces, % or +)."""
    out = []
    for i, claim in enumerate(claims):
        parts = [p.strip() for p in claim.split(" > ")]
        if len(parts) != 2 or parts[0] == parts[1] or any(p not in names for p in parts):
            raise SpecError(f"{path}: claims[{i}]: {claim!r} must be 'A > B' with A, B two different variant "
                            f"names; allowed names: {', '.join(repr(n) for n in names if n) or 'none (no grid.variants)'}")
        out.append((parts[0], parts[1]))
    return out


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _pydantic_message(path: Path, prefix: str, err: ValidationError, root: type[BaseModel]) -> str:
    e = err.errors()[0]
    key = ".".join(filter(None, [prefix, _where(e["loc"])]))
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(root, e["loc"][:-1])
        msg = "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    elif "input" in e and not isinstance(e["input"], (dict, list)):
        msg = f"{msg} (got {e['input']!r})"
    return f"{path}: {key}: {msg}"


def _allowed_keys(root: type[BaseModel], parent: tuple) -> list[str]:
    """The field names of the config model at ``parent`` (a pydantic error location)."""
    model = root
    for part in parent:
        if isinstance(part, int):
            continue
        field_info = model.model_fields.get(part)
        if field_info is None:
            return []
        candidates = [field_info.annotation, *typing.get_args(field_info.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields)


def _has_path(tree: dict, loc: tuple) -> bool:
    for part in loc:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _set_dotted(config: dict, dotted: str, value: Any, path: Path, where: str) -> None:
    keys = dotted.split(".")
    if len(keys) != 2 or keys[0] not in TrialConfig.model_fields:
        raise SpecError(f"{path}: {where}: key {dotted!r} must be SECTION.KEY with SECTION one of "
                        f"{', '.join(TrialConfig.model_fields)}")
    config.setdefault(keys[0], {})[keys[1]] = value


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "module_options":
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_spec(path: str | Path, profile: str | None = None) -> Spec:
    """Read, validate and expand ``path``; ``profile`` defaults to ``smoke`` when the spec has one."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping with keys {', '.join(SpecFile.model_fields)}")
    try:
        spec = SpecFile.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_pydantic_message(path, "", e, SpecFile)) from None

    if profile is None:
        profile = "smoke" if "smoke" in spec.profiles else "paper" if "paper" in spec.profiles else None
    if profile is not None and profile not in spec.profiles:
        allowed = ", ".join(spec.profiles) or "none defined"
        raise SpecError(f"{path}: profile {profile!r} is not defined in 'profiles'; allowed: {allowed}")

    override = spec.profiles[profile] if profile else {}
    base = _merge(spec.base, override)
    try:
        TrialConfig.model_validate(base)
    except ValidationError as e:
        loc = e.errors()[0]["loc"]
        where = f"profiles.{profile}" if _has_path(override, loc) else "base"
        raise SpecError(_pydantic_message(path, where, e, TrialConfig)) from None

    paper_table = None
    if spec.paper_table:
        paper_table = PAPER_DIR / spec.paper_table
        if not paper_table.is_file():
            raise SpecError(f"{path}: paper_table: {spec.paper_table!r} not found in {PAPER_DIR}")

    variants = spec.grid.variants or [Variant(name="")]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SpecError(f"{path}: grid.variants: names must be unique, got {names}")
    for i, v in enumerate(variants):
        if v.baseline is not None and v.baseline not in names:
            raise SpecError(f"{path}: grid.variants[{i}] ({v.name}).baseline: {v.baseline!r} is not a variant name; "
                            f"allowed: {', '.join(names)}")
    claims = parse_claims(spec.claims, names, path)
    axis_keys = list(spec.grid.axes)
    for key, values in spec.grid.axes.items():
        if not values:
            raise SpecError(f"{path}: grid.axes.{key}: needs at least one value")
    trials = []
    for i, variant in enumerate(variants):
        for combo in itertools.product(*spec.grid.axes.values()):
            point = copy.deepcopy(base)
            for dotted, value in variant.set.items():
                _set_dotted(point, dotted, value, path, f"grid.variants[{i}] ({variant.name}).set")
            axes = dict(zip(axis_keys, combo))
            for dotted, value in axes.items():
                _set_dotted(point, dotted, value, path, f"grid.axes.{dotted}")
            where = f"grid.variants[{i}] ({variant.name})" if variant.name else "base"
            try:
                resolved = TrialConfig.model_validate(point)
                resolved.model.check_placement()
            except ValidationError as e:
                raise SpecError(_pydantic_message(path, where, e, TrialConfig)) from None
            except ValueError as e:
                raise SpecError(f"{path}: {where}: model.placement: {e}") from None
            for seed in spec.seeds:
                config = resolved.model_dump(mode="json")
                config["seed"] = seed
                trials.append(Trial(config, variant.name, axes, seed, variant.paper_row, variant.baseline))
    hashes = [t.hash for t in trials]
    if len(set(hashes)) != len(hashes):
        raise SpecError(f"{path}: grid: two grid points resolve to the same config; make them differ")
    return Spec(path, spec.name or path.stem, spec.description, profile or "", paper_table, trials, axis_keys, claims)
