"""``python -m harness.prepare weights NAME [--from FILE]``: ImageNet weights in our key layout.

Writes ``<out>/<NAME>_imagenet.pth`` (default ``data/weights/``): the plain state dict of our
backbone (``gsf/backbones/``), loaded from the ImageNet file the authors' code
(swathikirans/GSF) starts from, and a sidecar ``<NAME>_imagenet.json`` saying where it came from,
its sha256 and what input it expects. This is the only place that downloads weights; a run reads
``model.pretrained`` from disk and never downloads.

The sources (the hex in each file name is, by ``torch.utils.model_zoo``'s convention, a prefix of
the file's sha256; model_zoo checked it on every download when these files were published, and
``torch.hub.HASH_REGEX`` still reads it from the name; we pin it and check it):

``bninception``
    ``https://yjxiong.blob.core.windows.net/models/bn_inception-9f5701afb96c8044.pth``, prefix
    ``9f5701afb96c8044``: TSN's Caffe-converted BN-Inception. Flat Caffe names
    (``conv1_7x7_s2.weight``, ``conv1_7x7_s2_bn.weight``, ``inception_3a_1x1_bn.running_mean``, ...),
    every BatchNorm tensor of shape (1, C), the ImageNet classifier ``fc.*``, no
    ``num_batches_tracked``. The release's ``backbones/pytorch_load.py`` downloads it with
    ``model_zoo.load_url``, squeezes dim 0 of every tensor and loads it into its yaml-built
    BN-Inception. Input: BGR 0-255 minus (104, 117, 128), std 1 (``data.normalize: caffe_bgr``).
    ``--from`` also takes Cadene's ``pretrainedmodels`` file ``bn_inception-52deb4733.pth`` (same
    names, BatchNorm (C,), classifier ``last_linear.*``) and our module's own keys. The output
    fits both layouts (the modules go in after the weights).
``resnet50``
    ``https://download.pytorch.org/models/resnet50-19c8e357.pth``, prefix ``19c8e357``: torchvision's
    ImageNet ResNet-50, what the release's ``resnetGSFModels.py`` loads (``pretrained=True``);
    torchvision keys, ``fc.*`` dropped. Input: RGB / 255, ImageNet mean and std
    (``data.normalize: imagenet``). ``--from`` takes any torchvision-keyed ResNet-50 state dict
    (also under "state_dict"/"model", with ``module.`` prefixes). The output fits both layouts.
``inception_v3``
    ``https://yjxiong.blob.core.windows.net/models/inceptionv3-cuhk-0e09b300b493bc74c.pth``, prefix
    ``0e09b300b493bc74c``: the release's "inceptionv3-cuhk", keys named by the ids of its
    ``backbones/inceptionv3.yaml`` (``<unit>_Conv2D.weight/.bias``, ``<unit>_batchnorm.*``; a leading
    dim of 1 is squeezed; classifier ``top_cls_fc.*`` dropped). ``pytorch_load.py`` loads it as the
    BN-Inception file. It fits only the authors' Inception-v3 variant (biased convs, transposed
    non-square kernels; ``gsf/backbones/inception_v3.py``), so the output is for
    ``model.layout: release``. Input: BGR 0-255 minus (104, 117, 128) (``caffe_bgr``). ``--from``
    also takes that variant's own keys, or torchvision's ``inception_v3_google-*.pth``, which is
    converted for ``model.layout: paper`` (``data.normalize: imagenet``; the backbone rescales to
    the [-1, 1] those weights expect, as torchvision's ``transform_input``).

The conversion is the backbone's own loader (the one a run uses on ``model.pretrained``), so what
is written is exactly what a run would load; the written file is then loaded again into a fresh
backbone, every key matched, before it gets its final name.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

NAMES = ("bninception", "resnet50", "inception_v3")
TIMM = "timm/"  # timm/<model>: converted from timm's own file (--from), never downloaded here
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_OUT = "data/weights"
NORMALIZE = {"caffe_bgr": "BGR 0-255 minus (104, 117, 128)", "imagenet": "RGB / 255, ImageNet mean and std"}


@dataclass(frozen=True)
class Source:
    """The file the authors' code starts from: where it is and the sha256 prefix its name carries."""

    url: str
    sha256_prefix: str

    @property
    def filename(self) -> str:
        return urlparse(self.url).path.rsplit("/", 1)[-1]


