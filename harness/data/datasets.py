"""Datasets: list files, frame folders, video files and the synthetic benchmark behind one
``ClipDataset`` that does TSN sampling and the protocol's views.

Nothing is opened in ``__init__`` beyond validation, so datasets pickle into DataLoader workers.
``check_data`` is the up-front check a sweep's driver runs once per data config: lists, categories,
folders and their frame counts (a directory listing each), without decoding anything.
Every read error surfaces as ``DataError`` with the path: no sample is ever silently replaced.
"""
from __future__ import annotations

import bisect
import functools
import io
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import transforms as tf
from .config import DIRECTIONAL, DataConfig, DataError
from .synthetic import CLASS_NAMES, MIRROR, render_clip


# --- list files ------------------------------------------------------------------------------

def read_categories(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: category file not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path}: category file is empty")
    return names


def read_list(path: Path, cfg: DataConfig, num_classes: int, frames: bool,
              template: str | None = None) -> list[tuple[Path, int, int]]:
    """Parse and check a list file -> [(folder or video path, frame count or 0, label)]. With
    ``template`` (frame lists), each folder's frames are counted and must match the list."""
    if not path.is_file():
        raise DataError(f"{path}: list file not found")
    fields = 3 if frames else 2
    form = "folder num_frames label" if frames else "path label"
    samples, missing, wrong = [], [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, fields - 1)  # a video path may contain spaces
        try:
            if len(parts) != fields:
                raise ValueError
            label, count = int(parts[-1]), int(parts[1]) if frames else 0
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected '{form}', got {line.strip()!r}") from None
        if frames and count < 1:
            raise DataError(f"{path}:{lineno}: num_frames must be >= 1, got {count}")
        if not 0 <= label < num_classes:
            raise DataError(f"{path}:{lineno}: label {label} is outside [0, {num_classes}) "
                            f"({num_classes} classes in {cfg.resolve(cfg.categories)})")
        item = cfg.resolve(Path(parts[0]))
        if not (item.is_dir() if frames else item.is_file()):
            missing.append((item, lineno))
        elif not frames and item.stat().st_size == 0:
            raise DataError(f"{item}: video file is empty (listed in {path}:{lineno})")
        elif template is not None and (held := count_frames(item, template)) != count:
            wrong.append(_count_mismatch(item, template, count, held, f"{path}:{lineno}"))
        samples.append((item, count, label))
    if not samples:
        raise DataError(f"{path}: list is empty")
    if missing:
        item, lineno = missing[0]
        kind = "frame folder" if frames else "video file"
        more = f"; {len(missing)} of {len(samples)} listed entries are missing" if len(missing) > 1 else ""
        raise DataError(f"{item}: {kind} not found (listed in {path}:{lineno}){more}")
    if wrong:
        more = f"; {len(wrong)} of {len(samples)} listed counts are wrong" if len(wrong) > 1 else ""
        raise DataError(wrong[0] + more)
    return samples


def count_frames(folder: Path, template: str) -> int:
    """How many frames 1, 2, ... ``folder`` holds: one directory listing, nothing decoded."""
    names = set(os.listdir(folder))
    n = 0
    while template.format(n + 1) in names:
        n += 1
    return n


def _count_mismatch(folder: Path, template: str, listed: int, held: int, where: str) -> str:
    if held < listed:
        return (f"{folder / template.format(held + 1)}: frame not found: {folder} is listed with {listed} frames "
                f"({where}) but holds {template.format(1)} to {template.format(held)} only" if held else
                f"{folder / template.format(1)}: frame not found: {folder} is listed with {listed} frames ({where}) "
                f"but holds no {template.format(1)}")
    return (f"{folder}: listed with {listed} frames ({where}) but holds {held}; a clip would sample only the "
            f"first {listed}: fix the list")


