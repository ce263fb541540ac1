"""What the authors' released GSF module computes, stated step by step from reading it (slow, float64-friendly).

Source read: swathikirans/GSF ``gsf.py`` at commit 6127807 (the module, lines 8-91);
``docs/release_facts.md`` gives every fact with its line numbers. This is our own statement
of that module's arithmetic, not its code: each step is written out plainly so a test can hold
``GSF(..., layout="release")`` to it on the same weights.

Weights are a dict under the release's key names (one GSF module's state dict), P being
``release_processed_channels(C, ratio)``:

    conv3D.weight (2, P/2, 3, 3, 3)   conv3D.bias (2,)
    bn.weight, bn.bias, bn.running_mean, bn.running_var (P,)   [bn.num_batches_tracked unused]
    channel_conv1.weight (1, 2, 3, 3)  channel_conv1.bias (1,)   (channel_conv2.* likewise)

The release module takes only (fPlane, num_segments, gsf_ch_ratio): gating is always the learned
tanh gate and fusion always the learned sigmoid weighting. It has no fixed gating and no sum
fusion (GSM); those are ours only, and for them "release" can only mean the release's shifts,
channel order and processed-channel count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# The release's BatchNorm3d uses PyTorch's defaults (gsf.py:20).
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def release_processed_channels(channels: int, ratio_percent: float) -> int:
    """How many leading channels the release processes (gsf.py:11-14).

    ``gsf_ch_ratio`` is a percentage. The count is the float product ``channels * ratio / 100``
    truncated towards zero, then raised by one if it is odd. So it rounds *down* and only an odd
    result goes up to the next even number: 10 ch at 50% -> 5 -> 6, 10 ch at 30% -> 3 -> 4,
    100 ch at 12.5% -> 12, 100 ch at 29% -> 29 -> 30. Written in the same float order as the
    release, because a ratio given as a fraction differs: ``int(100 * 0.29) == 28``.
    """
    count = int(channels * ratio_percent / 100)
    return count + 1 if count % 2 else count


def check_release_sizes(channels: int, processed: int) -> None:
    """The shapes the release can run: it fails (RuntimeError) otherwise, so no output to match."""
    if processed > channels:
        raise ValueError(f"the release would process {processed} of {channels} channels "
                         "(an odd channel count at 100% rounds up past it): its BatchNorm fails")
    if processed < 4 or processed % 4:
        raise ValueError(f"the release views each group of {processed // 2} channels as (2, {processed // 4}): "
                         f"only a processed count divisible by 4 runs there, got {processed}")


def release_output_order(processed: int) -> list[int]:
    """For each of the first ``processed`` output channels, which fused channel it holds (gsf.py:81-87).

    Fused channels are numbered as [Z1 (P/2 channels); Z2 (P/2 channels)]. Within each group the
    release views its P/2 channels as (2, P/4) and transposes to (P/4, 2): output position
    2*b + a of the group holds the group's channel a*P/4 + b. The two groups are not mixed:
    group 1 fills positions [0, P/2), group 2 [P/2, P). P = 8 gives [0, 2, 1, 3, 4, 6, 5, 7].
    """
    half, quarter = processed // 2, processed // 4
    return [group * half + a * quarter + b for group in range(2) for b in range(quarter) for a in range(2)]


def frame_from_next(y: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W): out[t] = y[t + 1]; the last frame gets zeros (the release's lshift_zeroPad)."""
    out = torch.zeros_like(y)
    out[:, :, :-1] = y[:, :, 1:]
    return out