SOURCES = {
    "bninception": Source("https://yjxiong.blob.core.windows.net/models/bn_inception-9f5701afb96c8044.pth",
                          "9f5701afb96c8044"),
    "resnet50": Source("https://download.pytorch.org/models/resnet50-19c8e357.pth", "19c8e357"),
    "inception_v3": Source("https://yjxiong.blob.core.windows.net/models/inceptionv3-cuhk-0e09b300b493bc74c.pth",
                           "0e09b300b493bc74c"),
}

# Other official files whose names carry their sha256 prefix (model_zoo / torchvision convention):
# a --from file with one of these names is checked against it, like a download.
KNOWN_FILES = {"bn_inception-52deb4733.pth", "inception_v3_google-0cc3c7bd.pth", "resnet50-0676ba61.pth",
               "resnet50-11ad3fa6.pth"} | {s.filename for s in SOURCES.values()}


@dataclass(frozen=True)
class Format:
    """A key layout a source file may be in, and what the weights in it are for."""

    name: str  # the sidecar's "format"
    label: str  # for people
    layout: str  # the model.layout the output is for ("paper" | "release")
    normalize: str  # the data.normalize the weights expect
    matches: Callable[[dict], bool]


def _is_caffe(state: dict) -> bool:
    return "conv1_7x7_s2.weight" in state


def _bn_is_row(state: dict) -> bool:
    """TSN's conversion stores BatchNorm vectors as (1, C); Cadene's as (C,)."""
    bn = state.get("conv1_7x7_s2_bn.weight")
    return bn is not None and bn.dim() == 2 and bn.shape[0] == 1


# In detection order per backbone; the first that matches names the source.
FORMATS = {
    "bninception": (
        Format("tsn_caffe", "TSN Caffe-converted BN-Inception", "paper", "caffe_bgr",
               lambda s: _is_caffe(s) and (_bn_is_row(s) or "fc.weight" in s)),
        Format("cadene", "Cadene pretrainedmodels BN-Inception (Caffe names)", "paper", "caffe_bgr",
               lambda s: _is_caffe(s)),
        Format("native", "BN-Inception in this project's keys", "paper", "caffe_bgr",
               lambda s: "stem.conv1_7x7_s2.conv.weight" in s),
    ),
    "resnet50": (
        Format("torchvision", "torchvision ResNet-50", "paper", "imagenet",
               lambda s: "conv1.weight" in s and "layer1.0.conv1.weight" in s),
    ),
    "inception_v3": (
        Format("cuhk", "the release's inceptionv3-cuhk Inception-v3", "release", "caffe_bgr",
               lambda s: "conv_Conv2D.weight" in s),
        Format("native_release", "release-layout Inception-v3 in this project's keys", "release", "caffe_bgr",
               lambda s: "Conv2d_1a_3x3.conv.bias" in s),
        Format("torchvision", "torchvision Inception-v3", "paper", "imagenet",
               lambda s: "Conv2d_1a_3x3.conv.weight" in s),
    ),
}

# BN-Inception and ResNet-50 weights load before the temporal modules go in: the same trunk for
# both layouts. Inception-v3's release layout is another network.
LAYOUTS_FITTED = {"bninception": ("paper", "release"), "resnet50": ("paper", "release")}


class WeightsError(ValueError):
    """A bad file, URL, hash or command line: one line for the user, exit status 2."""


# --- the public interface (harness.prepare.__main__ and the sweep's checks) ----------------------

SUFFIX = "_imagenet.pth"  # the one naming rule of the files ``weights`` writes


def weights_path(name: str, out: str | os.PathLike = DEFAULT_OUT) -> Path:
    """Where ``weights NAME`` writes: ``<out>/<name>_imagenet.pth`` (``timm/x``: ``timm_x_imagenet.pth``)."""
    return Path(out) / f"{name.replace('/', '_')}{SUFFIX}"


