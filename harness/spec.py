"""Sweep specs: load a YAML file, validate all of it, expand the grid into frozen trial configs.

A spec::

    name: table4_resnet50_shift_ratio      # optional, defaults to the file stem
    description: ...
    paper_table: table4_resnet50_shift_ratio.csv   # optional, in reports/paper/
    imports: [my_module]                   # optional: your own modules (gsf.register_module ...),
                                           # importable from this file's folder or the environment
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
import csv
import hashlib
import itertools
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from gsf.model import NO_WEIGHTS, ModelConfig, check_buildable
from gsf.registry import get_backbone, get_module
from harness import usercode
from harness.data import DataConfig

PAPER_DIR = Path(__file__).resolve().parent.parent / "reports" / "paper"


class SpecError(Exception):
    """A bad spec or command line: one line, naming the file and the key."""


# --- reading the YAML -------------------------------------------------------------------------

MAX_SPEC_BYTES = 1_000_000
MAX_DEPTH = 50  # a spec is 5-6 levels deep; far deeper input only exhausts Python's recursion limit
MAX_NODES = 100_000  # scalars and collections once aliases are expanded; a shipped spec has < 1000
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a spec's name is a folder name


class _Refused(yaml.MarkedYAMLError):
    """Input PyYAML accepts but a spec must not contain."""


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses what PyYAML lets through and a spec never needs: duplicate
    keys (PyYAML keeps the last one silently), nesting deeper than ``MAX_DEPTH`` (a RecursionError
    otherwise) and aliases that expand past ``MAX_NODES`` nodes (a few hundred bytes of nested
    anchors become gigabytes once the tree is walked). ``1e-4`` is a float, as in YAML 1.2, not
    the string YAML 1.1 makes of it."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(problem=f"nested deeper than {MAX_DEPTH} levels",
                               problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with '<<' may be overridden: that is what merging is for
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, typing.Hashable) and key in first_line:
                    raise _Refused(problem=f"duplicate key {key!r} (first on line {first_line[key]})",
                                   problem_mark=key_node.start_mark)
                if isinstance(key, typing.Hashable):
                    first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))


def _check_expansion(root) -> None:
    """Count the nodes of the tree with every alias expanded, in time linear in the file."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if id(node) in sizes:
            if sizes[id(node)] < 0:
                raise _Refused(problem="an alias refers to a node that contains it", problem_mark=node.start_mark)
            return sizes[id(node)]
        sizes[id(node)] = -1
        if isinstance(node, SequenceNode):
            n = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        if n > MAX_NODES:
            raise _Refused(problem=f"aliases expand this node past {MAX_NODES} nodes", problem_mark=node.start_mark)
        sizes[id(node)] = n
        return n

    if root is not None:
        size(root)


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; every problem is a one-line ``SpecError`` with the line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {len(data)} bytes; a spec is at most {MAX_SPEC_BYTES} bytes of YAML")
    for bom, encoding in ((b"\xff\xfe", "UTF-16/32"), (b"\xfe\xff", "UTF-16"), (b"\x00\x00\xfe\xff", "UTF-32")):
        if data.startswith(bom):
            raise SpecError(f"{path}: {encoding} text (byte-order mark {bom.hex()}); save the spec as UTF-8")
    if b"\x00" in data:
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: a NUL byte: binary or UTF-16 data, not a YAML text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the spec as UTF-8") from None
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = e.problem or e.context or "invalid"
        if not isinstance(e, _Refused):
            what = f"not valid YAML: {what}" + (f" ({e.context})" if e.context and e.problem else "")
        raise SpecError(f"{where}: {what}") from None
    except yaml.YAMLError as e:  # ReaderError: a control character
        line = text[:getattr(e, "position", 0)].count("\n") + 1
        reason = str(e).splitlines()[0]
        raise SpecError(f"{path}:{line}: not valid YAML: {reason}") from None


# --- the schema -------------------------------------------------------------------------------

class _Strict(BaseModel):
    # strict: "8" is not a count and true is not 1 (YAML and pydantic would otherwise coerce them)
    model_config = ConfigDict(extra="forbid", strict=True)


def _compile_backend(v: bool | str) -> bool | str:
    """``compile``: a bool, or the name of a torch.compile backend."""
    if isinstance(v, bool):
        return v
    import torch._dynamo

    if not isinstance(v, str) or v not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f"compile must be true, false or a torch.compile backend name (inductor, aot_eager, "
                         f"eager, ...: torch._dynamo.list_backends(exclude_tags=())), got {v!r}")
    return v


