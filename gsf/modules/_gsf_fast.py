"""The fast CPU implementation of GSF (``GSF(impl="fast")``; ``impl="auto"`` picks it on CPU).

Same parameters, same results as the readable ``GSF.forward`` in ``gsf.py`` (the tests compare
them in float64, outputs, gradients and BatchNorm statistics, for every option). GSF sits on
full-size activations, so what costs on CPU is memory traffic and the number of passes over the
tensor, not arithmetic:

- The 3x3x3 gate conv is one batched GEMM, (27 taps x C/2) @ (C/2 x H*W) per frame and group,
  followed by shifted adds of the 27 tap planes (9 spatial, then 3 temporal, zero padding at
  the image borders and the clip ends). Same multiply-adds as the conv, so fvcore counts
  27 * processed * T * H * W for it; a grouped Conv2d/Conv3d with two output planes per group
  is several times slower on CPU.
- In eval mode with shift_ratio < 1, BatchNorm + ReLU is folded: relu(s*x + b) =
  s*clamp(x, -b/s) + b (per channel, for s > 0; mirrored for s < 0), the scale s goes into the
  GEMM weights and the constant into a small (T, 2, H, W) bias map of the gate (each tap adds
  it only inside the image and the clip), leaving one elementwise pass over the channel
  slice. Not while tracing, so fvcore still sees the BatchNorm the model has.
- The shifted gated features S are written in one pass (shifting = writing at a frame offset),
  the residual R straight into the output tensor (over x itself with ``inplace``, else the
  pass-through channels are copied once), S into the spent relu(BN(X)) tensor, and
  the fusion (9)/(10) is one in-place lerp. phi is taken of S and R themselves.
- With autograd (training), ``_GSFFunction`` saves x, S and the gate's tap planes and writes
  the backward out by hand: the elementwise part in a handful of passes into one gradient
  tensor, the gate GEMM as two GEMMs; autograd only re-runs BatchNorm + ReLU on x and the
  tiny fusion conv on the saved pooled values.
- Without autograd, relu(BN(X)) (then S) and the tap planes live in a per-thread workspace
  that stays allocated between calls: on this CPU a fresh tensor of a few MB costs about as
  much in page faults as the pass that fills it.
- In training with ``inplace``, x straight from a BatchNorm is written over when at most half
  the channels are processed; backward keeps a copy of those channels instead of x.
- Under autocast the GEMMs run in the autocast dtype (an op called with ``out=`` is not
  autocast-eligible, so the cast is explicit).
- Both layouts share every pass. A group's C/2 channels are viewed as (A, B) with A * B = C/2:
  (1, C/2) in the paper layout, (2, C/4) in the release layout, whose output (and output
  gradient) is then the strided view that puts channel a * C/4 + b at position 2b + a, so its
  channel order costs no pass either. Only the shift directions differ.

These are eager-mode memory tricks: ``forward`` is excluded from torch.compile (it runs eagerly
between compiled graphs), and ``impl="auto"`` uses the readable version on CUDA, under
torch.compile and under tracing.
"""
from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# The ``GSF`` of gsf.py whose forward this computes (its attributes and parameters are read).
# Named here, not imported: gsf.py imports this file, and imports point one way (docs/imports.md).
GSFModule = nn.Module


@torch.compiler.disable
def forward(m: GSFModule, x: torch.Tensor) -> torch.Tensor:
    """GSF ``m`` of frames ``x`` (N*T, C, H, W): with a hand-written backward where autograd needs one."""
    x = x.contiguous()
    if _grad_needed(x, m):
        return _GSFFunction.apply(m, x, *m.parameters())
    with torch.no_grad():
        # The release layout reorders channels within a group: it cannot be written over X's.
        return _forward_impl(m, x, None, out=x if m.inplace and m.layout == "paper" else None)


def _grad_needed(x: torch.Tensor, m: GSFModule) -> bool:
    """True when autograd must see this call (and we are not being traced, e.g. by fvcore)."""
    if not torch.is_grad_enabled() or torch.jit.is_tracing():
        return False
    return x.requires_grad or any(p.requires_grad for p in m.parameters())


_WORKSPACE = threading.local()