def frame_from_previous(y: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W): out[t] = y[t - 1]; frame 0 gets zeros (the release's rshift_zeroPad)."""
    out = torch.zeros_like(y)
    out[:, :, 1:] = y[:, :, :-1]
    return out


def fusion_weight(weight: torch.Tensor, bias: torch.Tensor, shifted: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The release's fusion weight for one group (gsf.py:59-76), shape (N, C/2, T, 1, 1).

    Both tensors are averaged over H and W, giving (N, C/2, T) each, and stacked as the two input
    planes of a 2-D image in the order [shifted, residual], with channels along the image's height
    and frames along its width. A 3x3 conv (zero padding 1, with bias) maps that to one plane,
    sigmoid gives the weight of the shifted part; the residual gets one minus it.
    """
    planes = torch.stack([shifted.mean(dim=(3, 4)), residual.mean(dim=(3, 4))], dim=1)  # (N, 2, C/2, T)
    return torch.sigmoid(F.conv2d(planes, weight, bias, padding=1))[:, 0, :, :, None, None]


def release_gsf_forward(
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    num_segments: int,
    ratio: float = 100,
    training: bool = False,
    running_stats: dict | None = None,
) -> torch.Tensor:
    """The release's GSF of ``x`` (N*T, C, H, W), frames of a clip consecutive; returns the same shape.

    ``ratio`` is the release's ``gsf_ch_ratio`` (a percentage). ``training`` picks BatchNorm's batch
    statistics (and a running-statistics update) over the stored ones, as ``module.train()`` does.
    ``weights`` is never modified; in training the updated running mean and variance go into
    ``running_stats`` (keys "mean", "var") when a dict is given.
    """
    nt, c, h, w = x.shape
    t = num_segments
    if nt % t:
        raise ValueError(f"{nt} frames is not a multiple of num_segments={t}")
    n = nt // t
    p = release_processed_channels(c, ratio)
    check_release_sizes(c, p)
    half = p // 2

    # The first P channels as clips (N, P, T, H, W); the rest passes through untouched.
    clip = x[:, :p].reshape(n, t, p, h, w).permute(0, 2, 1, 3, 4)

    # Gate: BatchNorm3d over (N, T, H, W) per channel, ReLU, then a grouped 3x3x3 conv
    # (zero padding 1 in time and space, with bias): output plane g sees only group g's channels.
    mean, var = weights["bn.running_mean"].clone(), weights["bn.running_var"].clone()
    normed = F.batch_norm(clip, mean, var, weights["bn.weight"], weights["bn.bias"], training, BN_MOMENTUM, BN_EPS)
    if running_stats is not None:
        running_stats["mean"], running_stats["var"] = mean, var
    gate = torch.tanh(F.conv3d(F.relu(normed), weights["conv3D.weight"], weights["conv3D.bias"], padding=1, groups=2))

    # The gate multiplies the raw input (not its normalised version); the residual is what is left.
    x1, x2 = clip[:, :half], clip[:, half:]
    gated1, gated2 = gate[:, 0:1] * x1, gate[:, 1:2] * x2
    residual1, residual2 = x1 - gated1, x2 - gated2

    # Shift: group 1 takes the next frame's gated features, group 2 the previous frame's.
    shifted1, shifted2 = frame_from_next(gated1), frame_from_previous(gated2)

    f1 = fusion_weight(weights["channel_conv1.weight"], weights["channel_conv1.bias"], shifted1, residual1)
    f2 = fusion_weight(weights["channel_conv2.weight"], weights["channel_conv2.bias"], shifted2, residual2)
    fused = torch.cat([f1 * shifted1 + (1 - f1) * residual1, f2 * shifted2 + (1 - f2) * residual2], dim=1)

    # Output channel order: each group's halves interleaved; untouched channels appended after.
    fused = fused[:, release_output_order(p)]
    frames = fused.permute(0, 2, 1, 3, 4).reshape(nt, p, h, w)
    return torch.cat([frames, x[:, p:]], dim=1)


def random_release_weights(channels: int, ratio: float = 100, seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """A random single-module state dict under the release's key names (non-trivial BN statistics)."""
    g = torch.Generator().manual_seed(seed)
    p = release_processed_channels(channels, ratio)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale)

    return {
        "conv3D.weight": rand(2, p // 2, 3, 3, 3, scale=0.2),
        "conv3D.bias": rand(2, scale=0.2),
        "bn.weight": 1 + rand(p, scale=0.2),
        "bn.bias": rand(p, scale=0.2),
        "bn.running_mean": rand(p, scale=0.3),
        "bn.running_var": 0.5 + torch.rand(p, generator=g, dtype=dtype),
        "bn.num_batches_tracked": torch.tensor(7),
        "channel_conv1.weight": rand(1, 2, 3, 3, scale=0.5),
        "channel_conv1.bias": rand(1, scale=0.5),
        "channel_conv2.weight": rand(1, 2, 3, 3, scale=0.5),
        "channel_conv2.bias": rand(1, scale=0.5),
    }
