"""Parameter-free shifts: TSM (``TemporalShift``) and a spatio-temporal shift in the spirit of STSM.

Each ``forward`` is the readable implementation (``impl="reference"``): slicing into a
zero-filled tensor, as TSM's own ``temporal_shift``. The fast CPU one (``impl="fast"``, at the
end of this file; ``impl="auto"`` picks it where ``_impl.use_fast`` says) writes every element
once and has a hand-written backward; the tests hold the two equal.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..registry import register_module
from ._impl import check_impl, use_fast


@register_module("tsm")
class TemporalShift(nn.Module):
    """TSM (Lin et al., ICCV 2019): 1/``fold_div`` of the channels shifted each way in time, zero-padded."""

    def __init__(self, channels: int, num_frames: int, fold_div: int = 8, impl: str = "auto"):
        super().__init__()
        self.channels, self.num_frames, self.fold_div = channels, num_frames, fold_div
        self.impl = check_impl(impl)
        self.fold = f = channels // fold_div
        # For the fast path: [0, f): frame t sees t+1; [f, 2f): frame t sees t-1.
        self._moves = ((0, f, 1, -1), (f, 2 * f, 1, 1)) if f else ()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_frames={self.num_frames}, fold_div={self.fold_div}, impl={self.impl!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        _check_frames(nt, self.num_frames)
        if use_fast(self.impl, x):
            return shift_fast(x, self.num_frames, self._moves)
        f = self.fold
        x = x.view(nt // self.num_frames, self.num_frames, c, h, w)
        out = torch.zeros_like(x)
        out[:, :-1, :f] = x[:, 1:, :f]  # frame t sees frame t+1
        out[:, 1:, f:2 * f] = x[:, :-1, f:2 * f]  # frame t sees frame t-1
        out[:, :, 2 * f:] = x[:, :, 2 * f:]  # not shifted
        return out.view(nt, c, h, w)


@register_module("stsm")
class SpatioTemporalShift(nn.Module):
    """A spatio-temporal shift in the spirit of STSM (parameter-free, zero-padded).

    The STSM paper's exact split is not public. Default: 1/8 of the channels shifted each way in
    time (as TSM) and 1/16 shifted by one pixel in each of the four spatial directions
    (down, up, right, left), so half the channels move and half stay.
    """

    def __init__(self, channels: int, num_frames: int, temporal_fold_div: int = 8, spatial_fold_div: int = 16,
                 impl: str = "auto"):
        super().__init__()
        self.channels, self.num_frames = channels, num_frames
        self.temporal_fold_div, self.spatial_fold_div = temporal_fold_div, spatial_fold_div
        self.impl = check_impl(impl)
        self.tf, self.sf = channels // temporal_fold_div, channels // spatial_fold_div
        if 2 * self.tf + 4 * self.sf > channels:
            raise ValueError(f"STSM folds ({temporal_fold_div}, {spatial_fold_div}) exceed {channels} channels")
        tf, sf = self.tf, self.sf
        moves = [(0, tf, 1, -1), (tf, 2 * tf, 1, 1)]
        start = 2 * tf
        for dim, step in ((3, 1), (3, -1), (4, 1), (4, -1)):  # down, up, right, left
            moves.append((start, start + sf, dim, step))
            start += sf
        self._moves = tuple(m for m in moves if m[1] > m[0])

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_frames={self.num_frames}, temporal_fold_div="
                f"{self.temporal_fold_div}, spatial_fold_div={self.spatial_fold_div}, impl={self.impl!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        _check_frames(nt, self.num_frames)
        if use_fast(self.impl, x):
            return shift_fast(x, self.num_frames, self._moves)
        tf, sf = self.tf, self.sf
        x = x.view(nt // self.num_frames, self.num_frames, c, h, w)
        out = torch.zeros_like(x)
        out[:, :-1, :tf] = x[:, 1:, :tf]  # frame t sees frame t+1
        out[:, 1:, tf:2 * tf] = x[:, :-1, tf:2 * tf]  # frame t sees frame t-1
        down, up, right, left = (slice(2 * tf + i * sf, 2 * tf + (i + 1) * sf) for i in range(4))
        out[:, :, down, 1:] = x[:, :, down, :-1]  # row i sees row i-1
        out[:, :, up, :-1] = x[:, :, up, 1:]  # row i sees row i+1
        out[:, :, right, :, 1:] = x[:, :, right, :, :-1]  # column j sees column j-1
        out[:, :, left, :, :-1] = x[:, :, left, :, 1:]  # column j sees column j+1
        out[:, :, 2 * tf + 4 * sf:] = x[:, :, 2 * tf + 4 * sf:]  # not shifted
        return out.view(nt, c, h, w)


def _check_frames(nt: int, num_frames: int) -> None:
    if nt % num_frames:
        raise ValueError(f"batch of {nt} frames is not a multiple of num_frames={num_frames}")


# --------------------------------------------------------------------------------------------
# The fast implementation
# --------------------------------------------------------------------------------------------
# A move: channels [start, stop) shifted by +-1 along dim (1: time, 3: height, 4: width of the
# (N, T, C, H, W) view); +1 means content moves towards the higher index, zero-filled behind.
# Every output element is written once (no zero-fill pass), and backward is the opposite shift of
# the gradient into one tensor (autograd's slicing backward would allocate one per slice).


@torch.compiler.disable
def shift_fast(x: torch.Tensor, num_frames: int, moves) -> torch.Tensor:
    if not moves:
        return x.clone()
    x = x.contiguous()
    if torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing():
        return _ShiftFunction.apply(x, num_frames, moves)
    return _apply_moves(x, num_frames, moves)


def _apply_moves(x: torch.Tensor, num_frames: int, moves, reverse: bool = False) -> torch.Tensor:
    """One output tensor, every element written once; ``reverse`` applies the adjoint (backward)."""
    nt, c, h, w = x.shape
    src = x.view(nt // num_frames, num_frames, c, h, w)
    out = torch.empty_like(x)
    dst = out.view_as(src)
    moved_to = max(stop for _, stop, _, _ in moves)
    if moved_to < c:
        dst[:, :, moved_to:] = src[:, :, moved_to:]
    for start, stop, dim, step in moves:
        step = -step if reverse else step
        a, b = src[:, :, start:stop], dst[:, :, start:stop]
        size = a.shape[dim]
        if step > 0:
            b.narrow(dim, 1, size - 1).copy_(a.narrow(dim, 0, size - 1))
            b.narrow(dim, 0, 1).zero_()
        else:
            b.narrow(dim, 0, size - 1).copy_(a.narrow(dim, 1, size - 1))
            b.narrow(dim, size - 1, 1).zero_()
    return out


class _ShiftFunction(torch.autograd.Function):
    """A zero-padded shift is linear; its backward is the opposite shift of the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, num_frames: int, moves) -> torch.Tensor:
        ctx.num_frames, ctx.moves = num_frames, moves
        return _apply_moves(x, num_frames, moves)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        return _apply_moves(grad_out.contiguous(), ctx.num_frames, ctx.moves, reverse=True), None, None
