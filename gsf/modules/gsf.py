"""Gate-Shift-Fuse (Sudhakaran, Escalera, Lanz, TPAMI 2023): the paper's equations (1)-(10).

``GSF.forward`` below is the readable implementation (``impl="reference"``): a grouped 3D conv for
the gates, slicing for the shifts, the two small fusion convs. ``_gsf_fast.py`` computes the same
module with the same parameters faster on CPU (``impl="fast"``); ``impl="auto"`` (default) picks
it where it is known to pay (see ``_impl.use_fast``). The tests hold the two equal in float64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import check_shift_ratio, register_module
from . import _gsf_fast
from ._impl import check_impl, use_fast

LAYOUTS = ("paper", "release")


@register_module("gsf")
class GSF(nn.Module):
    """Gate-Shift-Fuse on frames ``(N*T, C, H, W)``, the frames of a clip consecutive (TSN layout).

    The first ``processed`` channels (``shift_ratio`` of them, an even count) are split into two
    groups X1, X2. Each group is gated by a tanh plane from a 3x3x3 conv (preceded by BatchNorm +
    ReLU, as in the authors' release), the gated part of group 1 is shifted forward in time and
    that of group 2 backward, and each group fuses its shifted part with its residual through
    per (channel, frame) weights from a 3x3 conv over the pooled [shifted; residual] pair.
    The other channels pass through untouched. Clips never mix.

    ``gating``: "learned", or a fixed number (1: TSM-like shift, -1: TDN-like differencing,
    0: no temporal interaction). ``fusion``: "learned", or "sum" (GSM).
    ``layout``: "paper" (default) follows the equations: group 1 shifted forward, group 2
    backward, Z = [Z1; Z2], ``processed`` the even count nearest ``shift_ratio * channels``.
    "release" computes what the authors' released module (swathikirans/GSF ``gsf.py``) does, so
    that their checkpoints give their outputs: group 1 takes the *next* frame's gated features and
    group 2 the previous one's, each group's two halves are interleaved on output (see
    ``release_order``), and ``processed`` follows the release's rule (``release_processed_channels``).
    Same parameters in both layouts; the gates, BatchNorm statistics and the fusion conv's
    (channel, frame) layout are the same computation.
    ``inplace``: like ``nn.ReLU(inplace=True)``, the fast implementation may write its output
    over x (the backbones set it where x is a fresh activation nothing else reads); the result
    is the same either way.
    ``impl``: "auto", "reference" (this ``forward``) or "fast" (``_gsf_fast.py``); same
    parameters and results.

    ``gate_probe``: the learned gate planes (N, T, 2, H, W) are passed to this ``nn.Identity``
    when it has forward hooks, so evaluation code can observe them (e.g. histograms); its return
    value is not used.
    """

    def __init__(
        self,
        channels: int,
        num_frames: int,
        shift_ratio: float = 1.0,
        gating: str | float = "learned",
        fusion: str = "learned",
        layout: str = "paper",
        inplace: bool = False,
        impl: str = "auto",
    ):
        super().__init__()
        if gating != "learned" and (isinstance(gating, bool) or not isinstance(gating, (int, float))):
            raise ValueError(f"gating must be 'learned' or a number, got {gating!r}")
        if fusion not in ("learned", "sum"):
            raise ValueError(f"fusion must be 'learned' or 'sum', got {fusion!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
        if channels < 2:
            raise ValueError(f"GSF needs at least 2 channels, got {channels}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.channels = channels
        self.num_frames = num_frames
        self.shift_ratio = shift_ratio
        self.processed = processed_channels(channels, shift_ratio, layout)
        self.gating = gating
        self.fusion = fusion
        self.layout = layout
        self.inplace = inplace
        self.impl = check_impl(impl)
        half = self.processed // 2
        if gating == "learned":
            # BatchNorm over (N, T, H, W) per channel: the statistics of the release's
            # BatchNorm3d on (N, C, T, H, W), computed on the frames without a permute.
            self.gate_norm = nn.BatchNorm2d(self.processed)
            # W_g1, W_g2: two 1 x C/2 x 3 x 3 x 3 kernels with the 27 taps (kt, kh, kw) flattened,
            # (2, C/2, 27). A 5-D parameter breaks model.to(memory_format=torch.channels_last),
            # which converts every 4-D and 5-D tensor; a Conv3d-layout (5-D) one still loads.
            self.gate_weight = nn.Parameter(torch.empty(2, half, 27))
            self.gate_bias = nn.Parameter(torch.zeros(2))
            # PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            bound = 1.0 / math.sqrt(half * 27)
            nn.init.uniform_(self.gate_weight, -bound, bound)
            nn.init.uniform_(self.gate_bias, -bound, bound)
            self.gate_probe = nn.Identity()
        if fusion == "learned":
            # W_f1, W_f2: 1 x 2 x 3 x 3 over (channel, time) of the pooled [shifted; residual].
            self.fuse1 = nn.Conv2d(2, 1, 3, padding=1)
            self.fuse2 = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"GSF expects (N*T, {self.channels}, H, W), got {tuple(x.shape)}")
        if x.shape[0] % self.num_frames:
            raise ValueError(f"GSF: batch of {x.shape[0]} frames is not a multiple of num_frames={self.num_frames}")
        if use_fast(self.impl, x):
            return _gsf_fast.forward(self, x)
        nt, c, h, w = x.shape
        t, p, half = self.num_frames, self.processed, self.processed // 2
        frames = x.view(nt // t, t, c, h, w)
        x1, x2 = frames[:, :, :half], frames[:, :, half:p]  # X = [X1, X2]; channels p: pass through

        if self.gating == "learned":
            g1, g2 = self._gates(x[:, :p]).split(1, dim=2)  # tanh(W_g1 * X1), tanh(W_g2 * X2)
        else:
            g1 = g2 = float(self.gating)
        y1 = g1 * x1  # (1)
        y2 = g2 * x2  # (2)
        r1 = x1 - y1  # (3)
        r2 = x2 - y2  # (4)
        if self.layout == "paper":
            y1_shift = shift_fw(y1)  # (5)
            y2_shift = shift_bw(y2)  # (6)
        else:  # the release shifts the other way: group 1 from frame t+1, group 2 from frame t-1
            y1_shift, y2_shift = shift_bw(y1), shift_fw(y2)
        if self.fusion == "learned":
            f1 = self._fusion_weights(self.fuse1, y1_shift, r1)  # (7)
            f2 = self._fusion_weights(self.fuse2, y2_shift, r2)  # (8)
            z1 = f1 * y1_shift + (1 - f1) * r1  # (9)
            z2 = f2 * y2_shift + (1 - f2) * r2  # (10)
        else:  # GSM: fusion by summation
            z1 = y1_shift + r1
            z2 = y2_shift + r2

        if self.layout == "release":  # each group's halves interleaved; the groups stay apart
            z1, z2 = interleave_halves(z1), interleave_halves(z2)
        z = torch.cat([z1, z2], dim=2)
        return torch.cat([z, frames[:, :, p:]], dim=2).reshape(nt, c, h, w)

    def _gates(self, xp: torch.Tensor) -> torch.Tensor:
        """The gate planes of (1), (2) for the processed channels ``xp`` (N*T, C, H, W): (N, T, 2, H, W)."""
        nt, p, h, w = xp.shape
        t = self.num_frames
        u = F.relu(self.gate_norm(xp))
        # (N, C, T, H, W) for the 3D conv, contiguous: from a channels_last input at 1x1 the conv's
        # input-gradient strides differ from those torch.compile traced (its backward then fails).
        u = u.view(nt // t, t, p, h, w).transpose(1, 2).contiguous()
        weight = self.gate_weight.view(2, p // 2, 3, 3, 3)  # W_g1, W_g2: one conv, groups=2
        gate = torch.tanh(F.conv3d(u, weight, self.gate_bias, padding=1, groups=2)).transpose(1, 2)
        if self.gate_probe._forward_hooks:
            self.gate_probe(gate)
        return gate

    @staticmethod
    def _fusion_weights(conv: nn.Conv2d, shifted: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """(7), (8): sigma(W_f * [phi(Y_shift); phi(R)]), one weight per frame and channel: (N, T, C/2, 1, 1)."""
        pair = torch.stack([phi(shifted), phi(residual)], dim=1).transpose(2, 3)  # (N, 2, C/2, T)
        weight = torch.sigmoid(conv(pair)).squeeze(1)  # the 3x3 kernel spans channels and frames
        return weight.transpose(1, 2)[..., None, None]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "gate_weight"
        if key in state_dict and state_dict[key].dim() == 5:  # Conv3d layout (2, C/2, 3, 3, 3)
            state_dict[key] = state_dict[key].flatten(2)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, processed={self.processed}, num_frames={self.num_frames}, "
                f"gating={self.gating!r}, fusion={self.fusion!r}, layout={self.layout!r}, "
                f"inplace={self.inplace}, impl={self.impl!r}")


@register_module("gsm")
def gsm(channels: int, num_frames: int, shift_ratio: float = 1.0, gating: str | float = "learned",
        layout: str = "paper", impl: str = "auto") -> GSF:
    """Gate-Shift Module (Sudhakaran et al., CVPR 2020): GSF with fusion by summation."""
    return GSF(channels, num_frames, shift_ratio, gating, "sum", layout, impl=impl)


def processed_channels(channels: int, shift_ratio: float, layout: str = "paper") -> int:
    """Channels a GSF with ``shift_ratio`` processes: the nearest even count, at least 2; with
    ``layout="release"`` the release's count (``release_processed_channels``)."""
    check_shift_ratio(shift_ratio)
    if layout == "release":
        return release_processed_channels(channels, shift_ratio)
    return min(channels - channels % 2, max(2, 2 * round(channels * shift_ratio / 2)))


def release_processed_channels(channels: int, shift_ratio: float) -> int:
    """The authors' release's count (gsf.py:11-14): ``int(channels * percent / 100)``, plus one if odd.

    So it rounds down and only then up to even: 10 channels at 50% -> 5 -> 6, 100 at 12.5% -> 12.
    The release takes a percentage; ``round(shift_ratio * 100, 6)`` recovers it exactly from a
    fraction (``int(100 * 0.29)`` is 28, ``int(100 * 29 / 100)`` is 29). Sizes the released module
    cannot run (it raises there) are an error: more channels than there are (an odd count at
    100%), or a count not divisible by 4 (each group's halves must be interleavable).
    """
    percent = round(shift_ratio * 100, 6)
    count = int(channels * percent / 100)
    count += count % 2
    if count > channels or count < 4 or count % 4:
        raise ValueError(f"layout='release' with shift_ratio={shift_ratio} on {channels} channels processes {count}: "
                         "the authors' module runs only counts divisible by 4, at most the channel count")
    return count


def release_order(processed: int) -> list[int]:
    """Which fused channel each of the first ``processed`` outputs holds in the release layout.

    Fused channels are numbered [Z1; Z2]. Within a group of ``processed / 2`` channels the release
    views them as (2, processed / 4) and transposes: output 2b + a of the group holds its channel
    a * processed / 4 + b. For 8 channels: [0, 2, 1, 3, 4, 6, 5, 7].
    """
    half, quarter = processed // 2, processed // 4
    return [g * half + a * quarter + b for g in range(2) for b in range(quarter) for a in range(2)]


def interleave_halves(z: torch.Tensor) -> torch.Tensor:
    """(N, T, C, H, W): channel 2b + a of the result is channel a * C/2 + b of ``z`` (``release_order``)."""
    return z.unflatten(2, (2, z.shape[2] // 2)).transpose(2, 3).flatten(2, 3)


def shift_fw(y: torch.Tensor) -> torch.Tensor:
    """(N, T, C, H, W): frame t receives frame t-1; the first frame receives zeros."""
    return torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)


def shift_bw(y: torch.Tensor) -> torch.Tensor:
    """(N, T, C, H, W): frame t receives frame t+1; the last frame receives zeros."""
    return torch.cat([y[:, 1:], torch.zeros_like(y[:, :1])], dim=1)


def phi(v: torch.Tensor) -> torch.Tensor:
    """Spatial average pooling: (N, T, C, H, W) -> (N, T, C)."""
    return v.mean(dim=(-2, -1))