def check_data(cfg: DataConfig, num_classes: int | None = None) -> None:
    """Everything about ``cfg``'s data that is cheap to check before training: categories (and
    ``num_classes``, the model's), the flip label map, both lists, every listed folder or video,
    and each folder's frame count against its list. Decoding errors surface when a clip is read."""
    if cfg.synthetic:
        if num_classes is not None and num_classes != cfg.num_classes:
            raise DataError(f"model.num_classes is {num_classes} but data.num_classes is {cfg.num_classes}")
        return
    categories = cfg.resolve(cfg.categories)
    names = read_categories(categories)
    if num_classes is not None and num_classes != len(names):
        raise DataError(f"{categories}: {len(names)} classes, but model.num_classes is {num_classes}")
    flip_map(cfg, names)
    for p in (cfg.train_list, cfg.val_list):
        read_list(cfg.resolve(p), cfg, len(names), cfg.frames, cfg.template if cfg.frames else None)


def flip_map(cfg: DataConfig, categories: list[str]) -> dict[int, int]:
    """The label swap a horizontal flip needs, both directions, checked against the classes."""
    spec, source = cfg.flip_label_map, "data.flip_label_map"
    if spec is None:
        if cfg.flip and cfg.dataset in DIRECTIONAL:
            raise DataError(
                f"{cfg.resolve(cfg.categories)}: data.flip is on for {cfg.dataset}, whose classes name "
                "left/right directions, so a plain flip would corrupt labels; set data.flip_label_map "
                "(label pairs, a JSON file of pairs, or 'auto') or data.flip: false")
        return {}
    if spec == "auto":
        index = {name.lower(): i for i, name in enumerate(categories)}
        swap = {"left": "right", "right": "left"}
        pairs = []
        for i, name in enumerate(categories):
            mirrored = re.sub(r"\b(left|right)\b", lambda m: swap[m.group(1)], name.lower())
            if mirrored != name.lower() and mirrored in index:
                pairs.append((i, index[mirrored]))
    elif isinstance(spec, str):
        source = str(cfg.resolve(Path(spec)))
        try:
            loaded = json.loads(Path(source).read_text())
            pairs = [(int(a), int(b)) for a, b in (loaded.items() if isinstance(loaded, dict) else loaded)]
        except FileNotFoundError:
            raise DataError(f"{source}: flip label map file not found") from None
        except (ValueError, TypeError) as exc:
            raise DataError(f"{source}: flip label map must be JSON {{label: label}} or "
                            f"[[label, label], ...]: {exc}") from None
    else:
        pairs = list(spec.items()) if isinstance(spec, dict) else list(spec)
    mapping: dict[int, int] = {}
    for a, b in pairs:
        for x, y in ((a, b), (b, a)):
            if not (0 <= x < len(categories) and 0 <= y < len(categories)):
                raise DataError(f"{source}: pair ({a}, {b}) is outside [0, {len(categories)})")
            if mapping.setdefault(x, y) != y:
                raise DataError(f"{source}: label {x} is paired with both {mapping[x]} and {y}")
    return mapping


# --- sources: where the frames of one sample come from; read() gives uint8 (T, 3, H, W) per clip

class Listed:
    """Samples from a list file: [(folder or video path, frame count or 0, label)]."""

    def __init__(self, samples):
        self.samples = samples

    def label(self, i: int) -> int:
        return self.samples[i][2]


class FrameFolders(Listed):
    """Something-Something style: one JPEG per frame, numbered from 1.

    ``fast=True`` (the default) reads a clip's files as bytes and decodes them with
    ``decoder`` (``JPEG_DECODERS``; default: torchvision's where it loads, else PIL's) into
    one uint8 tensor (T, 3, H, W) laid out channels-last, which ``ClipDataset`` crops and resizes
    in uint8. ``fast=False`` is the loader as it was before (``read_jpegs_reference``: PIL opens
    each file, frames are resampled in float): the reference that tests pin the fast path to, and
    the benchmark's baseline. ``decode="cuda"`` (``data.decode``) decodes with nvjpeg on the
    current CUDA device, in the process that reads the clip (``data.workers`` is 0 then).

    Anything the fast decoders do not read (a missing, empty, truncated or garbled file, frames
    of two sizes, a PNG named .jpg) goes to the reference reader for that clip: it reads the
    file as before, or raises the ``DataError`` naming the file that it always raised."""

    def __init__(self, samples, template: str, fast: bool = True, decode: str = "cpu", decoder: str | None = None):
        super().__init__(samples)
        self.template, self.fast, self.decode = template, fast, decode
        self.decoder = decoder or default_jpeg_decoder()
        if self.decoder not in JPEG_DECODERS:
            raise ValueError(f"decoder must be one of {sorted(JPEG_DECODERS)}, got {self.decoder!r}")

    def read(self, i: int, clips: list[np.ndarray]) -> list[np.ndarray | torch.Tensor]:
        folder, count, _ = self.samples[i]
        out = []
        for positions in clips:
            files = [folder / self.template.format(int(k) + 1) for k in tf.frame_indices(positions, count)]
            frames = None
            if self.fast or self.decode == "cuda":
                decode = decode_jpegs_cuda if self.decode == "cuda" else JPEG_DECODERS[self.decoder]
                frames = read_jpegs(files, decode)
            out.append(frames if frames is not None else read_jpegs_reference(folder, count, files))
        return out