def _autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast runs a GEMM of ``x`` in (x's own dtype when autocast is off; fp64 is never cast)."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return x.dtype


def _workspace(slot: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A scratch tensor of ``shape`` that stays allocated between calls (per thread, slot, device
    and dtype, grown to the largest size asked for). Only for temporaries of the no-autograd path
    that die within one call: a fresh tensor of a few MB costs its page faults on first touch, on
    this CPU about as much as the pass that fills it."""
    pool = _WORKSPACE.__dict__.setdefault("pool", {})
    key = (slot, like.device, like.dtype)
    size = math.prod(shape)
    buf = pool.get(key)
    if buf is None or buf.numel() < size:
        with torch.inference_mode(False):  # a normal tensor: usable under no_grad and inference_mode
            buf = pool[key] = torch.empty(size, device=like.device, dtype=like.dtype)
    return buf[:size].view(shape)


def _tap_offsets(h: int, w: int):
    """For each spatial tap k = (kh, kw) of a 3x3 conv: output region, input region (zero padding)."""
    for kh in range(3):
        for kw in range(3):
            dh, dw = kh - 1, kw - 1
            out_region = (slice(max(0, -dh), max(0, h - max(0, dh))), slice(max(0, -dw), max(0, w - max(0, dw))))
            in_region = (slice(max(0, dh), max(0, h - max(0, -dh))), slice(max(0, dw), max(0, w - max(0, -dw))))
            yield kh * 3 + kw, dh, dw, out_region, in_region


def _sum_taps(cols: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 3x3x3 conv output (N, T, G, H, W) from its per-tap planes ``cols`` (N, T, G, kt, 9, H, W)
    plus ``bias`` (broadcast to the output: (G, 1, 1) or (T, G, H, W)).

    cols[..., kt, (kh, kw), i, j] is the weighted channel sum of frame t at pixel (i, j) for that
    tap; the conv output at (t, i, j) adds tap (kt, kh, kw) of frame t + kt - 1 at pixel
    (i + kh - 1, j + kw - 1), skipping positions outside the image or the clip (zero padding).
    Shifted in-place adds over a few planes: much cheaper than col2im (F.fold) at 28x28 and up.
    """
    h, w = cols.shape[-2:]
    taps = cols[..., 4, :, :].clone()  # (N, T, G, kt, H, W)
    for k, dh, dw, (oi, oj), (ii, ij) in _tap_offsets(h, w):
        if (dh, dw) != (0, 0):
            taps[..., oi, oj] += cols[..., k, ii, ij]
    gate = taps[:, :, :, 1] + bias
    gate[:, 1:] += taps[:, :-1, :, 0]  # temporal tap 0 looks one frame back,
    gate[:, :-1] += taps[:, 1:, :, 2]  # tap 2 one frame ahead; nothing across clip ends
    return gate


def _inside_taps_sum(const: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
    """Sum of ``const`` (G, kt, kh, kw) over the taps of a 3x3x3 conv that land inside the clip
    and the image, at every output position: (T, G, H, W). Tap k reads position i + k - 1, so
    tap 0 misses at the first position and tap 2 at the last (zero padding); the box is separable.
    """
    def inside(n: int) -> torch.Tensor:
        v = torch.ones(3, n, dtype=const.dtype, device=const.device)
        v[0, 0] = 0
        v[2, -1] = 0
        return v
    return torch.einsum("gabc,at,bi,cj->tgij", const, inside(t), inside(h), inside(w))


def _sum_taps_adjoint(grad: torch.Tensor, cols_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``_sum_taps`` for ``cols`` and ``bias`` from the gradient (N, T, G, H, W) of
    its output: the same shifts in reverse, as copies (zeros where a tap only saw padding)."""
    h, w = grad.shape[-2:]
    grad_taps = grad.new_empty(tuple(cols_shape[:4]) + (h, w))
    grad_taps[:, :, :, 1] = grad
    grad_taps[:, :-1, :, 0] = grad[:, 1:]
    grad_taps[:, -1, :, 0] = 0
    grad_taps[:, 1:, :, 2] = grad[:, :-1]
    grad_taps[:, 0, :, 2] = 0
    grad_cols = grad.new_empty(cols_shape)
    for k, dh, dw, (oi, oj), (ii, ij) in _tap_offsets(h, w):
        plane = grad_cols[..., k, :, :]
        plane[..., ii, ij] = grad_taps[..., oi, oj]
        # The input row / column that no output reads (on the padding side) gets zero gradient.
        if dh > 0:
            plane[..., :dh, :] = 0
        elif dh < 0:
            plane[..., h + dh:, :] = 0
        if dw > 0:
            plane[..., :, :dw] = 0
        elif dw < 0:
            plane[..., :, w + dw:] = 0
    return grad_cols, grad.sum(dim=(0, 1, 3, 4))


# -- pieces ----------------------------------------------------------------------------------


def _gate_input(m: GSFModule, xp: torch.Tensor, scratch: bool):
    """relu(BN(X)) as (z, gate weight, per-tap constant), with BN folded into the GEMM in eval mode.

    Runs without autograd; the backward pass re-runs the plain BatchNorm + ReLU instead of
    differentiating the fold (whose gradient would be wrong for a BN scale of exactly 0).
    ``scratch``: z may go into the workspace (nothing keeps it past this call).
    """
    weight = m.gate_weight  # (2, C/2, 27)
    bn = m.gate_norm
    # Folding pays where BatchNorm is slow: on a channel slice of a larger tensor (shift_ratio
    # < 1) it runs at about half speed; and its one pass can write into the workspace. With
    # autograd on a whole contiguous tensor, BN + ReLU is as fast (measured, BN-Inception sizes).
    if (m.training or torch.jit.is_tracing() or bn.running_mean is None
            or (xp.is_contiguous() and not scratch)):
        return F.relu(bn(xp)), weight, None
    p, half = m.processed, m.processed // 2
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    z = _workspace("z", xp.shape, xp) if scratch else torch.empty_like(xp, memory_format=torch.contiguous_format)
    if xp.device.type == "cpu" and bool((scale > 0).all()):  # the usual case; no host sync on GPU
        torch.maximum(xp, (-shift / scale).view(p, 1, 1), out=z)
    else:
        # s > 0: clamp below at -b/s; s < 0: clamp above; s = 0: z = 0 and relu(b) is constant.
        inf = torch.full_like(scale, math.inf)
        zero = torch.zeros_like(scale)
        lo = torch.where(scale > 0, -shift / scale, torch.where(scale < 0, -inf, zero))
        hi = torch.where(scale < 0, -shift / scale, torch.where(scale > 0, inf, zero))
        torch.clamp(xp, lo.view(p, 1, 1), hi.view(p, 1, 1), out=z)
        shift = torch.where(scale == 0, shift.clamp_min(0), shift)
    # relu(s*x + b) = s*z + b with z above, so W * relu(BN(x)) = (W*s) * z + (W * b).
    const = (weight * shift.view(2, half, 1)).sum(1).view(2, 3, 3, 3)  # (2, kt, kh, kw)
    return z, weight * scale.view(2, half, 1), const


def _gate_rows(weight: torch.Tensor, nt: int) -> torch.Tensor:
    """(2, C/2, 27) -> (N*T*2, 27, C/2): the 27 taps as GEMM rows, per frame and group."""
    half = weight.shape[1]
    return weight.transpose(1, 2).expand(nt, 2, 27, half).reshape(nt * 2, 27, half)


def _gate_cols(m: GSFModule, xp: torch.Tensor, n: int, t: int, scratch: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-tap planes of the 3x3x3 gate conv of relu(BN(X)): (N, T, 2, kt, 9, H, W).

    One GEMM per (frame, group) with the 27 taps as output rows; ``_sum_taps`` adds them up.
    Also returns relu(BN(X)) (or its folded stand-in), a fresh tensor the caller may reuse,
    and the gate's bias, (2, 1, 1) or, with BN folded, (T, 2, H, W). ``scratch``: the tap
    planes and z go into the workspace (no autograd: nothing keeps them past the call).
    """
    nt, p, h, w = xp.shape
    z, weight, const = _gate_input(m, xp, scratch)
    # The GEMM in the dtype autocast would give it: bmm is autocast-eligible, but not when
    # called with out=, where fp32 weights would meet fp16/bf16 activations.
    dtype = _autocast_dtype(z)
    rows = _gate_rows(weight, nt).to(dtype)
    z = z.reshape(nt * 2, p // 2, h * w).to(dtype)
    cols = torch.bmm(rows, z, out=_workspace("cols", (nt * 2, 27, h * w), z) if scratch else None)
    cols = cols.view(n, t, 2, 3, 9, h, w)
    bias = m.gate_bias.view(2, 1, 1)
    if const is not None:
        # The folded BN's constant enters every tap that reads inside the clip and the image:
        # a small (T, 2, H, W) map instead of a GEMM bias (which costs a pass over the planes).
        bias = bias + _inside_taps_sum(const, t, h, w)
    return cols, z, bias


def _fuse_weights(m: GSFModule, pooled_s: torch.Tensor, pooled_r: torch.Tensor) -> torch.Tensor:
    """(7), (8): sigma(W_f * [phi(S); phi(R)]) from pooled (N, T, 2, C/2) -> (N, T, 2, C/2)."""
    def weight_map(conv, s, r):  # (N, T, C/2) each
        pair = torch.stack([s, r], dim=1).transpose(2, 3)  # (N, 2, C/2, T)
        return torch.sigmoid(conv(pair)).squeeze(1).transpose(1, 2)

    # Two tiny convs: on CPU a single groups=2 conv is slower (mkldnn setup per call).
    return torch.stack([weight_map(m.fuse1, pooled_s[:, :, 0], pooled_r[:, :, 0]),
                        weight_map(m.fuse2, pooled_s[:, :, 1], pooled_r[:, :, 1])], dim=2)


def _group_channels(m: GSFModule) -> tuple[int, int]:
    """(A, B): how a group's C/2 channels are viewed, (1, C/2) or, in the release layout, (2, C/4)."""
    half = m.processed // 2
    return (2, half // 2) if m.layout == "release" else (1, half)


def _output_view(m: GSFModule, out: torch.Tensor, n: int, t: int) -> torch.Tensor:
    """The processed channels of ``out`` as (N, T, group, A, B, H, W), indexed like the input's.

    Release layout: output position 2b + a of a group holds its channel a * C/4 + b, so the
    view over (b, a) is transposed to (a, b) (a strided view, no copy)."""
    nt, c, h, w = out.shape
    if m.layout == "release":
        a, b = _group_channels(m)
        return out[:, :m.processed].view(n, t, 2, b, a, h, w).transpose(3, 4)
    return out[:, :m.processed].view(n, t, 2, *_group_channels(m), h, w)


def _shift_groups(m: GSFModule) -> tuple[int, int]:
    """(the group whose frame t receives frame t-1, the group receiving frame t+1)."""
    return (0, 1) if m.layout == "paper" else (1, 0)


def _shifted_gated(m: GSFModule, xg: torch.Tensor, gate, t: int, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """(5), (6) of (1), (2): S = the gated groups shifted in time, one pass, zero frames at the ends.
    Paper layout [shift_fw(g1 * X1), shift_bw(g2 * X2)], release layout the other way round.

    Written into ``scratch`` (a spent tensor of xg's size) where given: a fresh full-size
    tensor costs its page faults on first touch, about as much as the pass itself on CPU.
    """
    usable = (scratch is not None and scratch.dtype == xg.dtype and scratch.is_contiguous()
              and scratch.numel() == xg.numel())
    s = scratch.view(xg.shape) if usable else torch.empty_like(xg)
    fw, bw = _shift_groups(m)
    if t > 1:
        if isinstance(gate, float):
            torch.mul(xg[:, :-1, fw], gate, out=s[:, 1:, fw])
            torch.mul(xg[:, 1:, bw], gate, out=s[:, :-1, bw])
        else:
            torch.mul(xg[:, :-1, fw], gate[:, :-1, fw], out=s[:, 1:, fw])
            torch.mul(xg[:, 1:, bw], gate[:, 1:, bw], out=s[:, :-1, bw])
    s[:, 0, fw] = 0
    s[:, -1, bw] = 0
    return s

# -- forward / backward ------------------------------------------------------------------------


def _forward_impl(m: GSFModule, x: torch.Tensor, ctx, out: torch.Tensor | None = None) -> torch.Tensor:
    """The whole module without autograd; with ``ctx`` (training), also saves what backward needs.

    ``out=x`` writes over x: the gate and S are computed from X before R overwrites it, and
    R and the fusion are elementwise, so each element is read before it is written. With
    ``ctx`` too, backward gets a copy of the processed channels (all it needs of x).
    """
    nt, c, h, w = x.shape
    t = m.num_frames
    n, p = nt // t, m.processed
    chan = _group_channels(m)
    xp = x[:, :p]
    xg = xp.view(n, t, 2, *chan, h, w)
    saved_xp = xp.clone() if ctx is not None and out is x else xp
    cols = scratch = None
    if m.gating == "learned":
        # The workspace only without autograd, and not while fvcore traces (it counts ops).
        cols, scratch, bias = _gate_cols(m, xp, n, t, scratch=ctx is None and not torch.jit.is_tracing())
        planes = torch.tanh(_sum_taps(cols, bias)).to(x.dtype)  # (N, T, 2, H, W)
        if m.gate_probe._forward_hooks:
            m.gate_probe(planes)
        gate = planes.view(n, t, 2, 1, 1, h, w)
    else:
        gate = float(m.gating)
    if out is None:
        out = torch.empty_like(x)
        if p < c:
            out[:, p:] = x[:, p:]
    z = _output_view(m, out, n, t)
    s = _shifted_gated(m, xg, gate, t, scratch)  # (1), (2), (5), (6); relu(BN(X)) is spent
    torch.mul(xg, 1 - gate, out=z)  # R = X - Y = (1 - g) X   (3), (4)
    pooled = fuse = None
    if m.fusion == "learned":
        pooled = s.mean(dim=(-2, -1)).flatten(3), z.mean(dim=(-2, -1)).flatten(3)  # phi: (N, T, 2, C/2)
        fuse = _fuse_weights(m, *pooled).to(x.dtype).view(n, t, 2, *chan, 1, 1)
        z.lerp_(s, fuse)  # Z = F S + (1 - F) R   (9), (10)
    else:
        z += s
    if ctx is not None:
        ctx.fixed_gate = gate if cols is None else None
        ctx.channels = c
        ctx.save_for_backward(saved_xp, s, cols, None if cols is None else gate,
                              *(pooled if pooled is not None else (None, None)), fuse)
    return out


def _backward_impl(m: GSFModule, ctx, grad_out: torch.Tensor):
    """Gradients of ``_forward_impl`` for x and every parameter (in ``m.parameters()`` order).

    The elementwise part is differentiated by hand; the gate conv's two GEMMs too. Autograd
    only sees the small fusion conv (re-run on the saved pooled values) and BatchNorm + ReLU
    (re-run on x: one pass, instead of keeping its output from forward).
    """
    xp, s, cols, gate, pooled_s, pooled_r, fuse = ctx.saved_tensors
    if gate is None:
        gate = ctx.fixed_gate
    nt, _, h, w = xp.shape
    c = ctx.channels
    t = m.num_frames
    n, p = nt // t, m.processed
    chan = _group_channels(m)
    fw, bw = _shift_groups(m)
    grad_out = grad_out.contiguous()
    gz = _output_view(m, grad_out, n, t)  # dL/dZ
    xg = xp.view(n, t, 2, *chan, h, w)
    params = dict(m.named_parameters())
    grads = {}

    grad_x = torch.empty_like(grad_out)
    if p < c and ctx.needs_input_grad[1]:
        grad_x[:, p:] = grad_out[:, p:]
    gx = grad_x[:, :p].view(n, t, 2, *chan, h, w)  # holds dR, then dX
    # diff = U - dR, with U the gradient of S un-shifted back onto the frames it came from
    # (U[t] = dS[t+1] in the group shifted forward, dS[t-1] in the other, zero for the frame
    # that fell off the clip end). Then dX = (1 - g) dR + g U = dR + g diff, dg = sum_c X diff.
    diff = torch.empty_like(xg)
    if fuse is not None:
        # dL/dF = sum_hw dZ (S - R); the fusion conv is differentiated by autograd.
        torch.mul(xg, 1 - gate, out=diff)
        torch.sub(s, diff, out=diff).mul_(gz)
        grad_fuse = diff.sum(dim=(-2, -1)).flatten(3)
        fuse_params = {k: v for k, v in params.items() if k.startswith("fuse") and v.requires_grad}
        with torch.enable_grad():
            pooled = (pooled_s.detach().requires_grad_(), pooled_r.detach().requires_grad_())
            f = _fuse_weights(m, *pooled)
            got = torch.autograd.grad(f, [*pooled, *fuse_params.values()], grad_fuse.to(f.dtype))
        grads.update(zip(fuse_params, got[2:]))
        # phi is a mean: its gradient spreads evenly over the H*W positions.
        grad_ps, grad_pr = (g.to(xp.dtype).view(n, t, 2, *chan, 1, 1) / (h * w) for g in got[:2])
        torch.addcmul(grad_pr, gz, 1 - fuse, out=gx)  # dR = (1 - F) dZ + dphi(R)
        # dS = F dZ + dphi(S): the pooled part goes in first, un-shifted, then F dZ below.
        u_pooled = torch.zeros_like(grad_ps)
        u_pooled[:, :-1, fw] = grad_ps[:, 1:, fw]
        u_pooled[:, 1:, bw] = grad_ps[:, :-1, bw]
        torch.sub(u_pooled, gx, out=diff)
    else:
        gx.copy_(gz)  # dR = dS = dZ
        torch.neg(gx, out=diff)
    for grp, dst, src in ((fw, slice(0, t - 1), slice(1, t)), (bw, slice(1, t), slice(0, t - 1))):
        if fuse is None:
            diff[:, dst, grp] += gz[:, src, grp]
        else:
            diff[:, dst, grp].addcmul_(gz[:, src, grp], fuse[:, src, grp])
    if cols is None:
        gx.add_(diff, alpha=gate)
    else:
        gx.addcmul_(diff, gate)
        grad_x[:, :p] += _gate_backward(m, xp, cols, gate, diff.mul_(xg).sum(dim=(3, 4)), grads)
    return (grad_x if ctx.needs_input_grad[1] else None,) + tuple(grads.get(k) for k in params)


def _gate_backward(m: GSFModule, xp, cols, gate, grad_gate, grads) -> torch.Tensor:
    """From dL/dg (N, T, 2, H, W): the gate parameters' gradients (into ``grads``) and dL/dX."""
    nt, p, h, w = xp.shape
    bn = m.gate_norm
    grad_pre = grad_gate * (1 - gate.reshape(grad_gate.shape) ** 2)  # tanh'
    grad_cols, grads["gate_bias"] = _sum_taps_adjoint(grad_pre, cols.shape)
    grad_cols = grad_cols.view(nt * 2, 27, h * w)
    # BatchNorm + ReLU again, with autograd (batch statistics in training; no running-stat update).
    with torch.enable_grad():
        leaf = xp.detach().requires_grad_()
        batch_stats = m.training or bn.running_mean is None
        z = F.relu(F.batch_norm(leaf, None if batch_stats else bn.running_mean,
                                None if batch_stats else bn.running_var,
                                bn.weight, bn.bias, batch_stats, 0.0, bn.eps))
    # cols = rows @ z per (frame, group): the two GEMMs of its backward, in the activations'
    # dtype (fp16/bf16 under autocast), the weight gradient returned in the weight's.
    zb = z.detach().reshape(nt * 2, p // 2, h * w).to(grad_cols.dtype)
    rows = _gate_rows(m.gate_weight, nt).to(grad_cols.dtype)
    grad_rows = torch.bmm(grad_cols, zb.transpose(1, 2)).view(nt, 2, 27, p // 2).sum(0)
    grads["gate_weight"] = grad_rows.transpose(1, 2).to(m.gate_weight.dtype)
    grad_z = torch.bmm(rows.transpose(1, 2), grad_cols).view(nt, p, h, w)
    norm_params = {k: v for k, v in (("gate_norm.weight", bn.weight), ("gate_norm.bias", bn.bias))
                   if v.requires_grad}
    got = torch.autograd.grad(z, [leaf, *norm_params.values()], grad_z.to(z.dtype))
    grads.update(zip(norm_params, got[1:]))
    return got[0]


class _GSFFunction(torch.autograd.Function):
    """GSF with a hand-written backward; inputs (module, x, *module.parameters())."""

    @staticmethod
    def forward(ctx, module: GSFModule, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.module = module
        # Backward re-runs BN and the fusion conv: under the same autocast as forward.
        device = x.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        # Writing over x pays when it saves more than it copies: backward then keeps a copy of
        # the processed channels instead of x, and the untouched ones are not copied at all.
        # Only where x comes straight from a BatchNorm, whose backward does not need its output
        # (a ReLU's does: autograd would refuse at backward time).
        producer = type(x.grad_fn).__name__ if x.grad_fn is not None else ""
        over_x = (module.inplace and module.layout == "paper" and 2 * module.processed <= x.shape[1]
                  and x._base is None and "BatchNormBackward" in producer)
        out = _forward_impl(module, x, ctx, out=x if over_x else None)
        if over_x:
            ctx.mark_dirty(x)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        device, dtype, enabled = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return (None,) + _backward_impl(ctx.module, ctx, grad_out)
