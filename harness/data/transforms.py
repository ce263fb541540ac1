"""TSN segment sampling and the spatial views of the training and testing protocols.

Sampling works on positions in [0, 1) of a video's duration, so frame folders, video files and
the synthetic renderer (which draws a frame at any time) share one sampler.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255  # ImageNet, 0-255 scale
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
CAFFE_BGR_MEAN = torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)  # B, G, R
SCALES = (1.0, 0.875, 0.75, 0.66)  # TSN multi-scale crop


def train_positions(num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """One random position inside each of ``num_segments`` equal segments (TSN training)."""
    return (np.arange(num_segments) + rng.random(num_segments)) / num_segments


def test_positions(num_segments: int, clip: int = 0, num_clips: int = 1) -> np.ndarray:
    """Deterministic positions: clip c of n sits at offset (c+1)/(n+1) of every segment, so one
    clip takes the segment centres and two clips take the 1/3 and 2/3 points."""
    return (np.arange(num_segments) + (clip + 1) / (num_clips + 1)) / num_segments


def frame_indices(positions: np.ndarray, num_frames: int) -> np.ndarray:
    """0-based frame indices of ``positions`` in a video of ``num_frames`` frames; a video
    shorter than the clip repeats frames."""
    return np.minimum((np.asarray(positions) * num_frames).astype(np.int64), num_frames - 1)


def to_float(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> float, still on the 0-255 scale."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Frames on the 0-255 scale (resampled: fractional, and antialiasing may overshoot) -> uint8;
    frames resampled in uint8 (``_resize``) are returned as they are."""
    if x.dtype == torch.uint8:
        return x
    return x.round().clamp_(0, 255).to(torch.uint8)


def normalise(x: torch.Tensor, mode: str = "imagenet") -> torch.Tensor:
    """RGB frames (..., 3, H, W) on the 0-255 scale -> the model's input, on ``x``'s device:
    "imagenet" (mean/std of RGB / 255) or "caffe_bgr" (channels reversed to BGR, minus the Caffe
    mean, std 1)."""
    if mode == "caffe_bgr":
        return x.flip(-3) - CAFFE_BGR_MEAN.to(x.device)
    return (x - MEAN.to(x.device)) / STD.to(x.device)


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased. Float frames (videos, the synthetic clips, the reference JPEG path)
    resample in float. uint8 frames (the fast JPEG path) resample in uint8 with torch's
    fixed-point CPU kernel, which torchvision's ``resize`` reaches on the CPU (and emulates in
    float, rounded, where torch lacks it, as on CUDA): for an SS-V1 training clip (8 crops of
    100x100 -> 224x224) 0.54 ms against 4.8 ms for float conversion, float resize and rounding,
    with the float path's pixels to within 1 level (docs/data_speed.md). That kernel is fast on
    channels-last frames (2.5x slower on NCHW-contiguous ones), the layout a decoder writes, so
    the fast path keeps frames that way."""
    if x.shape[-2:] == (height, width):
        return x
    if x.dtype == torch.uint8:
        from torchvision.transforms.v2.functional import resize  # imported where the fast JPEG path needs it

        return resize(x, [height, width], antialias=True)
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def resize_short(x: torch.Tensor, size: int) -> torch.Tensor:
    """Short side to ``size``, aspect kept."""
    h, w = x.shape[-2:]
    if h <= w:
        return _resize(x, size, max(size, round(w * size / h)))
    return _resize(x, max(size, round(h * size / w)), size)


def multiscale_crop(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """TSN's GroupMultiScaleCrop: crop sides are scales of the short side (width and height at
    most one scale step apart), placed at one of 13 fixed offsets, resized to size x size.
    The same crop for every frame of the clip."""
    h, w = x.shape[-2:]
    base = min(h, w)
    sides = [int(base * s) for s in SCALES]
    pairs = [(i, j) for i in range(len(sides)) for j in range(len(sides)) if abs(i - j) <= 1]
    i, j = pairs[rng.integers(len(pairs))]
    ch, cw = sides[i], sides[j]
    hs, ws = (h - ch) // 4, (w - cw) // 4
    offsets = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2),
               (1, 1), (1, 3), (3, 1), (3, 3)]
    oy, ox = offsets[rng.integers(len(offsets))]
    y, x0 = oy * hs, ox * ws
    return _resize(x[..., y:y + ch, x0:x0 + cw], size, size)


def crops(x: torch.Tensor, size: int, count: int) -> list[torch.Tensor]:
    """``count`` (1 or 3) crops of size x size: the centre, or start/centre/end along the long side."""
    h, w = x.shape[-2:]
    size_h, size_w = min(size, h), min(size, w)
    cy, cx = (h - size_h) // 2, (w - size_w) // 2
    if count == 1:
        starts = [(cy, cx)]
    elif w >= h:
        starts = [(cy, 0), (cy, cx), (cy, w - size_w)]
    else:
        starts = [(0, cx), (cy, cx), (h - size_h, cx)]
    out = [x[..., y:y + size_h, x0:x0 + size_w] for y, x0 in starts]
    return [_resize(c, size, size) for c in out]  # frames smaller than the crop are upscaled