def read_jpegs_reference(folder: Path, count: int, files: list[Path]) -> np.ndarray:
    """uint8 (T, 3, H, W) of ``files`` (frames of ``folder``, listed with ``count``), the way the
    loader read them before #20: each opened with PIL, converted to RGB, stacked."""
    frames = []
    for file in files:
        try:
            with Image.open(file) as img:
                frames.append(np.asarray(img.convert("RGB")))
        except FileNotFoundError:
            raise DataError(f"{file}: frame not found ({folder} is listed with {count} frames)") from None
        except OSError as exc:  # PIL's UnidentifiedImageError and truncated files
            raise DataError(f"{file}: cannot read frame: {exc}") from None
        if frames[-1].shape != frames[0].shape:
            (h0, w0), (h, w) = frames[0].shape[:2], frames[-1].shape[:2]
            raise DataError(f"{file}: frames differ in size: {w}x{h} here, {w0}x{h0} in {files[0].name}")
    return np.stack(frames).transpose(0, 3, 1, 2)


def read_jpegs(files: list[Path], decode) -> torch.Tensor | None:
    """uint8 (T, 3, H, W) of ``files`` through ``decode`` (each distinct file read and decoded
    once: a folder shorter than the clip repeats frames); None where a file is missing, a decoder
    fails or the frames differ in size, for the reference reader to read or to name the fault."""
    distinct = list(dict.fromkeys(files))
    try:
        # Each file in one read (np.fromfile): the decoders take bytes in memory.
        datas = [np.fromfile(file, dtype=np.uint8) for file in distinct]
        frames = decode(datas)
    except (OSError, RuntimeError, ValueError):
        return None
    if any(f.shape != frames[0].shape for f in frames):
        return None
    if len(distinct) < len(files):
        where = {file: j for j, file in enumerate(distinct)}
        frames = [frames[where[file]] for file in files]
    # Stacked as (T, H, W, 3) and viewed as (T, 3, H, W): channels-last, as decoders write pixels,
    # and the layout in which the uint8 resize is fast (transforms._resize).
    return torch.stack([f.permute(1, 2, 0) for f in frames]).permute(0, 3, 1, 2)


def _decode_torchvision(datas: list[np.ndarray]) -> list[torch.Tensor]:
    """libjpeg-turbo through torchvision.io.decode_jpeg: (3, H, W) views of (H, W, 3) buffers."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # deprecated in torchvision 0.29 for TorchCodec; PIL is the fall-back
        warnings.simplefilter("ignore", DeprecationWarning)
        frames = decode_jpeg([torch.from_numpy(d) for d in datas], mode=ImageReadMode.RGB)
    return frames


def _decode_pil(datas: list[np.ndarray]) -> list[torch.Tensor]:
    """PIL, from the bytes in memory: (3, H, W) views of (H, W, 3) arrays."""
    frames = []
    for data in datas:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
            frames.append(torch.from_numpy(np.array(img if img.mode == "RGB" else img.convert("RGB"))).permute(2, 0, 1))
    return frames


def decode_jpegs_cuda(datas: list[np.ndarray]) -> list[torch.Tensor]:
    """nvjpeg on the current CUDA device, one batch per clip (``data.decode: cuda``)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg([torch.from_numpy(d) for d in datas], mode=ImageReadMode.RGB, device="cuda")


