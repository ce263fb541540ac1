"""The first thing to run on a new GPU machine: what GSF costs against TSN there, in one budgeted run.

    python benchmarks/gpu_check.py                        # CUDA, the paper's sizes, ~330 s of work
    python benchmarks/gpu_check.py --device cpu --tiny    # the same code at tiny sizes on CPU (~4 min)
    python benchmarks/gpu_check.py --list                 # the check items, in the order they run
    python benchmarks/gpu_check.py --only 'eager-*' --budget-s 600 --out DIR --compile-backend aot_eager

It builds the models of the paper's Table 12 (``gsf.build_model``, as ``ablations/table12_latency.yaml``:
TSN, TSM, GSM and GSF on ResNet-50 and BNInception, 174 classes, 8 frames) and measures, side by side:

- the forward latency of one 8-frame 224 px clip (eval mode, ``torch.inference_mode()``: the paper's
  Table 12 protocol) and the training step of 32 clips (forward, cross-entropy, backward, SGD with
  momentum; a GradScaler under fp16), each eager and ``torch.compile``d (inductor), in fp16 and
  bf16 autocast, with peak memory;
- GSF's fast implementation (``impl="fast"``, written for CPU) against the readable one on CUDA:
  speed, agreement with the same weights, and which of the two ``impl="auto"`` should pick there;
- with 2+ GPUs, a DistributedDataParallel training step of GSF ResNet-50 against one GPU;
- ``data.decode: cuda`` (nvjpeg) against the CPU's JPEG decoding on frame folders: training
  clips/s and how far the pixels are apart.

Models of one setting are timed round-robin in one process (each round times every model once),
so machine noise hits all alike: "x TSN" is the median over rounds of (model ms / TSN ms in the
same round), a compiled model against the compiled TSN. Times are CUDA events after a
synchronisation (wall clock on CPU); a model's first call is timed alone ("compile s": for a
compiled model, its compilation).

Budget. Cold inductor compiles take tens of seconds to minutes per model and mode, so the whole
matrix does not fit in a few minutes. The checks are items, run in priority order (``plan``):
the environment; eager fp16 (all 8 models); the training loop; frame decoding; fast vs readable GSF; eager bf16; compiled fp16 TSN
and GSF; compiled fp16 TSM and GSM; compiled bf16; DDP. An item starts only if the time left
under ``--budget-s`` (default 330 s, 240 s with --tiny; counted from the start, torch's import
included) exceeds its estimate (the longest item of its kind so far, else a conservative
default); otherwise it is recorded "not run: time budget". Another GPU-minute buys the next items:
``--budget-s 600``, or ``--only`` what is missing. An item
that raises (CUDA out of memory included) is recorded with its error, the memory is freed, and
the next one runs. ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` are rewritten before and after
every item, so a run killed at its time limit leaves everything measured so far (the item it was
in shows as "running"). Exit status: 0 when the run reached its end, failed items or not; 2 on a
bad command line or with ``--device cuda`` and no CUDA device; 130 on Ctrl-C (files written).

On a bare GPU machine (python 3.12 + torch, torchvision, timm, numpy: no project install; this
script imports no fvcore, Ray, MLflow or PyAV) the one extra is pydantic, which ``gsf.model``
uses; its wheels (and a typing_extensions new enough for it) are pinned in
``benchmarks/gpu_check_requirements.txt``. On a machine with PyPI:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl -r benchmarks/gpu_check_requirements.txt          # ~3 MB

then copy the checkout with ``.whl/`` to the GPU machine and run from the repository root:

    pip install --no-index --no-deps --target /tmp/gsfdeps .whl/*.whl
    PYTHONPATH=/tmp/gsfdeps python benchmarks/gpu_check.py

Reading the output: ``gpu_check.md`` starts with the machine, what ran and what failed, then one
table per backbone x dtype x eager/compiled, the paper's Table 12 beside ours, the fast-vs-readable
verdict, and the target check (GSF within 1.15x of TSN, forward and training step, fp16). The
JSON holds the environment and every item (status ok / failed / not run / running, seconds,
results; per model the raw per-round times). Adding a check: write ``def my_item(bench) -> dict``
and append ``Item("my-item", priority, (estimate_gpu_s, estimate_tiny_s), my_item, kind)`` in
``plan``; a ``{"records": [...]}`` result in the timing format also lands in the tables.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import gc
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Callable

STARTED = time.monotonic()  # the budget counts from here: importing torch (seconds) is in it

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gsf_speed  # noqa: E402 (its timer; it imports torch alone)

BACKBONES = ("resnet50", "bninception")
# The paper's configurations, as ablations/table12_latency.yaml builds them.
MODELS = {
    "resnet50": {"TSN": {"module": "none"},
                 "TSM": {"module": "tsm", "placement": "input"},
                 "GSM": {"module": "gsm", "placement": "conv3", "shift_ratio": 0.25},
                 "GSF": {"module": "gsf", "placement": "conv3", "shift_ratio": 0.25}},
    "bninception": {"TSN": {"module": "none"},
                    "TSM": {"module": "tsm", "placement": "branch4"},
                    "GSM": {"module": "gsm", "placement": "branch4", "shift_ratio": 1.0},
                    "GSF": {"module": "gsf", "placement": "branch4", "shift_ratio": 1.0}},
}
NUM_CLASSES = 174
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TARGET_X_TSN = 1.15
# Agreement of GSF's two implementations (max |a - b| / max |reference|). fp16 keeps 11 bits (unit
# roundoff 4.9e-4): one GSF layer's output lands within ~1e-3 of its scale, so 2e-2 passes rounding
# and fails what a wrong shift, gate or fusion gives (O(1)). The logits come after ~50 conv/BN
# layers, which can amplify fp16 rounding past that (a thin ResNet-50 on CPU: the readable one's
# own fp16 logits are 6e-2 from its fp32 ones): there the two may differ by up to 2e-2 or by what
# fp16 moves the readable one, whichever is larger. fp32, TF32 off: only the summation order
# differs (a GEMM against a conv3d), ~1e-6, so 1e-3 everywhere.
TOL_FP16, TOL_FP32 = 2e-2, 1e-3
FORBIDDEN = ("fvcore", "ray", "mlflow", "av")  # not on a bare GPU machine: never imported here
PAPER_TABLE12 = os.path.join(ROOT, "reports", "paper", "table12_latency.csv")


@dataclass(frozen=True)
class Sizes:
    """What one run measures at: the paper's sizes on a GPU, or tiny ones (--tiny) on a 2-core CPU."""

    frames: int = 8
    size: int = 224
    forward_batch: int = 1
    train_batch: int = 32
    width_mult: dict = field(default_factory=lambda: {b: 1.0 for b in BACKBONES})
    forward_warmup: int = 5
    forward_rounds: int = 30
    train_warmup: int = 3
    train_rounds: int = 10


PAPER = Sizes()
# Thin backbones at 32 px (both take multiples of 32; the last stage is 1x1) and 8 frames: a fp16
# train step of 2 clips costs ~0.2 s on 2 cores (64 px: ~0.7 s; CPU fp16 backward is slow).
TINY = Sizes(size=32, train_batch=2, width_mult={"resnet50": 0.125, "bninception": 0.125},
             forward_warmup=1, forward_rounds=3, train_warmup=1, train_rounds=2)


