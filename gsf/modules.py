"""Temporal modules that turn a 2D CNN into a video model.

Every module here maps frame features ``(N*T, C, H, W)`` to the same shape and never mixes
clips: frames of one clip are consecutive along the first axis (TSN layout).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GSF", "TemporalShift", "SpatioTemporalShift", "processed_channels"]


def processed_channels(channels: int, shift_ratio: float) -> int:
    """Channels a GSF with ``shift_ratio`` processes: the nearest even count, at least 2."""
    if not 0.0 < shift_ratio <= 1.0:
        raise ValueError(f"shift_ratio must be in (0, 1], got {shift_ratio}")
    return min(channels - channels % 2, max(2, 2 * round(channels * shift_ratio / 2)))


def _shift_forward(x: torch.Tensor) -> torch.Tensor:
    """Frame t receives frame t-1; frame 0 gets zeros. ``x`` is (N, T, ...)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def _shift_backward(x: torch.Tensor) -> torch.Tensor:
    """Frame t receives frame t+1; the last frame gets zeros. ``x`` is (N, T, ...)."""
    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)


class GSF(nn.Module):
    """Gate-Shift-Fuse (Sudhakaran et al., TPAMI 2023), equations (1)-(10).

    The first ``processed`` channels (``shift_ratio`` of them, an even count) are split into two
    groups. Each group is gated by a tanh plane from a 3x3x3 conv (preceded by BatchNorm + ReLU as
    in the authors' release), the gated part of group 1 is shifted forward in time and that of
    group 2 backward, and each group fuses its shifted part with its residual through per
    (channel, frame) weights from a 3x3 conv over the pooled [shifted; residual] pair.
    The other channels pass through untouched.

    ``gating``: "learned", or a fixed number (1: TSM-like shift, -1: TDN-like differencing,
    0: no temporal interaction). ``fusion``: "learned", or "sum" (GSM).
    ``channel_shuffle``: interleave the two groups' output channels, as the authors' release
    does; the paper's equations concatenate them (default).
    """

    def __init__(
        self,
        channels: int,
        num_frames: int,
        shift_ratio: float = 1.0,
        gating: str | float = "learned",
        fusion: str = "learned",
        channel_shuffle: bool = False,
    ):
        super().__init__()
        if gating != "learned" and not isinstance(gating, (int, float)):
            raise ValueError(f"gating must be 'learned' or a number, got {gating!r}")
        if fusion not in ("learned", "sum"):
            raise ValueError(f"fusion must be 'learned' or 'sum', got {fusion!r}")
        if channels < 2:
            raise ValueError(f"GSF needs at least 2 channels, got {channels}")
        self.channels = channels
        self.num_frames = num_frames
        self.shift_ratio = shift_ratio
        self.processed = processed_channels(channels, shift_ratio)
        self.gating = gating
        self.fusion = fusion
        self.channel_shuffle = channel_shuffle
        half = self.processed // 2
        if gating == "learned":
            # BatchNorm over (N, T, H, W) per channel: the statistics of the release's
            # BatchNorm3d on (N, C, T, H, W), computed in the frame layout without a permute.
            self.gate_norm = nn.BatchNorm2d(self.processed)
            # Two 1 x C/2 x 3 x 3 x 3 kernels (W_g1, W_g2), stored in Conv3d layout.
            self.gate_weight = nn.Parameter(torch.empty(2, half, 3, 3, 3))
            self.gate_bias = nn.Parameter(torch.zeros(2))
            # PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            bound = 1.0 / math.sqrt(half * 27)
            nn.init.uniform_(self.gate_weight, -bound, bound)
            nn.init.uniform_(self.gate_bias, -bound, bound)
        if fusion == "learned":
            # W_f1, W_f2: 1 x 2 x 3 x 3 over (channel, time) of the pooled [shifted; residual].
            self.fuse1 = nn.Conv2d(2, 1, 3, padding=1)
            self.fuse2 = nn.Conv2d(2, 1, 3, padding=1)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, processed={self.processed}, num_frames={self.num_frames}, "
                f"gating={self.gating!r}, fusion={self.fusion!r}, channel_shuffle={self.channel_shuffle}")

    def _gate(self, xp: torch.Tensor, n: int, t: int) -> torch.Tensor:
        """tanh(W_g * X) per group: (N, T, 2, 1, H, W).

        The 3x3x3 conv is computed as a 2D conv giving one plane per temporal tap, summed with a
        +-1 frame offset: the same multiply-adds as the 3D conv, at 2D-conv speed on CPU.
        """
        half = self.processed // 2
        h, w = xp.shape[-2:]
        z = F.relu(self.gate_norm(xp))
        # (2, half, kt, kh, kw) -> (2*kt, half, kh, kw): output plane (group g, tap k).
        weight = self.gate_weight.permute(0, 2, 1, 3, 4).reshape(6, half, 3, 3)
        taps = F.conv2d(z, weight, padding=1, groups=2).view(n, t, 2, 3, h, w)
        gate = taps[:, :, :, 1] + self.gate_bias.view(1, 1, 2, 1, 1)
        # Tap 0 looks one frame back, tap 2 one frame ahead (zero-padded at the clip ends).
        gate = torch.cat([gate[:, :1], gate[:, 1:] + taps[:, :-1, :, 0]], dim=1)
        gate = torch.cat([gate[:, :-1] + taps[:, 1:, :, 2], gate[:, -1:]], dim=1)
        return torch.tanh(gate).unsqueeze(3)

    def _fuse_weight(self, conv: nn.Conv2d, shifted: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """sigma(W_f * [phi(shifted); phi(residual)]) from pooled (N, T, C/2) inputs -> (N, T, C/2, 1, 1)."""
        pair = torch.stack([shifted, residual], dim=1).transpose(2, 3)  # (N, 2, C/2, T)
        return torch.sigmoid(conv(pair)).squeeze(1).transpose(1, 2)[..., None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        t = self.num_frames
        if nt % t:
            raise ValueError(f"GSF: batch of {nt} frames is not a multiple of num_frames={t}")
        n, p, half = nt // t, self.processed, self.processed // 2
        xp = x[:, :p]
        groups = xp.reshape(n, t, 2, half, h, w)
        if self.gating == "learned":
            gated = groups * self._gate(xp, n, t)  # Y = tanh(W_g * X) . X   (1), (2)
        else:
            gated = groups * float(self.gating)
        residual = groups - gated  # R = X - Y   (3), (4)
        y1, y2 = gated[:, :, 0], gated[:, :, 1]
        r1, r2 = residual[:, :, 0], residual[:, :, 1]
        s1, s2 = _shift_forward(y1), _shift_backward(y2)  # (5), (6)
        if self.fusion == "learned":
            # phi commutes with the shift, so pool Y and X once and shift the pooled planes.
            py = gated.mean(dim=(-2, -1))
            pr = groups.mean(dim=(-2, -1)) - py
            f1 = self._fuse_weight(self.fuse1, _shift_forward(py[:, :, 0]), pr[:, :, 0])  # (7)
            f2 = self._fuse_weight(self.fuse2, _shift_backward(py[:, :, 1]), pr[:, :, 1])  # (8)
            z1, z2 = torch.lerp(r1, s1, f1), torch.lerp(r2, s2, f2)  # (9), (10)
        else:
            z1, z2 = s1 + r1, s2 + r2
        dim = 3 if self.channel_shuffle else 2
        z = torch.stack([z1, z2], dim=dim).reshape(nt, p, h, w)
        if p == c:
            return z
        return torch.cat([z, x[:, p:]], dim=1)


class TemporalShift(nn.Module):
    """TSM (Lin et al., ICCV 2019): 1/``fold_div`` of the channels shifted each way in time, zero-padded."""

    def __init__(self, channels: int, num_frames: int, fold_div: int = 8):
        super().__init__()
        self.channels, self.num_frames, self.fold_div = channels, num_frames, fold_div
        self.fold = channels // fold_div

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_frames={self.num_frames}, fold_div={self.fold_div}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        t, f = self.num_frames, self.fold
        v = x.view(nt // t, t, c, h, w)
        back = _shift_backward(v[:, :, :f])  # frame t sees t+1
        fwd = _shift_forward(v[:, :, f:2 * f])  # frame t sees t-1
        return torch.cat([back, fwd, v[:, :, 2 * f:]], dim=2).view(nt, c, h, w)


class SpatioTemporalShift(nn.Module):
    """A spatio-temporal shift in the spirit of STSM (parameter-free, zero-padded).

    The STSM paper's exact split is not public. Default: 1/8 of the channels shifted each way in
    time (as TSM) and 1/16 shifted by one pixel in each of the four spatial directions
    (up, down, left, right), so half the channels move and half stay.
    """

    def __init__(self, channels: int, num_frames: int, temporal_fold_div: int = 8, spatial_fold_div: int = 16):
        super().__init__()
        self.channels, self.num_frames = channels, num_frames
        self.temporal_fold_div, self.spatial_fold_div = temporal_fold_div, spatial_fold_div
        self.tf, self.sf = channels // temporal_fold_div, channels // spatial_fold_div
        if 2 * self.tf + 4 * self.sf > channels:
            raise ValueError(f"STSM folds ({temporal_fold_div}, {spatial_fold_div}) exceed {channels} channels")

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_frames={self.num_frames}, "
                f"temporal_fold_div={self.temporal_fold_div}, spatial_fold_div={self.spatial_fold_div}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        t, tf, sf = self.num_frames, self.tf, self.sf
        v = x.view(nt // t, t, c, h, w)
        parts = [_shift_backward(v[:, :, :tf]), _shift_forward(v[:, :, tf:2 * tf])]
        start = 2 * tf
        for dim, step in ((-2, 1), (-2, -1), (-1, 1), (-1, -1)):
            chunk = v[:, :, start:start + sf]
            parts.append(_shift_spatial(chunk, dim, step))
            start += sf
        parts.append(v[:, :, start:])
        return torch.cat(parts, dim=2).view(nt, c, h, w)


def _shift_spatial(x: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """Shift by one pixel along ``dim`` (+1: content moves towards higher index), zero-filled."""
    size = x.shape[dim]
    zeros = torch.zeros_like(x.narrow(dim, 0, 1))
    if step > 0:
        return torch.cat([zeros, x.narrow(dim, 0, size - 1)], dim=dim)
    return torch.cat([x.narrow(dim, 1, size - 1), zeros], dim=dim)