JPEG_DECODERS = {"torchvision": _decode_torchvision, "pil": _decode_pil}


@functools.lru_cache(maxsize=None)
def default_jpeg_decoder() -> str:
    """"torchvision" where its JPEG decoder loads and reads a JPEG as PIL does, else "pil"."""
    probe = np.frombuffer(_tiny_jpeg(), np.uint8).copy()
    try:
        got = _decode_torchvision([probe])[0]
    except Exception:  # torchvision without its image library, or without decode_jpeg at all
        return "pil"
    return "torchvision" if torch.equal(got, _decode_pil([probe])[0]) else "pil"


@functools.lru_cache(maxsize=None)
def _tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    pixels = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def require_cuda_decode() -> None:
    """Raise unless ``data.decode: cuda`` can work here: a CUDA device, and torchvision's nvjpeg
    decoder on it (tried on a tiny JPEG, so a trial fails when its datasets are built, not
    at its first batch)."""
    if not torch.cuda.is_available():
        raise DataError("data.decode: cuda needs a CUDA device; torch sees none here "
                        "(torch.cuda.is_available() is False): set data.decode: cpu, or run the trial on a GPU")
    try:
        decode_jpegs_cuda([np.frombuffer(_tiny_jpeg(), np.uint8).copy()])
    except Exception as exc:
        raise DataError(f"data.decode: cuda needs torchvision's nvjpeg decoder, which failed here: {exc}; "
                        "set data.decode: cpu") from None


class VideoFiles(Listed):
    """Kinetics / Diving48 style: one video file per sample, decoded with PyAV.

    Frame positions come from the container's frame count (without one, as in Matroska, from the
    frames the video holds). ``seek=True`` (the default) decodes only what a clip needs
    (``decode_seeking``); ``seek=False`` decodes every frame from the first up to the last one
    needed (``decode_sequential``, the reference: a test pins the two to the same pixels)."""

    def __init__(self, samples, seek: bool = True):
        try:  # imported where videos are read: frame folders and the synthetic clips need no PyAV
            import av  # noqa: F401
        except ImportError:
            raise DataError(f"{samples[0][0]}: video datasets need PyAV, which this environment lacks "
                            "(pip install av)") from None
        super().__init__(samples)
        self.seek = seek

    def read(self, i: int, clips: list[np.ndarray]) -> list[torch.Tensor]:
        path = self.samples[i][0]
        frames = decode_seeking(path, clips) if self.seek else None
        # Anything irregular (a frame the file lacks, damage, a seek that lands elsewhere) goes to
        # the sequential decoder: it reads the file, or says what is wrong with it.
        if frames is None:
            frames = decode_sequential(path, clips)
        # uint8 tensors in the decoder's channels-last layout, resampled in uint8 as JPEG frames
        # are (transforms._resize): 1.4x the training clips/s of the float path on a 340x256 mp4.
        return [torch.from_numpy(f.transpose(0, 2, 3, 1)).permute(0, 3, 1, 2) for f in frames]


def decode_sequential(path: Path, clips: list[np.ndarray]) -> list[np.ndarray]:
    """uint8 (T, 3, H, W) per clip (an array of positions): every frame decoded from the first up
    to the last one a clip needs."""
    import av

    try:
        with open_video(path) as container:
            stream = container.streams.video[0]
            claimed = stream.frames
            last = max(int(tf.frame_indices(p, claimed).max()) for p in clips) if claimed > 0 else None
            frames = []
            try:
                for frame in container.decode(stream):
                    frames.append(frame)
                    if last is not None and len(frames) > last:
                        break
            except av.FFmpegError as exc:
                raise DataError(decode_failure(path, len(frames), claimed, exc)) from None
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: cannot decode video: {exc}") from None
    check_decoded(path, len(frames), claimed, last)
    n = claimed if claimed > 0 else len(frames)
    return [np.stack([frames[k].to_ndarray(format="rgb24") for k in tf.frame_indices(p, n)]).transpose(0, 3, 1, 2)
            for p in clips]