class Skip(Exception):
    """An item that does not apply on this machine (e.g. DDP with one GPU): recorded "not run"."""


# -- models ------------------------------------------------------------------------------------


def build(backbone: str, name: str, sizes: Sizes, impl: str = "auto") -> nn.Module:
    """One of the paper's models (``MODELS``), same initial weights every time (seed 0)."""
    from gsf import build_model

    options = dict(MODELS[backbone][name])
    if impl != "auto":
        options["module_options"] = {"impl": impl}
    if sizes.width_mult[backbone] != 1.0:
        options["width_mult"] = sizes.width_mult[backbone]
    torch.manual_seed(0)
    return build_model(backbone=backbone, num_classes=NUM_CLASSES, num_frames=sizes.frames, **options)


def compile_model(model: nn.Module, backend: str) -> nn.Module:
    """``torch.compile(model)`` with static shapes and room for every model, phase and dtype."""
    config = torch._dynamo.config
    # All models run one code object (TSN.forward); dynamo keeps a cache entry per model, phase
    # and dtype under it and, past its limit (8), silently runs the rest eagerly.
    for name in ("recompile_limit", "cache_size_limit"):
        try:
            setattr(config, name, max(getattr(config, name), 128))
        except (AttributeError, TypeError):
            pass
    # dynamic=False: a forward at batch 1, then a train step at batch 32 of the same code object
    # would otherwise be recompiled with a dynamic batch dimension (other kernels, other speed).
    return torch.compile(model, backend=backend, dynamic=False)


