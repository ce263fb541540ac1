"""How much slower is a GSF network than its TSN baseline? Measured side by side, interleaved.

    python benchmarks/gsf_speed.py --threads 2 --rounds 10 --backbones resnet50 bninception
    python benchmarks/gsf_speed.py --device cuda --modules tsm gsf --impls reference fast --compile

For every backbone it builds the harness's models (``gsf.build_model``, paper configuration:
ResNet-50 with GSF after conv3 on 25% of the channels in all 16 blocks, BN-Inception with GSF on
the 1x1 branch, 100%, in its 10 blocks) for TSN (no temporal module) and each ``--modules`` entry
in each ``--impls`` implementation (``auto``: what the module picks on that device; ``reference``:
the readable one; ``fast``: the CPU-tuned one), with ``--compile`` also each as
``torch.compile(model)`` (inductor), and times, round-robin in one process so that machine noise
hits all models alike:

- forward: eval mode, ``torch.inference_mode()``, one clip of ``--frames`` frames;
- forward+backward: train mode, cross-entropy on random labels, ``--train-clips`` clips.

Ratios are the median over rounds of (model time / TSN time) within the same round, a compiled
model against the compiled TSN; the ms columns are plain medians; "first s" is each model's first
call, alone (for a compiled model: its compilation). ``--device cpu``: fp32 (or ``--amp bf16``),
wall clock. ``--device cuda``: fp16 autocast (the paper's Table 12 setting), CUDA events after
synchronisation.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAPER_SETUP = {"resnet50": "GSF after conv3, 25% of the channels, 16 blocks",
               "bninception": "GSF on the 1x1 branch, 100% of the channels, 10 blocks"}


def build(backbone: str, module: str, frames: int, impl: str = "auto"):
    from gsf import build_model

    torch.manual_seed(0)
    return build_model(backbone=backbone, module=module, num_frames=frames, num_classes=174,
                       module_options={"impl": impl})


class Timer:
    """Wall clock on CPU; CUDA events (after a synchronisation) on GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def forward_step(model, x, autocast):
    def step():
        with torch.inference_mode(), autocast:
            model(x)
    return step


def train_step(model, x, labels, autocast):
    def step():
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(x), labels)
        loss.backward()
    return step


def measure(models: dict, make_step, timer: Timer, rounds: int, warmup: int) -> tuple[dict, dict]:
    """Per model: the times of ``rounds`` interleaved rounds, and of its first call (alone)."""
    steps = {name: make_step(model) for name, model in models.items()}
    first = {name: timer(step) / 1e3 for name, step in steps.items()}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        # Interleaved: every round times every model once, starting with a different one each
        # round (the first model after a switch pays for the caches the previous one left).
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timer(steps[name]))
    return times, first


def report(rows: list[tuple]):
    width = max(6, *(len(name) for *_, times, _ in rows for name in times))
    head = (f"{'backbone':<12} {'device':<6} {'mode':<22} {'model':<{width}} "
            f"{'median ms':>10} {'min ms':>9} {'x TSN':>7} {'first s':>8}")
    print(head)
    print("-" * len(head))
    for backbone, device, mode, times, first in rows:
        for name, ts in times.items():
            base = times["TSN compiled" if name.endswith(" compiled") else "TSN"]
            ratio = statistics.median(a / b for a, b in zip(ts, base))
            print(f"{backbone:<12} {device:<6} {mode:<22} {name:<{width}} "
                  f"{statistics.median(ts):>10.1f} {min(ts):>9.1f} {ratio:>7.3f} {first[name]:>8.1f}")
    print()


def build_models(args, backbone: str, device: torch.device) -> dict:
    """TSN and every (module, impl), each also compiled with --compile: name -> model on ``device``."""
    models = {"TSN": build(backbone, "none", args.frames)}
    for module in args.modules:
        for impl in args.impls:
            name = module.upper() if impl == "auto" else f"{module.upper()} {impl}"
            models[name] = build(backbone, module, args.frames, impl)
    for model in models.values():
        model.to(device)
    if args.compile:
        models.update({f"{name} compiled": torch.compile(model, mode=args.compile_mode)
                       for name, model in list(models.items())})
    return models