def decode_seeking(path: Path, clips: list[np.ndarray]) -> list[np.ndarray] | None:
    """What ``decode_sequential`` returns, for less decoding; None when the file is anything but
    regular. One pass over the packets (nothing decoded) gives each frame's time and the
    keyframes; a video written by ``harness.prepare`` says them in its note (``prepared_layout``). Decoding starts at the keyframe before the first frame needed and goes on while
    the next needed frame is nearer than its own keyframe, else seeks there; it stops once the
    last needed frame is out. Frames no other frame refers to are skipped unless needed, and the
    frames kept share one colour conversion."""
    import av

    try:
        with open_video(path) as container:
            stream = container.streams.video[0]
            layout = prepared_layout(container, stream)
            if layout is None:
                packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
                times = sorted(t for t, _ in packets if t is not None)  # frame k is shown at times[k]
                keys = sorted(t for t, key in packets if key and t is not None)
                if len(times) != len(packets) or len(set(times)) != len(times):
                    return None
            else:
                times, keys = layout
            n = stream.frames if stream.frames > 0 else len(times)
            indices = [tf.frame_indices(p, n) for p in clips]
            if not keys or max(int(k.max()) for k in indices) >= len(times):
                return None
            targets = sorted({times[k] for ks in indices for k in ks})
            if keys[0] > targets[0]:
                return None
            out = _decode_at(container, stream, targets, keys)
    except (av.FFmpegError, OSError, ValueError, IndexError):
        return None
    if out is None:
        return None
    return [np.stack([out[times[k]] for k in ks]).transpose(0, 3, 1, 2) for ks in indices]


# What ``harness.prepare --keep-videos`` writes in a video's ``comment`` (and nothing else does):
# H.264 at a constant frame rate, no B-frames, a keyframe every G frames exactly (no scene cuts).
PREPARED_NOTE = "harness.prepare gop={}"


def prepared_layout(container, stream) -> tuple[list[int], list[int]] | None:
    """(frame times, keyframe times) of a video that carries ``PREPARED_NOTE``, worked out from its
    frame count, rate and GOP instead of a pass over its packets (~1.5 ms, a tenth of a prepared
    clip); None for any other video. A note that does not hold costs speed, not frames:
    ``_decode_at`` knows frames by their times, and a time it does not meet sends the clip to the
    sequential decoder."""
    match = re.fullmatch(PREPARED_NOTE.format(r"(\d+)"), container.metadata.get("comment", ""))
    if match is None or stream.frames <= 0 or not stream.average_rate or not stream.time_base:
        return None
    step = 1 / (stream.average_rate * stream.time_base)  # a frame's duration in the stream's time base
    if step.denominator != 1 or int(match[1]) < 1:
        return None
    times = [(stream.start_time or 0) + k * int(step) for k in range(stream.frames)]
    return times, times[::int(match[1])]


def _decode_at(container, stream, targets: list[int], keys: list[int]) -> dict[int, np.ndarray] | None:
    """{time: rgb frame} for the frame times ``targets`` (sorted), given the keyframe times."""
    from av.video.reformatter import VideoReformatter

    def keyframe_before(t: int) -> int:
        return keys[bisect.bisect_right(keys, t) - 1]

    needed, out = set(targets), {}
    rgb = VideoReformatter()  # one conversion context for all frames: a frame's own is built anew each time
    j = 0  # targets[:j] are out
    last = None
    while j < len(targets):
        container.seek(keyframe_before(targets[j]), stream=stream, backward=True, any_frame=False)
        before, last = last, None  # time of the last frame out before / since the seek
        for packet in container.demux(stream):
            # A packet's pts is its own frame's; the final flush packet has none.
            keep = packet.pts is None or packet.pts in needed
            stream.codec_context.skip_frame = "DEFAULT" if keep else "NONREF"
            for frame in packet.decode():
                if last is None and frame.pts > targets[j]:
                    return None  # the seek landed past the frame
                if last is None and before is not None and frame.pts <= before:
                    return None  # it landed where the last one went: the keyframes are not where they were said to be
                last = frame.pts
                if last in needed:
                    out[last] = rgb.reformat(frame, format="rgb24").to_ndarray()
            while j < len(targets) and targets[j] in out:
                j += 1
            if j == len(targets):
                break
            if last is None:
                continue
            if last >= targets[j]:
                return None  # the decoder went past a needed frame without producing it
            if keyframe_before(targets[j]) > last:
                break  # the next frame is nearer from its own keyframe: seek there
        else:
            return None  # the file ended first
    return out