class ModelCache:
    """Models built once per run, on the device, each handed out in its initial state.

    A train step changes weights and BatchNorm statistics, so every measurement starts from the
    same state; a compiled model is compiled once per phase and dtype, so later items reuse the
    compiled TSN as their baseline.
    """

    def __init__(self, sizes: Sizes, device: torch.device):
        self.sizes, self.device = sizes, device
        self._models, self._initial, self._compiled, self._seen = {}, {}, {}, set()

    def get(self, backbone: str, name: str, impl: str = "auto") -> nn.Module:
        key = (backbone, name, impl)
        if key not in self._models:
            model = build(backbone, name, self.sizes, impl).to(self.device)
            self._models[key] = model
            self._initial[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model = self._models[key]
        model.load_state_dict(self._initial[key])
        model.zero_grad(set_to_none=True)
        return model

    def compiled(self, backbone: str, name: str, backend: str) -> nn.Module:
        eager = self.get(backbone, name)
        key = (backbone, name, backend)
        if key not in self._compiled:
            self._compiled[key] = compile_model(eager, backend)
        return self._compiled[key]

    def first_compile(self, backbone: str, name: str, phase: str, dtype: str) -> bool:
        """True the first time a compiled model runs this phase and dtype (its first call compiles)."""
        key = (backbone, name, phase, dtype)
        fresh = key not in self._seen
        self._seen.add(key)
        return fresh

    def clear(self) -> None:
        self._models.clear(), self._initial.clear(), self._compiled.clear(), self._seen.clear()


# -- timing ------------------------------------------------------------------------------------


class Timer(gsf_speed.Timer):
    """gsf_speed's timer (CUDA events after a synchronisation on GPU, wall clock on CPU: ms), and
    ``wall``: seconds, any device."""

    def wall(self, fn: Callable[[], None]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def inputs(sizes: Sizes, batch: int, device: torch.device, seed: int = 1):
    """Random clips (batch, T, 3, S, S) and labels: the same for every model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sizes.frames, 3, sizes.size, sizes.size, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return x.to(device), labels.to(device)


def autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=DTYPES[dtype]) if dtype in DTYPES else nullcontext()


def forward_step(model: nn.Module, x: torch.Tensor, device: torch.device, dtype: str):
    def step():
        with torch.inference_mode(), autocast(device, dtype):
            model(x)
    return step


def train_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, device: torch.device, dtype: str):
    """What training pays per batch. The optimizer's momentum buffers appear at the first step
    (a warm-up step); fp16 scales the loss as training must (its overflow check syncs once a step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def time_round_robin(steps: dict, timer: Timer, rounds: int, warmup: int) -> tuple[dict, dict]:
    """Per model: its first call alone (wall s; a compiled model compiles there), and the ms of
    ``rounds`` interleaved rounds after ``warmup`` untimed ones. Each round starts with another
    model: the first after a switch pays for the caches the previous one left."""
    first = {name: timer.wall(step) for name, step in steps.items()}
    for _ in range(warmup):
        for step in steps.values():
            step()
    names = list(steps)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timer(steps[name]))
    return first, times


def peak_mb(model: nn.Module, step: Callable[[], None], device: torch.device) -> float | None:
    """Memory one step needs above what is resident before it (all models' weights, the optimizer
    state): activations, gradients, workspaces. CUDA only."""
    if device.type != "cuda":
        return None
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def measure_models(bench: "Bench", backbone: str, dtype: str, models: dict, phases=("forward", "train"),
                   mode: str = "eager") -> list[dict]:
    """Time ``models`` (name -> module, TSN among them) round-robin, per phase: one record per model."""
    s, device = bench.sizes, bench.device
    records = []
    for phase in phases:
        batch = s.forward_batch if phase == "forward" else s.train_batch
        x, labels = inputs(s, batch, device)
        for model in models.values():
            model.train(phase == "train")
        steps = {name: forward_step(m, x, device, dtype) if phase == "forward" else
                 train_step(m, x, labels, device, dtype) for name, m in models.items()}
        rounds, warmup = (s.forward_rounds, s.forward_warmup) if phase == "forward" else (s.train_rounds, s.train_warmup)
        first, times = time_round_robin(steps, bench.timer, rounds, warmup)
        for name, model in models.items():
            records.append({
                "backbone": backbone, "dtype": dtype, "mode": mode, "phase": phase, "batch": batch,
                "model": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                "ms": statistics.median(times[name]), "min_ms": min(times[name]),
                "x_tsn": median_ratio(times[name], times["TSN"]) if "TSN" in times else None,
                "peak_mb": peak_mb(model, steps[name], device), "first_s": first[name],
                "times_ms": times[name]})
        del steps
    return records


# -- the items ---------------------------------------------------------------------------------


def environment(bench: "Bench") -> dict:
    """What the numbers were measured on, and whether gsf imports (pydantic is its one extra)."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
           "device": str(bench.device), "torch_threads": torch.get_num_threads(),
           "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
           "packages": {d: version(d) for d in ("torchvision", "timm", "numpy", "pydantic", "pydantic-core",
                                                 "typing-extensions", "triton")}}
    if bench.device.type == "cuda":
        env["gpus"] = [_gpu(i) for i in range(torch.cuda.device_count())]
        env["driver"] = _driver()
        free, _ = torch.cuda.mem_get_info()
        env["gpu0_free_GiB"] = round(free / 2**30, 1)
    try:
        import gsf  # noqa: F401

        env["gsf_import"] = "ok"
    except Exception as e:  # noqa: BLE001 (reported; every model item will fail with it)
        env["gsf_import"] = (f"failed: {type(e).__name__}: {e} (install benchmarks/gpu_check_requirements.txt's "
                             "wheels: see this script's docstring)")
        print(f"\ngpu_check: gsf does not import, every model item will fail: {env['gsf_import']}",
              file=sys.stderr, flush=True)
    bench.environment = env
    return env


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _gpu(index: int) -> dict:
    p = torch.cuda.get_device_properties(index)
    return {"name": p.name, "memory_GiB": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count}


def eager_item(backbone: str, dtype: str, bench: "Bench") -> dict:
    """TSN, TSM, GSM and GSF eager: batch-1 forward and the training step, round-robin."""
    models = {name: bench.models.get(backbone, name) for name in MODELS[backbone]}
    return {"records": measure_models(bench, backbone, dtype, models)}


def compiled_item(backbone: str, dtype: str, phase: str, names: tuple, bench: "Bench") -> dict:
    """``names`` (TSN first) compiled, one phase. A model compiled for this phase and dtype in an
    earlier item (the TSN baseline) is reused: its first call is then no compilation."""
    backend = bench.args.compile_backend
    models = {name: bench.models.compiled(backbone, name, backend) for name in names}
    fresh = {name: bench.models.first_compile(backbone, name, phase, dtype) for name in names}
    records = measure_models(bench, backbone, dtype, models, (phase,), mode=f"compiled ({backend})")
    for r in records:
        r["compile_s"] = r["first_s"] if fresh[r["model"]] else None
    return {"records": records, "backend": backend}


def impl_item(backbone: str, bench: "Bench") -> dict:
    """GSF ``impl="fast"`` (written for CPU) against ``impl="reference"`` (the readable one), eager
    fp16: agreement with the same weights, speed beside TSN, and which one "auto" should pick."""
    out = {"agreement": None, "fast_error": None}
    try:
        out["agreement"] = agreement(backbone, bench)
    except Exception as e:  # noqa: BLE001 (the fast one may never have run here: that is a finding)
        out["fast_error"] = _error(e, "agreement")
    models = {"TSN": bench.models.get(backbone, "TSN"),
              "GSF readable": bench.models.get(backbone, "GSF", "reference")}
    if out["fast_error"] is None:
        fast = bench.models.get(backbone, "GSF", "fast")
        try:
            _smoke_train(fast, bench)
            models["GSF fast"] = bench.models.get(backbone, "GSF", "fast")
        except Exception as e:  # noqa: BLE001
            out["fast_error"] = _error(e, "train step")
    out["records"] = measure_models(bench, backbone, "fp16", models)
    out["recommendation"] = recommend(out, bench.device)
    return out


def _smoke_train(model: nn.Module, bench: "Bench") -> None:
    """One training step at the timed size: does this implementation's backward run here?"""
    x, labels = inputs(bench.sizes, bench.sizes.train_batch, bench.device)
    model.train()
    train_step(model, x, labels, bench.device, "fp16")()
    bench.timer.sync()


def fit_item(bench: "Bench") -> dict:
    """The project's own training loop, ``harness.train.fit``, as a trial runs it on this device:
    GSF ResNet-50 on the synthetic benchmark (rendered by the loader processes; no files), one
    epoch and one evaluation. uint8 batches from pinned memory, normalised on the device, fp16
    autocast with a GradScaler on CUDA, cudnn.benchmark: its clips/s and ``data_wait_fraction``
    (the share of the epoch spent waiting for the loader) say whether the loader keeps up."""
    from gsf import build_model
    from harness.spec import TrialConfig
    from harness.train import fit

    tiny = bench.args.tiny
    workers = 1 if tiny else max(1, min(8, (os.cpu_count() or 2) - 1))
    batch, steps, size = (2, 4, 32) if tiny else (32, 24, 112)
    cfg = TrialConfig.model_validate({
        "model": {"backbone": "resnet50", "module": "gsf", "placement": "conv3", "shift_ratio": 0.25,
                  "num_classes": 12, "num_frames": bench.sizes.frames, "width_mult": bench.sizes.width_mult["resnet50"]},
        "data": {"dataset": "synthetic", "num_classes": 12, "frame_size": size, "input_size": size,
                 "train_size": batch * steps, "val_size": 4 * batch, "workers": workers},
        "train": {"epochs": 1, "batch_size": batch, "lr": 0.01, "lr_batch": batch, "warmup_epochs": 0,
                  "device": bench.device.type},
    })
    torch.manual_seed(0)
    epochs: list[dict] = []
    t0 = time.monotonic()
    fit(build_model(cfg.model), cfg, seed=0, device=bench.device, cpus=workers + 1,
        on_epoch=lambda metrics, epoch: epochs.append(metrics))
    (m,) = epochs
    return {"setting": f"GSF ResNet-50, synthetic {size} px, {bench.sizes.frames} frames, batch {batch}, "
                       f"{steps} steps, {workers} loader processes, amp {cfg.train.amp}",
            "train_clips_per_s": m["train_clips"] / m["epoch_seconds"], "data_wait_fraction": m["data_wait_fraction"],
            "epoch_seconds": m["epoch_seconds"], "train_steps": m["train_steps"], "val_clips": m["val_clips"],
            "train_loss": m["train_loss"], "wall_s": time.monotonic() - t0}


def data_decode_item(bench: "Bench") -> dict:
    """``data.decode: cuda`` against ``cpu``: training clips/s of frame folders (8 frames, the
    training transform, 224 px) read in this process with nvjpeg against libjpeg-turbo on one core
    (one torch thread: what one loader worker does), round-robin, and how far nvjpeg's pixels are
    from libjpeg-turbo's on the same clips (its IDCT and chroma upsampling differ). Folders of
    SS-V1's size (176x100) and of prepared Kinetics (340x256), written by data_speed.py's writer
    (PIL JPEGs, quality 90). Without CUDA only the CPU side runs, and the CUDA side says why."""
    import numpy as np

    import data_speed
    from harness.data import DataConfig, build_datasets

    videos, rounds, clips = (2, 2, 4) if bench.args.tiny else (8, 5, 32)
    sizes = ((176, 100),) if bench.args.tiny else ((176, 100), (340, 256))
    cuda = bench.device.type == "cuda"
    threads = torch.get_num_threads()
    out = {"setting": f"{videos} folders x 48 frames per size, {clips} training clips a round, {rounds} rounds, "
                      "CPU side on 1 torch thread", "sizes": {}}
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check-frames-") as tmp:
            for w, h in sizes:
                section = data_speed.write_something(Path(tmp) / f"{w}x{h}", videos, size=(w, h))
                datasets = {decode: build_datasets(DataConfig(**section, decode=decode, workers=0), num_frames=8)[0]
                            for decode in (("cpu", "cuda") if cuda else ("cpu",))}
                draws = [(i % videos, 1000 + i) for i in range(clips)]
                rates = {decode: [] for decode in datasets}
                for _ in range(rounds + 1):  # the first round warms up (nvjpeg's handle, the page cache)
                    for decode, ds in datasets.items():
                        t0 = time.perf_counter()
                        for draw in draws:
                            ds[draw]
                        rates[decode].append(clips / (time.perf_counter() - t0))
                row = {f"{d}_clips_per_s": statistics.median(r[1:]) for d, r in rates.items()}
                if cuda:
                    row["cuda_x_cpu"] = row["cuda_clips_per_s"] / row["cpu_clips_per_s"]
                    diffs = [(datasets["cuda"][d][0].int() - datasets["cpu"][d][0].int()).abs() for d in draws[:videos]]
                    row |= {"max_abs_diff": max(int(d.max()) for d in diffs),
                            "mean_abs_diff": float(np.mean([d.float().mean().item() for d in diffs]))}
                else:
                    row["cuda"] = "not run: no CUDA device"
                out["sizes"][f"{w}x{h}"] = row
    finally:
        torch.set_num_threads(threads)
    return out


@contextmanager
def exact_fp32():
    """fp32 as fp32: CUDA convolutions default to TF32 (10-bit mantissa), no reference for fp16."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def calibrate(model: nn.Module, x: torch.Tensor) -> None:
    """BatchNorm running statistics from one train-mode forward, then eval mode. With a random
    network's defaults (mean 0, variance 1) activations grow block after block in eval mode,
    which no trained network's do, and fp16 would be judged on values it never sees."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the scale of ``b`` (max |b|)."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def agreement(backbone: str, bench: "Bench") -> dict:
    """Logits and the first GSF layer's output of both implementations, same weights, same input,
    eval mode: fp16 autocast against each other, and fp32 (TF32 off) as the reference."""
    s, device = bench.sizes, bench.device
    ref = build(backbone, "GSF", s, "reference").to(device)
    calibrate(ref, inputs(s, s.forward_batch, device, seed=2)[0])
    fast = build(backbone, "GSF", s, "fast").to(device).eval()
    fast.load_state_dict(ref.state_dict())
    layer_name = next(n for n, m in ref.named_modules() if type(m).__name__ == "GSF")
    ref_layer, fast_layer = ref.get_submodule(layer_name), fast.get_submodule(layer_name)
    captured = {}
    hook = ref_layer.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0].clone()))
    x = inputs(s, s.forward_batch, device)[0]
    with torch.inference_mode():
        with autocast(device, "fp16"):
            logits = {"ref16": ref(x)}
            hook.remove()
            layer_in = captured["x"]  # the layer's fp16 input; the layers may write over theirs
            layer = {"ref16": ref_layer(layer_in.clone()), "fast16": fast_layer(layer_in.clone())}
            logits["fast16"] = fast(x)
        with exact_fp32():
            logits.update(ref32=ref(x), fast32=fast(x))
            layer.update(ref32=ref_layer(layer_in.float()), fast32=fast_layer(layer_in.float()))
    out = {"layer": layer_name, "tolerance": {"fp16": TOL_FP16, "fp32": TOL_FP32}}
    for what, v in (("logits", logits), ("layer_output", layer)):
        out[what] = {"fast16_vs_ref16": rel_diff(v["fast16"], v["ref16"]),
                     "fast32_vs_ref32": rel_diff(v["fast32"], v["ref32"]),
                     "fast16_vs_ref32": rel_diff(v["fast16"], v["ref32"]),
                     "ref16_vs_ref32": rel_diff(v["ref16"], v["ref32"])}
    out["agrees"] = agrees(out)
    return out