class TrainConfig(_Strict):
    """The paper's recipe (section 4.2) by default; ``lr`` is for a batch of ``lr_batch`` clips
    and scales linearly with ``batch_size``. ``momentum`` applies to SGD only."""

    epochs: int = Field(60, ge=0, le=10_000, description="training epochs; 0: evaluation only (no training, "
                        "no optimiser, no checkpoint: the model as built, e.g. model.release_checkpoint)")
    optimizer: Literal["sgd", "adamw"] = "sgd"  # adamw: short CPU smoke runs learn faster
    batch_size: int = Field(32, ge=1, le=8192, description="clips per training batch")
    lr: float = Field(0.01, gt=0, le=10, description="learning rate for a batch of lr_batch clips")
    lr_batch: int = Field(32, ge=1, le=8192, description="the batch size lr is given for")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, le=1, description="L2 penalty (decoupled for adamw)")
    warmup_epochs: float = Field(10, ge=0, le=10_000, description="linear warm-up length, in epochs")
    clip_grad_norm: float | None = Field(20.0, gt=0, description="gradient-norm clip (None: off)")
    amp: Literal["auto", "bf16"] | bool = Field(
        "auto", description='Mixed precision for training and evaluation: "auto" = fp16 autocast with a '
        'GradScaler on CUDA, full precision elsewhere; "bf16" = bf16 autocast on any device (CPU too), no '
        'scaler; false = full precision everywhere; true = "auto" (the former boolean setting).')
    compile: bool | str = Field(
        False, description="torch.compile the model for training and evaluation, on any device: true = the "
        "inductor backend; or a backend name (e.g. 'aot_eager' to tell a Dynamo/AOTAutograd problem from an "
        "inductor one). Temporal modules with impl='auto' run their readable implementation under compile.")
    channels_last: bool = Field(
        False, description="Convert the model to torch.channels_last memory format (the fast layout for "
        "fp16/bf16 convolutions on tensor cores), on any device.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description='Where the trial trains, evaluates and is timed: "auto" = CUDA when Ray gave the '
        'trial a GPU (which it does by default on a cluster with GPUs, --gpus-per-trial auto), else the CPU; '
        '"cuda" = a GPU is required: a sweep on a cluster without one stops before any trial (exit 2) with an '
        'estimate of the CPU time; "cpu" = the CPU even where there are GPUs. --device overrides it for every trial.')
    eval_every: int = Field(1, ge=1, le=10_000, description="validate every N epochs (and after the last)")
    max_batches_per_epoch: int | None = Field(None, ge=1, le=10_000_000, description="cap on batches per epoch")

    @field_validator("amp", mode="before")
    @classmethod
    def _amp(cls, v):
        if v is True:
            return "auto"
        if v not in ("auto", "bf16") and v is not False:
            raise ValueError(f'amp must be "auto", "bf16" or false (true means "auto"), got {v!r}')
        return v

    _compile = field_validator("compile", mode="before")(lambda cls, v: _compile_backend(v))


class MeasureConfig(_Strict):
    input_size: int = Field(224, ge=16, le=1024, description="frame side the model is measured at, pixels")
    flops: bool = True
    latency: bool = True
    latency_runs: int = Field(20, ge=20, le=100_000, description="timed forward passes (median reported)")
    latency_warmup: int = Field(5, ge=1, le=10_000, description="untimed passes before timing")
    latency_clips: int = Field(1, ge=1, le=1024, description="clips per timed batch")
    fp16_on_gpu: bool = True
    train_step: bool = False
    compile: bool | str = Field(
        False, description="Time torch.compile(model) (true = inductor, or a backend name) instead of the eager "
        "model, in latency, train_step and the cost ratios (the baseline compiled too). The first call's wall "
        "time, compilation included, is reported on its own: compile_s (forward) and train_step_compile_s.")

    _compile = field_validator("compile", mode="before")(lambda cls, v: _compile_backend(v))