# Checks any video decoder here calls (a seeking one too): nothing decoded is ever stretched over
# frames that are not there, and a decoder that has to conceal damage fails instead.

def open_video(path: Path) -> "av.container.InputContainer":
    """``path`` opened for decoding, its video decoder set to raise on damaged data rather than
    conceal it (FFmpeg's default paints over a garbled block and carries on). A file without a
    video stream is a ``DataError`` saying so."""
    import av

    container = av.open(str(path))
    if not container.streams.video:  # an audio-only file, say: the decoders read streams.video[0]
        kinds = sorted({s.type for s in container.streams})
        container.close()
        raise DataError(f"{path}: no video stream" + (f" (only {', '.join(kinds)})" if kinds else ""))
    for stream in container.streams.video:
        stream.codec_context.options = {"err_detect": "explode"}
    return container


def decode_failure(path: Path, decoded: int, claimed: int, exc: Exception) -> str:
    total = f" of the {claimed} the container claims" if claimed > 0 else ""
    return f"{path}: decoding failed at frame {decoded + 1}{total} ({exc}): the file is truncated or corrupt"


def check_decoded(path: Path, decoded: int, claimed: int, last_needed: int | None) -> None:
    """Raise unless the decoder produced every frame up to ``last_needed`` (0-based)."""
    if decoded == 0:
        raise DataError(f"{path}: no video frames could be decoded"
                        + (f" (the container claims {claimed})" if claimed > 0 else ""))
    if last_needed is not None and decoded <= last_needed:
        raise DataError(f"{path}: decoded {decoded} frames but the container claims {claimed}, and the clip needs "
                        f"frame {last_needed + 1}: the file is truncated or corrupt")


class Synthetic:
    """The synthetic temporal benchmark: clip i rendered from (seed, split, i) at any times;
    labels cycle through the classes, so every class has the same number of clips."""

    def __init__(self, cfg: DataConfig, split: int, size: int):
        self.cfg, self.split, self.nuisance = cfg, split, cfg.nuisance
        self.samples = range(size)

    def label(self, i: int) -> int:
        return i % self.cfg.num_classes

    def read(self, i: int, clips: list[np.ndarray]) -> list[np.ndarray]:
        key = [self.cfg.seed, self.split, i]
        return [render_clip(self.label(i), key, p, self.cfg.frame_size, self.nuisance) for p in clips]


# --- the dataset ------------------------------------------------------------------------------