def agrees(a: dict) -> bool:
    """The layer within TOL_FP16 in fp16; the logits within TOL_FP16 or what fp16 itself moves the
    readable one's (see TOL_FP16); both within TOL_FP32 in fp32."""
    layer, logits = a["layer_output"], a["logits"]
    return (layer["fast16_vs_ref16"] <= TOL_FP16
            and logits["fast16_vs_ref16"] <= max(TOL_FP16, logits["ref16_vs_ref32"])
            and max(layer["fast32_vs_ref32"], logits["fast32_vs_ref32"]) <= TOL_FP32)


def recommend(out: dict, device: torch.device) -> dict:
    """The implementation ``impl="auto"`` should pick on this device: the faster one that agrees
    (within 3%: the readable one, which torch.compile uses anyway), against what it picks today."""
    from gsf.modules._impl import use_fast

    today = "fast" if use_fast("auto", torch.empty(1, device=device)) else "reference"
    ratios = {}
    for phase in ("forward", "train"):
        rec = {r["model"]: r for r in out["records"] if r["phase"] == phase}
        if "GSF fast" in rec:
            ratios[phase] = median_ratio(rec["GSF fast"]["times_ms"], rec["GSF readable"]["times_ms"])
    if out["fast_error"] is not None:
        pick, why = "reference", f"fast raised {out['fast_error']['type']} ({out['fast_error']['where']})"
    elif not out["agreement"]["agrees"]:
        pick, why = "reference", "fast does not agree with the readable one within tolerance"
    else:
        speed = math.sqrt(ratios["forward"] * ratios["train"])
        pick = "fast" if speed < 0.97 else "reference"
        why = (f"fast / readable: forward {ratios['forward']:.3f}, train step {ratios['train']:.3f} "
               f"(geometric mean {speed:.3f}; fast only below 0.97)")
    return {"pick": pick, "why": why, "fast_over_readable": ratios, "auto_picks_today": today,
            "matches_today": pick == today}


def ddp_applies(bench: "Bench") -> str | None:
    if bench.device.type == "cuda":
        n = torch.cuda.device_count()
        return None if n >= 2 else f"{n} GPU visible: DDP needs 2 or more"
    return None if bench.args.tiny else "CPU: only with --tiny (2 gloo ranks stand in for GPUs)"


def ddp_item(bench: "Bench") -> dict:
    """GSF ResNet-50, eager fp16, train batch per rank: one rank per GPU (NCCL; --tiny on CPU: 2
    gloo ranks), against the same step on one device in this process without DDP."""
    cuda = bench.device.type == "cuda"
    world = torch.cuda.device_count() if cuda else 2
    single = measure_models(bench, "resnet50", "fp16", {"GSF": bench.models.get("resnet50", "GSF")}, ("train",))[0]
    free_memory(bench, compiled=False)  # rank 0 shares GPU 0 with this process
    cfg = {"device": bench.device.type, "sizes": asdict(bench.sizes), "dtype": "fp16",
           "timeout_s": max(30, int(bench.time_left()))}
    per_rank = spawn_ranks(world, cfg, deadline=time.monotonic() + max(30.0, bench.time_left()))
    ddp_ms = max(statistics.median(t) for t in per_rank)  # the slowest rank sets the pace
    return {"world_size": world, "backend": "nccl" if cuda else "gloo", "batch_per_rank": bench.sizes.train_batch,
            "single_device_ms": single["ms"], "ddp_ms": ddp_ms,
            "per_rank_ms": [statistics.median(t) for t in per_rank],
            "scaling_efficiency": single["ms"] / ddp_ms, "throughput_speedup": world * single["ms"] / ddp_ms,
            "note": None if cuda else "CPU ranks share the cores: exercises the code, not a scaling figure"}