def name_of(path: str | os.PathLike) -> str | None:
    """The NAME whose ``weights NAME`` writes ``path`` (``weights_path``'s inverse); None: not such a file."""
    file = Path(path).name
    if not file.endswith(SUFFIX):
        return None
    name = file.removesuffix(SUFFIX)
    return TIMM + name.removeprefix("timm_") if name.startswith("timm_") else name


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """The sidecar (``.json``) beside the weights file ``path``; None if there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{side}: unreadable sidecar ({e})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{side}: the sidecar is not a JSON object")
    return data


def verify(path: str | os.PathLike, backbone: str, layout: str = "paper") -> str:
    """Load ``path`` into the plain ``backbone`` (every key matched, or a ValueError naming the
    file); returns a one-line description."""
    params, tensors = _load_check(Path(path), backbone, layout)
    return (f"{path}: {backbone} ({layout} layout), {tensors} tensors, {params / 1e6:.1f} M params, "
            "every key matched")


def add_parser(subparsers) -> None:
    """Add the ``weights`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "weights", help="ImageNet weights for a backbone, in our key layout",
        description="Download (or read with --from) the ImageNet weights the authors' code starts from and "
                    "write them as <out>/<name>_imagenet.pth with a .json sidecar, checked by loading them.")
    p.add_argument("name", metavar="NAME", help=f"the backbone: {', '.join(NAMES)}, or timm/<model> with --from "
                   "(timm's own file, e.g. the hub's model.safetensors)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source_file", metavar="FILE",
                        help="convert this local file instead of downloading (its key layout is detected)")
    source.add_argument("--mirror", metavar="URL_OR_DIR",
                        help="take the same file name from this folder or URL base (no internet)")
    source.add_argument("--check", action="store_true",
                        help="verify an existing output (file, sidecar, load); exit 0 or 2")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--dry-run", action="store_true", help="say what would be downloaded/converted; write nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The ``weights`` subcommand; returns the exit status (0, or 2 with one line on stderr)."""
    try:
        if args.name not in NAMES and not args.name.startswith(TIMM):
            raise WeightsError(f"unknown backbone {args.name!r}; one of {', '.join(NAMES)}, or timm/<model>")
        if args.name.startswith(TIMM) and not (args.source_file or args.check):
            raise WeightsError(f"{args.name}: give timm's weights file with --from (e.g. model.safetensors from "
                               "the Hugging Face hub page of the model); nothing here downloads timm weights")
        if args.check:
            if args.dry_run:
                raise WeightsError("--check and --dry-run: give one")
            return _check(args.name, weights_path(args.name, args.out))
        if args.source_file:
            return _from_file(args.name, Path(args.source_file), weights_path(args.name, args.out), args.dry_run)
        return _download(args.name, args.mirror, weights_path(args.name, args.out), args.dry_run)
    except (ValueError, OSError) as e:  # our messages name the file or URL; no traceback for a user error
        print(f"harness.prepare: error: {e}", file=sys.stderr)
        return 2


# --- the three ways in ---------------------------------------------------------------------------

def _from_file(name: str, file: Path, out: Path, dry_run: bool) -> int:
    file = file.expanduser().resolve()
    fmt = _detect(name, _read(file), file)
    if file.name in KNOWN_FILES:
        # An official file under its own name: its name says what its sha256 starts with.
        _check_prefix(file, _name_prefix(file.name), file.name)
    if dry_run:
        print(f"would convert {file} ({fmt.label}) -> {out} and {sidecar_path(out)}")
        return 0
    print(f"{file}: {fmt.label} (format {fmt.name})")
    _convert(name, file, str(file), _sha256(file), fmt, out)
    return 0


def _download(name: str, mirror: str | None, out: Path, dry_run: bool) -> int:
    source = SOURCES[name]
    url = _url(source, mirror)
    if dry_run:
        print(f"would download {url} (sha256 prefix {source.sha256_prefix}), convert it and write {out} "
              f"and {sidecar_path(out)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="gsf-weights-") as tmp:
        file = Path(tmp) / source.filename
        print(f"downloading {url}")
        _fetch(url, file, source.sha256_prefix)
        sha = _sha256(file)
        print(f"sha256 {sha}  {source.filename} (pinned prefix {source.sha256_prefix}: ok)")
        fmt = _detect(name, _read(file), url)
        print(f"{source.filename}: {fmt.label} (format {fmt.name})")
        _convert(name, file, url, sha, fmt, out)
    return 0


def _check(name: str, path: Path) -> int:
    if not path.is_file():
        raise WeightsError(f"{path}: not found; write it with: python -m harness.prepare weights {name}"
                           + (f" --out {path.parent}" if path.parent != Path(DEFAULT_OUT) else ""))
    side = read_sidecar(path)
    if side is None:
        raise WeightsError(f"{sidecar_path(path)}: no sidecar beside {path.name}; re-run "
                           f"python -m harness.prepare weights {name}")
    if side.get("backbone") != name:
        raise WeightsError(f"{sidecar_path(path)}: written for backbone {side.get('backbone')!r}, not {name!r}")
    sha = _sha256(path)
    if sha != side.get("sha256"):
        raise WeightsError(f"{path}: sha256 {sha} is not the {side.get('sha256')} its sidecar recorded "
                           "(changed or corrupted since it was written)")
    layout = side.get("layout", "paper")
    print(f"ok {verify(path, name, layout)}; {_settings(name, layout, side.get('normalize', ''))}")
    return 0


# --- download ------------------------------------------------------------------------------------

def _url(source: Source, mirror: str | None) -> str:
    """The URL to fetch: the official one, or the same file name under ``mirror`` (a URL base or a folder)."""
    if mirror is None:
        return source.url
    if "://" in mirror:
        return f"{mirror.rstrip('/')}/{source.filename}"
    file = Path(mirror).expanduser().resolve() / source.filename
    if not file.is_file():
        raise WeightsError(f"{file}: not found in the mirror folder {mirror}")
    return file.as_uri()


def _fetch(url: str, dst: Path, prefix: str) -> None:
    """Download ``url`` to ``dst`` with torch.hub (progress on stderr), checking the sha256 prefix."""
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix, progress=True)
    except RuntimeError as e:
        if "invalid hash value" not in str(e):
            raise WeightsError(f"{url}: download failed: {e}") from None
        got = re.search(r'got "([0-9a-f]+)"', str(e))  # torch.hub has deleted the file by now
        raise WeightsError(f"{url}: sha256 mismatch for {dst.name}: expected prefix {prefix}, got "
                           f"{got.group(1) if got else str(e)}; nothing written") from None
    except (OSError, ValueError) as e:  # URLError/HTTPError are OSErrors; a malformed URL a ValueError
        raise WeightsError(f"{url}: cannot download: {getattr(e, 'reason', None) or e}") from None


def _name_prefix(filename: str) -> str:
    match = torch.hub.HASH_REGEX.search(filename)
    return match.group(1) if match else ""


def _check_prefix(file: Path, prefix: str, what: str) -> None:
    sha = _sha256(file)
    if not sha.startswith(prefix):
        raise WeightsError(f"{file}: sha256 mismatch for {what}: expected prefix {prefix}, got {sha}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- detection, conversion, the load check -------------------------------------------------------

def _read(path: Path) -> dict[str, torch.Tensor]:
    from gsf.backbones.weights import read_state_dict

    return read_state_dict(path, "weights")


def _detect(name: str, state: dict, where) -> Format:
    """The known layout ``state`` is in, or an error naming the file and its first keys."""
    if name.startswith(TIMM):
        return _timm_format(name, where)
    for fmt in FORMATS[name]:
        if fmt.matches(state):
            return fmt
    known = "; ".join(f.label for f in FORMATS[name])
    raise WeightsError(f"{where}: not a {name} state dict in a known layout ({known}); "
                       f"its first keys: {list(state)[:4]}")


def _build(backbone: str, layout: str, pretrained: Path) -> torch.nn.Module:
    """The plain backbone with ``pretrained`` loaded by its own loader (what a run does)."""
    from gsf.registry import get_backbone

    entry = get_backbone(backbone)
    kwargs = {"pretrained": str(pretrained)}
    if entry.options is None or "layout" in entry.options:
        kwargs["layout"] = layout
    try:
        return entry.build(None, placement=entry.default_placement, **kwargs)
    except FileNotFoundError:
        raise WeightsError(f"{pretrained}: not found") from None
    except (ValueError, RuntimeError) as e:  # the loaders name the file; say it where they might not
        message = str(e).strip().splitlines()[0]
        raise WeightsError(message if str(pretrained) in message else f"{pretrained}: {message}") from None


def _load_check(path: Path, backbone: str, layout: str) -> tuple[int, int]:
    """Build ``backbone`` from ``path`` (the loader matches every key or raises); when the file is
    in the backbone's own keys, also every loaded value must be the file's. (params, tensors)."""
    model = _build(backbone, layout, path)
    state, own = _read(path), model.state_dict()
    if state.keys() <= own.keys():
        differ = [k for k, v in state.items() if v.shape == own[k].shape and not torch.equal(v, own[k])]
        if differ:
            raise WeightsError(f"{path}: {len(differ)} tensors load with other values, e.g. {differ[:3]}")
    return sum(p.numel() for p in model.parameters()), len(state)


def _convert(name: str, file: Path, source: str, source_sha: str, fmt: Format, out: Path) -> None:
    """Write ``out`` and its sidecar from ``file``: built, saved, loaded back, then renamed into place."""
    model = _build(name, fmt.layout, file)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Temporary names in the output folder, renamed only once checked: a stopped or failed
    # conversion never leaves a file under the final name.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    tmp_side = out.with_name(f".{sidecar_path(out).name}.{os.getpid()}.partial")
    try:
        # A timm backbone is wrapped (TimmFeatures.net); its loader reads timm's own keys.
        torch.save(getattr(model, "net", model).state_dict() if name.startswith(TIMM) else model.state_dict(), tmp)
        params, _ = _load_check(tmp, name, fmt.layout)
        side = {"backbone": name, "layout": fmt.layout, "layouts": list(LAYOUTS_FITTED.get(name, (fmt.layout,))),
                "normalize": fmt.normalize, "source": source, "source_sha256": source_sha, "sha256": _sha256(tmp),
                "format": fmt.name}
        tmp_side.write_text(json.dumps(side, indent=2) + "\n")
        os.replace(tmp, out)
        os.replace(tmp_side, sidecar_path(out))
    finally:
        for leftover in (tmp, tmp_side):
            leftover.unlink(missing_ok=True)
    print(f"wrote {out} ({fmt.label}, {params / 1e6:.1f} M params, every key matched); "
          f"{_settings(name, fmt.layout, fmt.normalize)}")


def _settings(name: str, layout: str, normalize: str) -> str:
    """What a spec using the file must say."""
    text = f"set data.normalize: {normalize} ({NORMALIZE.get(normalize, '?')})"
    return text + (f" and model.layout: {layout}" if name not in LAYOUTS_FITTED and not name.startswith(TIMM) else "")


def _timm_format(name: str, where) -> Format:
    """timm's own file for ``timm/<model>``: its keys are the model's; the input it expects is the
    model's ``pretrained_cfg`` mean and std, which must be one ``data.normalize`` offers."""
    from gsf.backbones.timm_models import create

    cfg = getattr(create(name.removeprefix(TIMM)), "pretrained_cfg", {}) or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if (mean, std) != (IMAGENET_MEAN, IMAGENET_STD):
        raise WeightsError(f"{where}: {name}'s weights expect mean {mean} and std {std}; data.normalize offers the "
                           f"ImageNet {IMAGENET_MEAN} / {IMAGENET_STD} (imagenet) or caffe_bgr only")
    return Format("timm", f"timm {name.removeprefix(TIMM)}", "paper", "imagenet", lambda s: True)