class ClipDataset(Dataset):
    """Train: ``(clip (T, 3, S, S) uint8, label)``; test: ``(views (V, T, 3, S, S) uint8, label)``
    with V = test_clips x test_crops, clip-major. Frames leave the loader as uint8 RGB, resized
    and cropped (rounded, as a resized JPEG would be): a quarter of float32's bytes through the
    loader's shared memory and over PCIe. ``transforms.normalise`` (``data.normalize``) makes them
    the model's input where the model runs (``harness.train.model_input``)."""

    def __init__(self, source, cfg: DataConfig, num_frames: int, train: bool, num_classes: int,
                 class_names: list[str], flip_labels: dict[int, int], seed: int = 0):
        self.source, self.cfg, self.num_frames, self.train = source, cfg, num_frames, train
        self.num_classes, self.class_names = num_classes, class_names
        self.flip_labels, self.seed = flip_labels, seed
        self.num_clips, self.num_crops = (1, 1) if train else cfg.views

    def __len__(self) -> int:
        return len(self.source.samples)

    def label(self, i: int) -> int:
        return self.source.label(i)

    def __getitem__(self, index: int | tuple[int, int]):
        """``index``: a sample, or (sample, draw) with the draw that seeds its augmentation."""
        i, draw = index if isinstance(index, tuple) else (index, None)
        if not 0 <= i < len(self):
            raise IndexError(i)
        label = self.label(i)
        if not self.train:
            clips = [tf.test_positions(self.num_frames, c, self.num_clips) for c in range(self.num_clips)]
            views = []
            for frames in self.source.read(i, clips):
                x = tf.resize_short(_frames(frames), self.cfg.resize_to)
                views += tf.crops(x, self.cfg.crop_size, self.num_crops)
            return _loaded(torch.stack(views)), label
        # Without a draw, augmentation draws from torch's RNG (seeded per DataLoader worker and
        # by torch.manual_seed); training passes draws made in one place (``AugmentedSampler``),
        # so a run's clips do not depend on how many workers loaded them.
        if draw is None:
            draw = int(torch.randint(2**62, ()))
        rng = np.random.default_rng([self.seed, i, draw])
        (frames,) = self.source.read(i, [tf.train_positions(self.num_frames, rng)])
        x = _frames(frames)
        if self.cfg.use_multiscale:
            x = tf.multiscale_crop(x, self.cfg.crop_size, rng)
        else:
            x = tf.crops(tf.resize_short(x, self.cfg.resize_to), self.cfg.crop_size, 1)[0]
        if self.cfg.flip and rng.random() < 0.5:
            x = x.flip(-1)
            label = self.flip_labels.get(label, label)
        return _loaded(x), label


def _frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A source's uint8 frames -> what the transforms resample: arrays (the synthetic clips, the
    reference JPEG reader) become float, as they always did, so their clips keep their pixels
    exactly; tensors (the fast JPEG path, on the CPU or, with data.decode: cuda, on the GPU, and
    decoded videos) stay uint8 and are resampled in uint8 (``transforms._resize``)."""
    return frames if isinstance(frames, torch.Tensor) else tf.to_float(frames)


def _loaded(x: torch.Tensor) -> torch.Tensor:
    """Resampled frames -> what the loader yields: uint8, contiguous (T, 3, H, W) in CPU memory,
    whichever path made them. The uint8 path's frames are channels-last until here; this copy
    (0.45 ms a training clip) would otherwise fall to the loader's collation, and a tensor laid out
    as before is no surprise to code that views it."""
    return tf.to_uint8(x).contiguous().cpu()


def build_datasets(cfg: DataConfig, num_frames: int = 8, seed: int = 0) -> tuple[ClipDataset, ClipDataset]:
    """(train, val) datasets for ``cfg``; lists are parsed and the listed folders and videos must
    exist. Frame counts against the folders are ``check_data``'s, run once per sweep by the driver.

    ``seed`` (the trial's) seeds train-time augmentation; the synthetic clips themselves come
    from ``cfg.seed``, so every trial of a sweep sees the same benchmark.
    """
    if num_frames < 1:
        raise DataError(f"num_frames must be >= 1, got {num_frames}")
    if cfg.synthetic:
        names = CLASS_NAMES[:cfg.num_classes]
        mirror = {a: b for a, b in MIRROR.items() if a < cfg.num_classes}
        sources = Synthetic(cfg, 0, cfg.train_size), Synthetic(cfg, 1, cfg.val_size)
    else:
        names = read_categories(cfg.resolve(cfg.categories))
        mirror = flip_map(cfg, names)
        lists = [read_list(cfg.resolve(p), cfg, len(names), cfg.frames) for p in (cfg.train_list, cfg.val_list)]
        if cfg.frames:
            if cfg.decode == "cuda":
                require_cuda_decode()
            sources = tuple(FrameFolders(samples, cfg.template, decode=cfg.decode) for samples in lists)
        else:
            sources = tuple(VideoFiles(samples) for samples in lists)
    return tuple(ClipDataset(src, cfg, num_frames, train, len(names), list(names), mirror, seed)
                 for src, train in zip(sources, (True, False)))