def spawn_ranks(world: int, cfg: dict, deadline: float) -> list[list[float]]:
    """Run ``_ddp_rank`` in ``world`` spawned processes; their per-step ms. Killed at ``deadline``
    (a hung collective would otherwise eat the whole budget)."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        ctx = mp.start_processes(_ddp_rank, args=(world, port, cfg, tmp), nprocs=world, join=False,
                                 start_method="spawn")
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise TimeoutError(f"DDP ranks still running at the time budget; killed ({world} ranks)")
        times = []
        for r in range(world):
            with open(os.path.join(tmp, f"rank{r}.json")) as f:
                times.append(json.load(f))
        return times


def _ddp_rank(rank: int, world: int, port: int, cfg: dict, out_dir: str) -> None:
    """One DDP rank (a spawned process): build, wrap, time the training step, write its times."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cuda = cfg["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
        torch.backends.cudnn.benchmark = True  # as in the single-device measurement
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=cfg["timeout_s"]))
    try:
        sizes = Sizes(**cfg["sizes"])
        model = build("resnet50", "GSF", sizes).to(device)
        net = DistributedDataParallel(model, device_ids=[rank] if cuda else None)
        x, labels = inputs(sizes, sizes.train_batch, device, seed=10 + rank)
        step, timer = train_step(net, x, labels, device, cfg["dtype"]), Timer(device)
        times = [timer(step) for _ in range(sizes.train_warmup + sizes.train_rounds)][sizes.train_warmup:]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(times, f)
    finally:
        dist.destroy_process_group()


def _error(e: BaseException, where: str = "") -> dict:
    tail = traceback.format_exception(type(e), e, e.__traceback__)
    return {"type": type(e).__name__, "message": str(e).strip()[:2000], "where": where,
            "traceback_tail": "".join(tail).strip().splitlines()[-12:]}


# -- the plan and the budget -------------------------------------------------------------------


@dataclass
class Item:
    """One check: ``run(bench) -> dict`` of results. Lower ``priority`` runs first (ties keep the
    list's order). ``estimate_s``: (paper sizes on a GPU, --tiny) seconds, the default until an
    item of the same ``kind`` has run; ``applies(bench)``: a reason it cannot run here, or None."""

    name: str
    priority: int
    estimate_s: tuple[float, float]
    run: Callable[["Bench"], dict]
    kind: str = ""
    applies: Callable[["Bench"], str | None] = lambda bench: None


def plan() -> list[Item]:
    """Every check, highest priority first (see the module docstring)."""
    items = [Item("environment", 0, (10, 2), environment, "environment")]
    items += [Item(f"eager-fp16-{b}", 10, (60, 20), partial(eager_item, b, "fp16"), "eager") for b in BACKBONES]
    items.append(Item("fit-gsf-resnet50-synthetic", 15, (60, 30), fit_item, "fit"))
    items.append(Item("data-decode-frames", 16, (60, 20), data_decode_item, "data"))
    items += [Item(f"impl-{b}", 20, (60, 20), partial(impl_item, b), "impl") for b in BACKBONES]
    items += [Item(f"eager-bf16-{b}", 30, (60, 20), partial(eager_item, b, "bf16"), "eager") for b in BACKBONES]
    for priority, dtype, names in ((40, "fp16", ("TSN", "GSF")), (50, "fp16", ("TSN", "TSM", "GSM")),
                                   (60, "bf16", ("TSN", "GSF")), (61, "bf16", ("TSN", "TSM", "GSM"))):
        for b in BACKBONES:
            for phase, estimate in (("forward", (120, 90)), ("train", (300, 400))):
                name = f"compiled-{dtype}-{b}-{phase}-{'-'.join(n.lower() for n in names[1:])}"
                items.append(Item(name, priority, estimate, partial(compiled_item, b, dtype, phase, names),
                                  f"compile-{phase}"))
    items.append(Item("ddp-gsf-resnet50", 70, (120, 30), ddp_item, "ddp", ddp_applies))
    return sorted(items, key=lambda item: item.priority)


def estimate(item: Item, bench: "Bench") -> float:
    """The longest finished item of the same kind; a compiled train step before any ran: three
    times a compiled forward (a backward graph too); else the item's default. A compile estimate
    stays above half its default: one that hit inductor's on-disk cache took seconds, and the
    next, of graphs not in it, may take minutes."""
    default = item.estimate_s[1 if bench.args.tiny else 0]
    compiling = item.kind.startswith("compile")
    if compiling and bench.args.compile_backend != "inductor":
        default /= 4  # no code generation
    done = {k: [o["seconds"] for o in bench.outcomes.values() if o["kind"] == k and o["status"] == "ok"]
            for k in (item.kind, "compile-forward")}
    if done[item.kind]:
        learned = max(done[item.kind])
    elif item.kind == "compile-train" and done["compile-forward"]:
        learned = 3 * max(done["compile-forward"])
    else:
        return default
    return max(learned, default / 2) if compiling else learned


class Bench:
    """What the items share: the command line, sizes, device, the models built so far, and the
    outcome of every item (also what the reports are written from)."""

    def __init__(self, args, started: float, items: list[Item]):
        self.args, self.started = args, started
        self.sizes = TINY if args.tiny else PAPER
        self.device = torch.device(args.device)
        self.timer = Timer(self.device)
        self.models = ModelCache(self.sizes, self.device)
        self.environment: dict = {}
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.finished_at: str | None = None
        self.outcomes = {i.name: {"name": i.name, "kind": i.kind, "priority": i.priority, "status": "pending",
                                  "seconds": None, "results": None} for i in items}

    def time_left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def selected(item: Item, only: list[str] | None) -> bool:
    return only is None or item.name == "environment" or any(fnmatch.fnmatch(item.name, p) for p in only)


def run_all(bench: Bench, items: list[Item]) -> None:
    write_reports(bench)
    for item in items:
        outcome = bench.outcomes[item.name]
        reason = None if selected(item, bench.args.only) else "not selected (--only)"
        reason = reason or item.applies(bench)
        if reason is None:
            needed, left = estimate(item, bench), bench.time_left()
            outcome.update(estimate_s=round(needed, 1), left_s=round(left, 1))
            if left <= needed:
                reason = f"time budget (--budget-s {bench.args.budget_s:g}); run with a larger --budget-s for it"
        print(f"[{bench.elapsed():6.1f} s] {item.name:<44}", end="", flush=True)
        if reason is not None:
            outcome.update(status="not run", reason=reason)
        else:
            run_one(item, bench)
        seconds = f" ({outcome['seconds']:.1f} s)" if outcome["seconds"] is not None else ""
        note = outcome.get("reason") or (outcome.get("error") or {}).get("message", "")
        note = f": {note.splitlines()[0][:160]}" if note else ""
        print(f" {outcome['status']}{seconds}{note}", flush=True)
        write_reports(bench)


