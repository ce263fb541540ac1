"""Parameter-free shifts: TSM (TemporalShift) and a spatio-temporal shift in the spirit of STSM."""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

# A move: channels [start, stop) shifted by +-1 along dim (1: time, 3: height, 4: width of the
# (N, T, C, H, W) view); +1 means content moves towards the higher index, zero-filled behind.


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


def _shift(x: torch.Tensor, num_frames: int, moves) -> torch.Tensor:
    nt = x.shape[0]
    if nt % num_frames:
        raise ValueError(f"batch of {nt} frames is not a multiple of num_frames={num_frames}")
    x = x.contiguous()
    if torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing():
        return _ShiftFunction.apply(x, num_frames, moves)
    return _apply_moves(x, num_frames, moves)


class TemporalShift(nn.Module):
    """TSM (Lin et al., ICCV 2019): 1/``fold_div`` of the channels shifted each way in time, zero-padded."""

    def __init__(self, channels: int, num_frames: int, fold_div: int = 8):
        super().__init__()
        self.channels, self.num_frames, self.fold_div = channels, num_frames, fold_div
        self.fold = channels // fold_div
        f = self.fold
        # [0, f): frame t sees t+1; [f, 2f): frame t sees t-1.
        self._moves = ((0, f, 1, -1), (f, 2 * f, 1, 1)) if f else ()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_frames={self.num_frames}, fold_div={self.fold_div}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._moves:
            return x.clone()
        return _shift(x, self.num_frames, self._moves)


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
        tf, sf = self.tf, self.sf
        moves = [(0, tf, 1, -1), (tf, 2 * tf, 1, 1)]
        start = 2 * tf
        for dim, step in ((3, 1), (3, -1), (4, 1), (4, -1)):  # down, up, right, left
            moves.append((start, start + sf, dim, step))
            start += sf
        self._moves = tuple(m for m in moves if m[1] > m[0])

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_frames={self.num_frames}, "
                f"temporal_fold_div={self.temporal_fold_div}, spatial_fold_div={self.spatial_fold_div}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._moves:
            return x.clone()
        return _shift(x, self.num_frames, self._moves)
