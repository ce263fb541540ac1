"""Which implementation a temporal module runs: ``impl="auto" | "reference" | "fast"``."""
from __future__ import annotations

import torch
from torch.autograd import forward_ad

IMPLS = ("auto", "reference", "fast")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    return impl


def use_fast(impl: str, x: torch.Tensor) -> bool:
    """Whether a module with ``impl`` runs its fast implementation on ``x``.

    "auto" takes the fast one only where it was measured to pay and is known to work: eager
    PyTorch on CPU. Not on CUDA: on an H200 in fp16 its forward took 2.1x (ResNet-50) and 1.8x
    (BNInception) the readable one's at batch 1, its training step 0.79x and 1.00x at batch 32
    (benchmarks/gpu_check.py, docs/gpu.md); its gradients on CUDA are not yet checked against the
    readable ones, so training does not switch to it either. Not under torch.compile (inductor
    fuses the readable version itself), not under jit tracing (fvcore; a trace must not keep the
    fast path's per-thread workspace), and not under forward-mode AD or torch.func transforms,
    which its hand-written backward lacks.
    """
    if impl != "auto":
        return impl == "fast"
    return (x.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and forward_ad._current_level < 0 and torch._C._functorch.maybe_current_level() is None)