def run_one(item: Item, bench: Bench) -> None:
    outcome = bench.outcomes[item.name]
    outcome.update(status="running", started_s=round(bench.elapsed(), 1))
    write_reports(bench)  # a run killed inside this item still shows where it was
    t0, failed = time.monotonic(), False
    try:
        outcome.update(status="ok", results=item.run(bench))
    except Skip as e:
        outcome.update(status="not run", reason=str(e))
    except KeyboardInterrupt as e:
        outcome.update(status="failed", error=_error(e, "interrupted (Ctrl-C)"))
        raise
    except Exception as e:  # noqa: BLE001 (recorded; the next item runs)
        outcome.update(status="failed", error=_error(e))
        failed = True
    finally:
        outcome["seconds"] = time.monotonic() - t0
    if failed:  # here, not in the except block, whose traceback still holds the item's tensors
        free_memory(bench, compiled=item.kind.startswith("compile"))


def free_memory(bench: Bench, compiled: bool) -> None:
    """After a failure (CUDA out of memory among them): drop every model, so the next item starts
    from an empty device; a failed compile also drops dynamo's caches."""
    bench.models.clear()
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()


# -- the reports -------------------------------------------------------------------------------


def state(bench: Bench) -> dict:
    """Everything ``gpu_check.json`` holds."""
    return {"script": "benchmarks/gpu_check.py", "command": sys.argv, "started": bench.started_at,
            "finished": bench.finished_at, "complete": bench.finished_at is not None,
            "elapsed_s": round(bench.elapsed(), 1), "budget_s": bench.args.budget_s,
            "settings": {"device": bench.args.device, "tiny": bench.args.tiny, "only": bench.args.only,
                         "compile_backend": bench.args.compile_backend, "sizes": asdict(bench.sizes),
                         "num_classes": NUM_CLASSES, "target_x_tsn": TARGET_X_TSN},
            "environment": bench.environment, "items": list(bench.outcomes.values()),
            "imported_forbidden": [m for m in FORBIDDEN if m in sys.modules]}


def write_reports(bench: Bench) -> None:
    """OUT/gpu_check.json and .md, each replaced whole (a kill mid-write leaves the previous one).
    A failed write is reported and the run goes on: the next item's write may succeed."""
    data = state(bench)
    try:
        os.makedirs(bench.args.out, exist_ok=True)
        for name, text in (("gpu_check.json", json.dumps(data, indent=1, default=str)),
                           ("gpu_check.md", render_md(data))):
            path = os.path.join(bench.args.out, name)
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
    except (OSError, TypeError, ValueError) as e:
        print(f"gpu_check: could not write the reports to {bench.args.out}: {type(e).__name__}: {e}",
              file=sys.stderr, flush=True)


def fmt(v, kind: str) -> str:
    """How the md writes a number: ms 2 decimals, ratios 3, params (M) 2, MB 0, seconds 1; missing "–"."""
    if v is None:
        return "–"
    return {"ms": f"{v:.2f}", "x": f"{v:.3f}", "p": f"{v:.2f}", "mb": f"{v:.0f}", "s": f"{v:.1f}", "e": f"{v:.1e}"}[kind]


def render_md(data: dict) -> str:
    sections = []
    for section in (md_header, md_tables, md_table12, md_impl, md_fit, md_data, md_target, md_problems):
        try:
            sections.append(section(data))
        except Exception as e:  # noqa: BLE001 (a report bug must not cost the measurements: the JSON has them)
            sections.append(f"({section.__name__} failed: {type(e).__name__}: {e}; the JSON has the data)")
    return "\n\n".join(sections) + "\n"


def _results(data: dict, name: str) -> dict | None:
    item = next((i for i in data["items"] if i["name"] == name), None)
    return item["results"] if item and item["status"] == "ok" else None


def md_header(data: dict) -> str:
    env, s = data["environment"], data["settings"]
    gpus = env.get("gpus") or []
    machine = f"{gpus[0]['name']} ({len(gpus)} GPU{'s' if len(gpus) > 1 else ''}, {gpus[0]['memory_GiB']} GiB)" \
        if gpus else f"{s['device']} ({env.get('cpus', '?')} CPUs)"
    sizes = s["sizes"]
    counts = {}
    for i in data["items"]:
        counts[i["status"]] = counts.get(i["status"], 0) + 1
    running = [i["name"] for i in data["items"] if i["status"] == "running"]
    lines = [f"# GPU check: {machine}", "",
             f"- torch {env.get('torch', '?')}, CUDA {env.get('cuda_runtime')}, cuDNN {env.get('cudnn')}, "
             + (f"driver {env['driver']}, " if env.get("driver") else "") +
             f"python {env.get('python', '?')}; started {data['started']} (UTC)",
             f"- {'tiny sizes (--tiny)' if s['tiny'] else 'paper sizes'}: {sizes['frames']} frames, {sizes['size']} px, "
             f"forward batch {sizes['forward_batch']} clip, train batch {sizes['train_batch']} clips; "
             f"compile backend {s['compile_backend']}",
             f"- budget {data['budget_s']:g} s, elapsed {data['elapsed_s']:.0f} s: "
             + ("ran to the end" if data["complete"] else f"NOT finished (in {', '.join(running) or 'between items'})"),
             "- items: " + ", ".join(f"{n} {k}" for k, n in counts.items())]
    if env.get("gsf_import", "ok") != "ok":
        lines.append(f"- **gsf import {env['gsf_import']}**")
    failed = [i for i in data["items"] if i["status"] == "failed"]
    if failed:
        lines += ["", "**Failed:**"] + [f"- `{i['name']}`: {i['error']['type']}: {i['error']['message'].splitlines()[0][:200]}"
                                        if i["error"]["message"] else f"- `{i['name']}`: {i['error']['type']}" for i in failed]
    return "\n".join(lines)


def timing_records(data: dict) -> list[dict]:
    """Records of the timing tables: every ok item's ``records`` except fast-vs-readable and DDP."""
    return [r for i in data["items"] if i["status"] == "ok" and i["kind"] not in ("impl", "ddp")
            for r in (i["results"] or {}).get("records", [])]


def md_tables(data: dict) -> str:
    records = timing_records(data)
    if not records:
        return "## Timings\n\nNo timing item ran."
    cells, groups = {}, []
    for r in records:
        group = (r["backbone"], r["dtype"], r["mode"])
        if group not in groups:
            groups.append(group)
        cells.setdefault((group, r["model"], r["phase"]), r)
    out = ["## Timings (ms: median of the rounds; x TSN: median per-round ratio to TSN of the same setting)"]
    order = lambda g: (BACKBONES.index(g[0]) if g[0] in BACKBONES else 9, list(DTYPES).index(g[1]) if g[1] in DTYPES  # noqa: E731
                       else 9, g[2] != "eager", g[2])
    for group in sorted(groups, key=order):
        fwd_b, train_b = data["settings"]["sizes"]["forward_batch"], data["settings"]["sizes"]["train_batch"]
        rows = [f"### {group[0]}, {group[1]} autocast, {group[2]}", "",
                f"| model | params M | forward ms (batch {fwd_b}) | x TSN | train step ms (batch {train_b}) | x TSN "
                "| peak MB forward | peak MB train | compile s (forward / train) |",
                "|---|---|---|---|---|---|---|---|---|"]
        models = [m for m in ("TSN", "TSM", "GSM", "GSF") if any((group, m, p) in cells for p in ("forward", "train"))]
        models += sorted({m for (g, m, _) in cells if g == group} - set(models))
        for m in models:
            f, t = cells.get((group, m, "forward"), {}), cells.get((group, m, "train"), {})
            params = (f or t).get("params_M")
            compile_s = " / ".join(fmt(r.get("compile_s"), "s") for r in (f, t)) if "compiled" in group[2] else "–"
            rows.append(f"| {m} | {fmt(params, 'p')} | {fmt(f.get('ms'), 'ms')} | {fmt(f.get('x_tsn'), 'x')} | "
                        f"{fmt(t.get('ms'), 'ms')} | {fmt(t.get('x_tsn'), 'x')} | {fmt(f.get('peak_mb'), 'mb')} | "
                        f"{fmt(t.get('peak_mb'), 'mb')} | {compile_s} |")
        out.append("\n".join(rows))
    out.append("Peak MB: memory one step needs above what was resident before it (weights, optimizer state). "
               "Compile s: the first call alone, compilation included (– : compiled in an earlier item).")
    return "\n\n".join(out)