class TrialConfig(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    measure: MeasureConfig = MeasureConfig()

    @model_validator(mode="after")
    def _released_input(self) -> "TrialConfig":
        """Released weights evaluated on input normalised another way give a wrong accuracy, silently."""
        from gsf.release import RELEASED

        released = RELEASED.get(self.model.backbone)
        if self.model.release_checkpoint is not None and released and self.data.normalize != released.normalize:
            raise ValueError(f"data.normalize is {self.data.normalize!r}, but the authors' released "
                             f"{self.model.backbone} weights expect {released.normalize!r} input (model.release_checkpoint)")
        return self


class Variant(_Strict):
    name: str
    set: dict[str, Any] = {}
    paper_row: dict[str, Any] | None = None
    baseline: str | None = None  # another variant's name: the table adds cost ratios to it


class Grid(_Strict):
    variants: list[Variant] = []
    axes: dict[str, list[Any]] = {}


MODULE_NAME = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"


class SpecFile(_Strict):
    name: str | None = None
    description: str = ""
    paper_table: str | None = None
    imports: list[Annotated[str, Field(pattern=f"^{MODULE_NAME}$")]] = Field(
        [], max_length=100, description="Python modules to import first (from the spec's folder or the "
        "environment), in the driver and in every trial: what they register is usable in model")
    base: dict[str, Any] = {}
    grid: Grid = Grid()
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(
        [0], min_length=1, description="each grid point runs once per seed")
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
    baseline_model: dict[str, Any] | None = None  # the baseline variant's model at this grid point
    code: str = ""  # digest of the code that defines the model (usercode.code_sources)
    user_modules: tuple[str, ...] = ()  # the user's modules in that code (none: gsf alone)
    # The options ModelConfig filled in with the backbone's defaults (.defaulted): the model's, the baseline's.
    defaulted: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    hash: str = field(init=False)  # the trial's identity: config, baseline model and code
    config_key: str = field(init=False)  # the same without the code: finds runs of older code
    key_before_defaults: str = field(init=False)  # config_key as written before 2026-12-07, when the
    # backbone's defaults were left unset in the config (None): finds the runs it no longer matches

    def __post_init__(self):
        key = {"config": _what_it_computes(self.config), "baseline_model": self.baseline_model}
        object.__setattr__(self, "config_key", config_hash(key))
        object.__setattr__(self, "hash", config_hash({**key, "code": self.code}))
        mine, baseline = self.defaulted
        before = {"config": _what_it_computes({**self.config, "model": _unset(self.config["model"], mine)}),
                  "baseline_model": _unset(self.baseline_model, baseline)}
        object.__setattr__(self, "key_before_defaults", config_hash(before))

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
    imports: list[str] = field(default_factory=list)  # the spec's imports, as written
    user_modules: list[str] = field(default_factory=list)  # top-level modules of the user's code they loaded
    code_sources: dict[str, str] = field(default_factory=dict)  # file -> sha256, gsf's and the user's

    def trial_sources(self, trial: Trial) -> dict[str, str]:
        """The files (and their sha256) of the code in ``trial``'s identity."""
        return usercode.files_of(self.code_sources, trial.user_modules)


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


# Keys that say where a trial runs, not what it computes: not part of its identity, so that
# `--device cpu` or a cluster with GPUs does not re-run finished trials. (data.decode: nvjpeg's
# pixels are libjpeg-turbo's within a level, as the CPU paths' are each other's.)
PLACEMENT_KEYS = (("train", "device"), ("data", "decode"))
# Keys added after trials had finished, with the default that computes what came before: left out
# of the identity at that default, so those trials stay finished.
LATER_KEYS = {("data", "media"): None}


def _what_it_computes(config: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for section, key in PLACEMENT_KEYS:
        out.get(section, {}).pop(key, None)
    for (section, key), default in LATER_KEYS.items():
        if key in out.get(section, {}) and out[section][key] == default:
            del out[section][key]
    return out


def _unset(model: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    return None if model is None else {**model, **dict.fromkeys(keys)}


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _pydantic_message(path: Path, prefix: str, err: ValidationError, root: type[BaseModel]) -> str:
    errors = err.errors()
    e = errors[0]
    loc = _field_loc(e["loc"])
    key = ".".join(filter(None, [prefix, _where(loc)]))
    # A union reports one error per member type: say what each member would have accepted.
    msgs = list(dict.fromkeys(x["msg"].removeprefix("Value error, ") for x in errors if _field_loc(x["loc"]) == loc))
    msg = " or ".join([msgs[0], *(m.removeprefix("Input should be ") for m in msgs[1:])])
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(root, e["loc"][:-1])
        msg = "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    elif "input" in e and not isinstance(e["input"], (dict, list)) and e["type"] != "value_error":
        msg = f"{msg} (got {e['input']!r})"  # a value_error's own message names the value
    return f"{path}: {key}: {msg}"


def _field_loc(loc: tuple) -> tuple:
    """An error location without pydantic's union-member tags ("float", "literal['learned']")."""
    tags = ("str", "int", "float", "bool", "none", "dict", "list", "tuple")
    while loc and isinstance(loc[-1], str) and (loc[-1] in tags or "[" in loc[-1] or loc[-1].startswith(("function-", "constrained-"))):
        loc = loc[:-1]
    return loc


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


# Config keys that hold file paths. A relative one is taken from the directory the command runs
# in, here in the driver: a Ray trial runs in a folder of its own. Paths inside ``data``
# other than ``root`` (lists, categories, a flip map file) are relative to ``root``.
PATH_KEYS = (("data", "root"), ("model", "pretrained"))


def imagenet_weights(backbone: str) -> str:
    """model.pretrained: "imagenet": the file ``python -m harness.prepare weights BACKBONE`` writes."""
    from harness.prepare.weights import weights_path

    return str(weights_path(backbone))


def absolute_paths(config: dict[str, Any], base: Path) -> dict[str, Any]:
    """``config`` (a resolved trial config) with every ``PATH_KEYS`` value made absolute, and
    ``model.pretrained: imagenet`` the backbone's prepared file (``none`` stays: no weights)."""
    model = config.get("model", {})
    if model.get("pretrained") == "imagenet":
        model["pretrained"] = imagenet_weights(model["backbone"])
    for section, key in PATH_KEYS:
        value = config.get(section, {}).get(key)
        if isinstance(value, str) and value and (section, key, value) != ("model", "pretrained", NO_WEIGHTS):
            config[section][key] = str(Path(os.path.normpath(base / Path(value).expanduser())))
    return config


def load_spec(path: str | Path, profile: str | None = None, cwd: str | Path | None = None,
              default_name: str | None = None) -> Spec:
    """Read, validate and expand ``path``; ``profile`` defaults to ``smoke`` when the spec has one.
    Relative data and weight paths (``PATH_KEYS``) resolve against ``cwd``, by default the
    directory the command runs in. A spec without ``name:`` is named ``default_name``, by default
    its file's name."""
    cwd = Path(cwd or Path.cwd()).resolve()
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: {'a folder, not a spec file' if path.is_dir() else 'spec file not found'}")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping with keys {', '.join(SpecFile.model_fields)}")
    try:
        spec = SpecFile.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_pydantic_message(path, "", e, SpecFile)) from None
    name = spec.name if spec.name is not None else default_name or path.stem
    if not NAME.fullmatch(name):
        source = "name" if spec.name is not None else "name (the file name, as the spec sets none)"
        raise SpecError(f"{path}: {source}: {name!r} names a folder of the results dir, so it may hold only letters, "
                        "digits, '.', '_' and '-' (first a letter or digit, at most 100)")

    if profile is None:
        profile = "smoke" if "smoke" in spec.profiles else "paper" if "paper" in spec.profiles else None
    if profile is not None and profile not in spec.profiles:
        allowed = ", ".join(spec.profiles) or "none defined"
        raise SpecError(f"{path}: profile {profile!r} is not defined in 'profiles'; allowed: {allowed}")

    try:
        user_modules = usercode.import_modules(spec.imports, path.resolve().parent)
    except usercode.ImportFailed as e:
        where = f" (looked in {path.resolve().parent} and the environment)" if e.not_found else ""
        raise SpecError(f"{path}: {e}{where}") from None
    sources = usercode.code_sources(user_modules)

    def code_of(*models: dict | None) -> tuple[tuple[str, ...], str]:
        """The user modules in the identity of a trial with these models, and its code digest."""
        parts = [get_module(m["module"]) for m in models if m] + [get_backbone(m["backbone"]).build for m in models if m]
        mine = tuple(user_modules) if usercode.uses(parts, user_modules) else ()
        return mine, usercode.digest(usercode.files_of(sources, mine))

    override = spec.profiles[profile] if profile else {}
    base = _merge(spec.base, override)
    try:
        # Checks across keys wait for the grid points: a variant may complete the base.
        TrialConfig.model_validate(base, context={"partial": True})
    except ValidationError as e:
        loc = e.errors()[0]["loc"]
        where = f"profiles.{profile}" if _has_path(override, loc) else "base"
        raise SpecError(_pydantic_message(path, where, e, TrialConfig)) from None

    variants = spec.grid.variants or [Variant(name="")]
    paper_table = _check_paper_rows(path, spec.paper_table, variants)
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
        _no_repeats(path, f"grid.axes.{key}", values)
    _no_repeats(path, "seeds", spec.seeds)
    points = []  # (variant, axes, resolved config, the model options it filled in)
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
                check_buildable(resolved.model)
            except ValidationError as e:
                key = _where(_field_loc(e.errors()[0]["loc"]))
                if key in axes and key not in variant.set:
                    where = "grid.axes"
                raise SpecError(_pydantic_message(path, where, e, TrialConfig)) from None
            except ValueError as e:
                raise SpecError(f"{path}: {where}: model: {e}") from None
            points.append((variant, axes, absolute_paths(resolved.model_dump(mode="json"), cwd),
                           resolved.model.defaulted))
    model_at = {(v.name, json.dumps(axes, sort_keys=True)): (config["model"], filled)
                for v, axes, config, filled in points}
    trials, declared = [], []
    for variant, axes, config, filled in points:
        baseline_model, baseline_filled = (model_at[variant.baseline, json.dumps(axes, sort_keys=True)]
                                           if variant.baseline else (None, ()))
        mine, code = code_of(config["model"], baseline_model)
        for seed in spec.seeds:
            trials.append(Trial({**copy.deepcopy(config), "seed": seed}, variant.name, axes, seed, variant.paper_row,
                                variant.baseline, baseline_model, code, mine, (filled, baseline_filled)))
            declared.append({**variant.set, **axes})
    first: dict[str, int] = {}
    for j, trial in enumerate(trials):
        i = first.setdefault(config_hash(_what_it_computes(trial.config)), j)  # rows of one model, whatever their baselines
        if i != j:
            raise SpecError(f"{path}: grid: {_collision(trials[i], trials[j], declared[i], declared[j])}")
    return Spec(path, name, spec.description, profile or "", paper_table, trials, axis_keys, claims,
                spec.imports, user_modules, sources)


def _no_repeats(path: Path, where: str, values: list) -> None:
    seen = set()
    for v in values:
        blob = json.dumps(v, sort_keys=True, default=str)
        if blob in seen:
            raise SpecError(f"{path}: {where}: {v!r} is listed twice; each value makes its own trials")
        seen.add(blob)


def _collision(a: Trial, b: Trial, set_a: dict, set_b: dict) -> str:
    """Why two grid points are one config: the keys they set differently resolve to one value."""
    keys = [k for k in dict.fromkeys([*set_a, *set_b]) if set_a.get(k, "unset") != set_b.get(k, "unset")]
    parts = []
    for k in keys:
        section, field_name = k.split(".")
        value = a.config[section].get(field_name, "not applicable")
        parts.append(f"{k}: {set_a.get(k, 'unset')!r} vs {set_b.get(k, 'unset')!r}, both {value!r}")
    why = f" (they differ only in {'; '.join(parts)})" if parts else ""
    return f"{a.label!r} and {b.label!r} resolve to the same config{why}; make them differ or drop one"


def _check_paper_rows(path: Path, table: str | None, variants: list[Variant]) -> Path | None:
    """The paper table exists and has a column for every key a ``paper_row`` matches on."""
    rows = [(i, v) for i, v in enumerate(variants) if v.paper_row]
    if table is None:
        if rows:
            i, v = rows[0]
            raise SpecError(f"{path}: grid.variants[{i}] ({v.name}).paper_row: needs a paper_table to look the row up in")
        return None
    file = PAPER_DIR / table
    if Path(table).name != table or not file.is_file():
        available = ", ".join(sorted(p.name for p in PAPER_DIR.glob("*.csv")))
        raise SpecError(f"{path}: paper_table: {table!r} not found in {PAPER_DIR}; available: {available}")
    try:
        with file.open(newline="") as f:
            columns = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SpecError(f"{path}: paper_table: cannot read {file}: {e}") from None
    for i, v in rows:
        for key in v.paper_row:
            if key not in columns:
                raise SpecError(f"{path}: grid.variants[{i}] ({v.name}).paper_row: {key!r} is not a column of {file.name}; "
                                f"allowed: {', '.join(columns)}")
    return file