def run_device(args, device: torch.device):
    timer = Timer(device)
    if args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda"):
        dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
        autocast, precision = torch.autocast(device.type, dtype=dtype), f"{dtype} autocast"
    else:
        autocast, precision = nullcontext(), "fp32"
    size = args.size
    for backbone in args.backbones:
        models = build_models(args, backbone, device)
        rows = []
        if "forward" in args.modes:
            x = torch.randn(args.clips, args.frames, 3, size, size, device=device)
            for model in models.values():
                model.eval()
            times, first = measure(models, lambda m: forward_step(m, x, autocast), timer, args.rounds, args.warmup)
            rows.append((backbone, device.type, f"forward {args.clips}x{args.frames}x3x{size}x{size}", times, first))
        if "train" in args.modes:
            for clips in args.train_clips:
                x = torch.randn(clips, args.frames, 3, size, size, device=device)
                labels = torch.randint(0, 174, (clips,), device=device)
                for model in models.values():
                    model.train()
                times, first = measure(models, lambda m: train_step(m, x, labels, autocast), timer,
                                       args.train_rounds or args.rounds, args.warmup)
                rows.append((backbone, device.type, f"fwd+bwd {clips}x{args.frames}x3x{size}x{size}", times, first))
        print(f"{backbone}: {PAPER_SETUP.get(backbone, '')}; {precision}; {args.rounds} rounds after {args.warmup} warm-up")
        report(rows)
        del models


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds (each times every model once)")
    ap.add_argument("--train-rounds", type=int, default=None, help="rounds for forward+backward (default: --rounds)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--backbones", nargs="+", default=["resnet50", "bninception"])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--modules", nargs="+", default=["gsf"],
                    help="temporal modules to compare with TSN (gsf, gsm, tsm, stsm)")
    ap.add_argument("--impls", nargs="+", default=["auto"], choices=["auto", "reference", "fast"],
                    help="implementations of each module, side by side")
    ap.add_argument("--compile", action="store_true",
                    help="also time every model as torch.compile(model) (inductor), against the compiled TSN")
    ap.add_argument("--compile-mode", default=None, choices=[None, "default", "reduce-overhead", "max-autotune"],
                    help="torch.compile mode (reduce-overhead: CUDA graphs, which remove the launch cost per kernel)")
    ap.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                    help="auto: fp16 autocast on CUDA, fp32 on CPU; bf16: bf16 autocast; off: fp32")
    ap.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--clips", type=int, default=1, help="clips per forward batch")
    ap.add_argument("--train-clips", type=int, nargs="+", default=[1, 2], help="clips per forward+backward batch")
    ap.add_argument("--thp", action="store_true",
                    help="re-run with THP_MEM_ALLOC_ENABLE=1: PyTorch's CPU allocator asks for huge pages, "
                         "so fresh activations cost far fewer page faults (expensive in a VM); applies to "
                         "every model alike")
    args = ap.parse_args(argv)
    if args.thp and os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        # Read by c10 when it allocates: set it before this process has touched torch memory.
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}")
    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, "
          f"MALLOC_* env: {sorted(k for k in os.environ if k.startswith('MALLOC_')) or 'none'}")
    print(f"input: (clips, frames, 3, {args.size}, {args.size}) float32 from randn; frames={args.frames}; "
          f"forward clips={args.clips}; forward+backward clips={args.train_clips}")
    print("ratio column: median over rounds of (model ms / TSN ms in the same round; compiled: / TSN compiled)\n")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is visible to torch")
        print(f"CUDA: {torch.cuda.get_device_name()}")
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its algorithms once, as training does
    run_device(args, torch.device(args.device))


if __name__ == "__main__":
    main()