def paper_table12() -> dict[str, float]:
    with open(PAPER_TABLE12) as f:
        return {row["model"]: float(row["latency_ms"]) for row in csv.DictReader(f)}


def md_table12(data: dict) -> str:
    paper = paper_table12()
    lines = ["## The paper's Table 12 beside ours (forward, one 8-frame clip, fp16)", "",
             "The paper measured on a Titan V in half precision and does not name the backbone; its top-1 "
             "(GSF 50.17, TSM 45.6 on Something-Something V1) are the 8-frame one-clip ResNet-50 numbers "
             "(`reports/paper/table8_gsf_rows.csv`; `ablations/table12_latency.yaml` puts them beside ResNet-50).", "",
             "| | GPU | GSF ms | TSM ms | GSF / TSM |", "|---|---|---|---|---|",
             f"| paper, Table 12 | Titan V | {paper['GSF']:.2f} | {paper['TSM']:.2f} | {paper['GSF'] / paper['TSM']:.2f} |"]
    gpus = data["environment"].get("gpus") or [{"name": data["settings"]["device"]}]
    for b in BACKBONES:
        res = _results(data, f"eager-fp16-{b}")
        rec = {r["model"]: r for r in (res or {}).get("records", []) if r["phase"] == "forward"}
        if "GSF" in rec and "TSM" in rec:
            ratio = median_ratio(rec["GSF"]["times_ms"], rec["TSM"]["times_ms"])
            lines.append(f"| ours, {b}, eager fp16 | {gpus[0]['name']} | {fmt(rec['GSF']['ms'], 'ms')} | "
                         f"{fmt(rec['TSM']['ms'], 'ms')} | {fmt(ratio, 'x')} |")
        else:
            lines.append(f"| ours, {b}, eager fp16 | {gpus[0]['name']} | not measured | | |")
    lines += ["", "Ours: GSF / TSM is the median per-round ratio (same rounds), not the ratio of the medians."]
    return "\n".join(lines)


def md_impl(data: dict) -> str:
    lines = ['## Fast vs readable GSF (impl="fast" vs impl="reference"), eager fp16']
    picks = {}
    for b in BACKBONES:
        item = next((i for i in data["items"] if i["name"] == f"impl-{b}"), None)
        res = item["results"] if item and item["status"] == "ok" else None
        if item is None:
            continue
        if res is None:
            lines.append(f"### {b}\n\n{item['status']}" + (f": {item.get('reason')}" if item.get("reason") else ""))
            continue
        rec = {(r["model"], r["phase"]): r for r in res["records"]}
        body = [f"### {b}", ""]
        for phase, label in (("forward", "forward"), ("train", "train step")):
            parts = [f"{m} {fmt(rec[(m, phase)]['ms'], 'ms')} ms" for m in ("TSN", "GSF readable", "GSF fast")
                     if (m, phase) in rec]
            ratio = res["recommendation"]["fast_over_readable"].get(phase)
            body.append(f"- {label} (batch {rec[('TSN', phase)]['batch']}): {', '.join(parts)}"
                        + (f"; fast / readable {fmt(ratio, 'x')}" if ratio is not None else ""))
        if res["fast_error"]:
            e = res["fast_error"]
            body.append(f"- fast raised in {e['where']}: {e['type']}: {e['message'].splitlines()[0][:300] if e['message'] else ''}")
        if res["agreement"]:
            body += md_agreement(res["agreement"])
        r = res["recommendation"]
        picks[b] = r["pick"]
        body.append(f"- **auto should pick: {r['pick']}** ({r['why']}); impl=\"auto\" picks {r['auto_picks_today']} "
                    f"on this device today (`gsf/modules/_impl.py`): {'same' if r['matches_today'] else 'DIFFERENT'}")
        lines.append("\n".join(body))
    if picks:
        same = set(picks.values())
        lines.append(f"**Recommendation:** impl=\"auto\" on {data['settings']['device']} should pick "
                     + (f"{same.pop()} (both backbones measured)" if len(same) == 1 and len(picks) == len(BACKBONES)
                        else ", ".join(f"{v} for {k}" for k, v in picks.items())) + ".")
    return "\n\n".join(lines)


def md_agreement(a: dict) -> list[str]:
    t = a["tolerance"]
    lines = [f"- agreement, max |a - b| / max |readable| (same weights and input, eval mode, BatchNorm "
             f"calibrated; fp32 with TF32 off; tolerance fp16 {t['fp16']:g} (logits: or the readable one's "
             f"own fp16-vs-fp32 gap, if larger), fp32 {t['fp32']:g}):"]
    for what, label in (("logits", "logits"), ("layer_output", f"first GSF layer (`{a['layer']}`)")):
        d = a[what]
        lines.append(f"  - {label}: fp16 fast vs readable {fmt(d['fast16_vs_ref16'], 'e')}, fp32 "
                     f"{fmt(d['fast32_vs_ref32'], 'e')}; against fp32 readable: fast fp16 "
                     f"{fmt(d['fast16_vs_ref32'], 'e')}, readable fp16 {fmt(d['ref16_vs_ref32'], 'e')}")
    lines.append(f"  - {'agrees' if a['agrees'] else '**DOES NOT AGREE**'}")
    return lines


def target_rows(data: dict, backbone: str) -> list[tuple[str, float | None, float | None]]:
    """(setting, GSF forward x TSN, GSF train x TSN) for fp16 eager, compiled and the fast impl."""
    rows = {}
    for r in timing_records(data):
        if r["backbone"] == backbone and r["dtype"] == "fp16" and r["model"] == "GSF":
            rows.setdefault(f"{r['mode']} fp16", {}).setdefault(r["phase"], r["x_tsn"])
    res = _results(data, f"impl-{backbone}")
    for r in (res or {}).get("records", []):
        if r["model"] == "GSF fast":
            rows.setdefault("eager fp16, GSF impl=fast (not what auto runs)", {})[r["phase"]] = r["x_tsn"]
    return [(k, v.get("forward"), v.get("train")) for k, v in rows.items()]


