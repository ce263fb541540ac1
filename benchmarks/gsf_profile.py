"""Where a GSF network's extra time goes: the kernels of one step, TSN's and GSF's, side by side.

    python benchmarks/gsf_profile.py --device cuda --backbone resnet50 --impls reference taps --batch 32

Builds TSN and GSF (each ``--impls`` entry) at the paper's configuration (``gsf_speed.build``),
runs one warm-up step and one profiled step (``torch.profiler``) of each in ``--mode`` (train:
forward, cross-entropy, backward; forward: eval, inference mode) under fp16 autocast on CUDA
(fp32 on CPU), and prints per model the ``--top`` operators by self device time, then the
operators GSF spends more time in than TSN. Only numbers from one process and one device are
compared.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gsf_speed import build  # noqa: E402


def step(model, x, labels, mode: str, autocast):
    if mode == "forward":
        with torch.inference_mode(), autocast:
            model(x)
        return
    model.zero_grad(set_to_none=True)
    with autocast:
        loss = F.cross_entropy(model(x), labels)
    loss.backward()


def self_times(model, x, labels, mode: str, autocast, device) -> dict[str, float]:
    """Operator name -> self time (ms) on the device (CPU time without a GPU) of one step."""
    model.train(mode == "train")
    step(model, x, labels, mode, autocast)  # warm-up (cuDNN's algorithm search included)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(model, x, labels, mode, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {e.key: getattr(e, key) / 1e3 for e in prof.key_averages() if getattr(e, key) > 0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--impls", nargs="+", default=["reference"], help="GSF implementations (module_options impl)")
    ap.add_argument("--mode", choices=["train", "forward"], default="train")
    ap.add_argument("--batch", type=int, default=32, help="clips per step")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    x = torch.randn(args.batch, args.frames, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 174, (args.batch,), device=device)
    models = {"TSN": build(args.backbone, "none", args.frames)}
    models.update({f"GSF {impl}": build(args.backbone, "gsf", args.frames, impl) for impl in args.impls})
    times = {}
    for name, model in models.items():
        times[name] = self_times(model.to(device), x, labels, args.mode, autocast, device)
        model.cpu()
    unit = "device" if device.type == "cuda" else "CPU"
    print(f"{args.backbone}, {args.mode}, {args.batch} x {args.frames} x 3 x {args.size}^2, {device.type}: "
          f"self {unit} time per operator, ms")
    for name, t in times.items():
        print(f"\n{name}: {sum(t.values()):.1f} ms in all")
        for op, ms in sorted(t.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {ms:9.2f}  {op}")
    for name, t in times.items():
        if name == "TSN":
            continue
        extra = {op: ms - times["TSN"].get(op, 0.0) for op, ms in t.items()}
        print(f"\n{name} minus TSN: {sum(extra.values()):+.1f} ms; the operators that differ most")
        for op, ms in sorted(extra.items(), key=lambda kv: -abs(kv[1]))[:args.top]:
            print(f"  {ms:+9.2f}  {op}")


if __name__ == "__main__":
    main()
