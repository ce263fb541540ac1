"""A slow, literal transcription of the GSF equations (1)-(10), used to check ``gsf.modules.GSF``.

Written for readability, not speed: the clip is laid out as (N, C, T, H, W), the gate is a real
3D convolution, the shift inserts explicit zero frames, the fusion pools and convolves exactly as
the paper describes. Parameters are read from a ``GSF`` instance so both can be compared on the
same weights (and gradients flow back into that instance's parameters).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_fw(y: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W): frame t receives frame t-1; frame 0 receives a zero frame."""
    zero = torch.zeros_like(y[:, :, :1])
    return torch.cat([zero, y[:, :, :-1]], dim=2)


def shift_bw(y: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W): frame t receives frame t+1; the last frame receives a zero frame."""
    zero = torch.zeros_like(y[:, :, :1])
    return torch.cat([y[:, :, 1:], zero], dim=2)


def phi(v: torch.Tensor) -> torch.Tensor:
    """Spatial average pooling: (N, C, T, H, W) -> (N, C, T)."""
    return v.mean(dim=(3, 4))


def gsf_reference(module, x: torch.Tensor, running_stats: dict | None = None) -> torch.Tensor:
    """GSF of ``x`` (N*T, C, H, W) with ``module``'s configuration and parameters.

    BatchNorm in front of the gate conv uses batch statistics when ``module.training`` and the
    running statistics otherwise, like ``nn.BatchNorm3d``. The module's running buffers are never
    touched: in training mode the updated statistics are written to ``running_stats`` (a dict that
    receives ``mean`` and ``var``) when one is passed, so a test can compare them.
    """
    nt, c, h, w = x.shape
    t = module.num_frames
    n = nt // t
    p = module.processed
    half = p // 2
    x5 = x.view(n, t, c, h, w).permute(0, 2, 1, 3, 4)  # (N, C, T, H, W)
    xp, passthrough = x5[:, :p], x5[:, p:]
    x1, x2 = xp[:, :half], xp[:, half:]

    if module.gating == "learned":
        bn = module.gate_norm
        mean, var = bn.running_mean.clone(), bn.running_var.clone()
        # The release: BatchNorm3d + ReLU on the processed channels, then one 3x3x3 conv per group.
        u = F.relu(F.batch_norm(xp, mean, var, bn.weight, bn.bias, module.training, bn.momentum, bn.eps))
        if running_stats is not None:
            running_stats["mean"], running_stats["var"] = mean, var
        u1, u2 = u[:, :half], u[:, half:]
        weight = module.gate_weight.view(2, half, 3, 3, 3)  # taps (kt, kh, kw) flattened in the module
        wg1, wg2 = weight[0:1], weight[1:2]  # (1, C/2, 3, 3, 3) each
        bg1, bg2 = module.gate_bias[0:1], module.gate_bias[1:2]
        gate1 = torch.tanh(F.conv3d(u1, wg1, bg1, padding=1))  # (N, 1, T, H, W)
        gate2 = torch.tanh(F.conv3d(u2, wg2, bg2, padding=1))
        y1 = gate1 * x1  # (1)
        y2 = gate2 * x2  # (2)
    else:
        y1 = float(module.gating) * x1
        y2 = float(module.gating) * x2
    r1 = x1 - y1  # (3)
    r2 = x2 - y2  # (4)
    y1_shift = shift_fw(y1)  # (5)
    y2_shift = shift_bw(y2)  # (6)

    if module.fusion == "learned":
        def fuse_weight(conv, shifted, residual):
            pair = torch.stack([phi(shifted), phi(residual)], dim=1)  # (N, 2, C/2, T)
            weight = torch.sigmoid(F.conv2d(pair, conv.weight, conv.bias, padding=1))  # (N, 1, C/2, T)
            return weight.view(n, half, t, 1, 1)

        f1 = fuse_weight(module.fuse1, y1_shift, r1)  # (7)
        f2 = fuse_weight(module.fuse2, y2_shift, r2)  # (8)
        z1 = f1 * y1_shift + (1 - f1) * r1  # (9)
        z2 = f2 * y2_shift + (1 - f2) * r2  # (10)
    else:  # GSM: fusion by summation
        z1 = y1_shift + r1
        z2 = y2_shift + r2

    if module.channel_shuffle:
        # Interleave: output channel 2i is Z1[i], 2i+1 is Z2[i].
        z = torch.stack([z1, z2], dim=2).reshape(n, p, t, h, w)
    else:
        z = torch.cat([z1, z2], dim=1)
    out = torch.cat([z, passthrough], dim=1)  # (N, C, T, H, W)
    return out.permute(0, 2, 1, 3, 4).reshape(nt, c, h, w)