def md_target(data: dict) -> str:
    lines = [f"## Target: GSF's training step and batch-1 latency within {TARGET_X_TSN}x of TSN's "
             "(eager or compiled, fp16)", "", "| backbone | setting | forward x TSN | train step x TSN | verdict |",
             "|---|---|---|---|---|"]
    for b in BACKBONES:
        verdicts = {}
        for setting, fwd, train in target_rows(data, b):
            verdict = ("incomplete" if fwd is None or train is None
                       else "PASS" if max(fwd, train) <= TARGET_X_TSN else "FAIL")
            if "impl=fast" not in setting:
                verdicts[setting.split(" (")[0].split(" fp16")[0]] = verdict
            lines.append(f"| {b} | {setting} | {fmt(fwd, 'x')} | {fmt(train, 'x')} | {verdict} |")
        lines.append(f"| **{b}** | **eager or compiled** | | | **{overall_verdict(verdicts)}** |")
    lines += ["", "PASS: forward and training step both within the target in one setting (eager, or compiled "
              "against the compiled TSN). The impl=fast row is informational."]
    return "\n".join(lines)


def overall_verdict(verdicts: dict[str, str]) -> str:
    """PASS if eager or compiled passes; FAIL only once both were measured in full and failed."""
    if "PASS" in verdicts.values():
        return "PASS"
    missing = [f"{s} {verdicts.get(s, 'not measured')}" for s in ("eager", "compiled") if verdicts.get(s) != "FAIL"]
    return "FAIL" if not missing else f"not passed yet ({', '.join(missing)})"


def md_fit(data: dict) -> str:
    """The training loop's throughput and how much of it was spent waiting for data."""
    r = _results(data, "fit-gsf-resnet50-synthetic")
    if not r:
        return "## The training loop (harness.train.fit)\n\nNot run (see below)."
    return ("## The training loop (harness.train.fit)\n\n"
            f"{r['setting']}: {r['train_clips_per_s']:.1f} training clips/s, waiting for the loader "
            f"{100 * r['data_wait_fraction']:.0f}% of the epoch ({r['epoch_seconds']:.1f} s, {r['train_steps']:.0f} steps; "
            f"evaluation of {r['val_clips']:.0f} clips; {r['wall_s']:.1f} s in all, loader start-up included).")


def md_data(data: dict) -> str:
    """data.decode: cuda against cpu, per frame size."""
    r = _results(data, "data-decode-frames")
    if not r:
        return "## Frame folders: data.decode cuda vs cpu\n\nNot run (see below)."
    lines = ["## Frame folders: data.decode cuda vs cpu", "", f"{r['setting']}.", "",
             "| frames | cpu clips/s (1 core) | cuda clips/s | cuda / cpu | pixels: max, mean abs diff |",
             "|---|---:|---:|---:|---|"]
    for size, row in r["sizes"].items():
        cuda = (f"{row['cuda_clips_per_s']:.1f} | {row['cuda_x_cpu']:.2f}x | {row['max_abs_diff']}, "
                f"{row['mean_abs_diff']:.2f}" if "cuda_clips_per_s" in row else f"{row['cuda']} | – | –")
        lines.append(f"| {size} | {row['cpu_clips_per_s']:.1f} | {cuda} |")
    return "\n".join(lines)


def md_problems(data: dict) -> str:
    lines, not_run = ["## Failures and items not run"], {}
    for i in data["items"]:
        if i["status"] == "failed":
            e = i["error"]
            lines.append(f"- `{i['name']}` FAILED after {i['seconds']:.1f} s: {e['type']}: {e['message'][:500]}")
            lines.append("  ```\n  " + "\n  ".join(e["traceback_tail"][-6:]) + "\n  ```")
        elif i["status"] != "ok":
            not_run.setdefault(f"{i['status']}" + (f": {i['reason']}" if i.get("reason") else ""), []).append(i["name"])
    for reason, names in not_run.items():
        lines.append(f"- {', '.join(f'`{n}`' for n in names)}: {reason}")
    ddp = _results(data, "ddp-gsf-resnet50")
    if ddp:
        lines += ["", f"DDP ({ddp['backend']}, {ddp['world_size']} ranks, batch {ddp['batch_per_rank']} per rank): "
                  f"{fmt(ddp['ddp_ms'], 'ms')} ms a step (slowest rank) against {fmt(ddp['single_device_ms'], 'ms')} ms "
                  f"on one device: scaling efficiency {fmt(ddp['scaling_efficiency'], 'x')}, throughput "
                  f"{fmt(ddp['throughput_speedup'], 'x')}x" + (f". {ddp['note']}" if ddp.get("note") else "")]
    if data.get("imported_forbidden"):
        lines.append(f"- imported what a bare GPU machine lacks: {', '.join(data['imported_forbidden'])}")
    return "\n".join(lines) if len(lines) > 1 else lines[0] + "\n\nNone."


# -- the command line --------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (thin backbones, 32 px, train batch 2): CPU tests")
    ap.add_argument("--out", default=os.path.join("results", "gpu_check"), help="folder of gpu_check.{json,md}")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="an item starts only if the time left (from the start) exceeds its estimate "
                         "(default 330, with --tiny 240)")
    ap.add_argument("--only", nargs="+", metavar="ITEM", default=None,
                    help="run only these items (names or globs, e.g. 'eager-*'; environment always runs)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend of the compiled items (aot_eager / eager: no code generation, tests)")
    ap.add_argument("--list", action="store_true", help="list the items in the order they run, and exit")
    args = ap.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 240.0 if args.tiny else 330.0
    if args.budget_s < 0:
        ap.error(f"--budget-s must be >= 0, got {args.budget_s:g}")
    try:
        os.makedirs(args.out, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):
            pass
    except OSError as e:
        ap.error(f"--out {args.out}: cannot write there ({e.strerror or e})")
    names = [i.name for i in plan()]
    for pattern in args.only or []:
        if not any(fnmatch.fnmatch(n, pattern) for n in names):
            ap.error(f"--only {pattern!r} matches no item; items: {', '.join(names)}")
    return args


def main(argv=None, started: float = STARTED) -> int:
    args = parse_args(argv)
    items = plan()
    if args.list:
        for i in items:
            print(f"{i.priority:3d}  {i.name:<44} {i.kind:<16} estimate {i.estimate_s[0]:g} s (GPU), {i.estimate_s[1]:g} s (--tiny)")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible to torch (torch {torch.__version__}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})", file=sys.stderr)
        return 2
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    elif args.tiny:
        # Thin models on a shared 2-core machine: with a second OpenMP thread a step took up to 300x
        # longer whenever another process ran (threads spinning at barriers while one is descheduled).
        torch.set_num_threads(1)
    bench = Bench(args, started, items)
    print(f"gpu_check: {len(items)} items, budget {args.budget_s:g} s, writing {os.path.join(args.out, 'gpu_check.md')}",
          flush=True)
    try:
        run_all(bench, items)
    except KeyboardInterrupt:
        write_reports(bench)
        print("\ngpu_check: interrupted; what ran so far is in " + args.out, file=sys.stderr)
        return 130
    bench.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_reports(bench)
    print(f"gpu_check: done in {bench.elapsed():.0f} s: {os.path.join(args.out, 'gpu_check.md')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
