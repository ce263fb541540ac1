"""What each trial asks Ray for, decided once Ray is up: GPUs by default where there are any.

``--gpus-per-trial auto`` (the default): on a cluster with GPUs every trial takes one GPU per
data-parallel worker and the CPUs that come with it on a GPU node (CPUs per node / GPUs per
node), so its loader processes get the cores; on a cluster without GPUs (or when every trial's
``train.device`` is cpu) no GPU and one CPU per worker, as before. A number overrides it.
Measure-only trials ask the same: a latency measurement must own its GPU.

A sweep whose trials need CUDA (``train.device: cuda``) where no GPU will be given stops before
any trial, with an estimate of the CPU time they would take (``cpu_estimate``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from harness.spec import SpecError

EPS = 1e-9  # Ray's resource amounts are fractions: 0.1 * 3 must fit in 0.3


def gpus_arg(text: str) -> str | float:
    """``--gpus-per-trial``: ``auto``, a whole number of GPUs, or a fraction below 1 (trials
    sharing a GPU). Anything else is an ``argparse`` error."""
    import argparse

    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number of GPUs, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value > 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"must be 'auto', a whole number >= 0 or a fraction below 1 (trials "
                                         f"sharing a GPU), got {text!r}")
    return value


@dataclass(frozen=True)
class Plan:
    """Per trial: ``cpus`` and ``gpus`` in all, over ``workers`` data-parallel workers (each
    gets its share); ``at_once``: trials the cluster runs side by side; ``line``: what was chosen."""

    cpus: float
    gpus: float
    workers: int
    at_once: int
    line: str

    @property
    def per_worker(self) -> tuple[float, float]:
        return self.cpus / self.workers, self.gpus / self.workers


def plan(nodes: list[dict[str, float]], cpus: float | None, gpus: str | float, workers: int | None,
         want_gpu: bool) -> Plan:
    """The resources of every trial on a cluster of ``nodes`` (Ray resource dicts of the live
    nodes) from the command line's ``cpus``/``gpus``/``workers`` (None: by default).
    ``want_gpu``: some trial may use a GPU (``train.device`` not cpu everywhere)."""
    gpu_nodes = [n for n in nodes if n.get("GPU", 0) >= 1 - EPS]
    auto = gpus == "auto"
    if auto:
        workers = workers or 1
        gpus = float(workers) if gpu_nodes and want_gpu else 0.0
    else:
        workers = workers or (int(gpus) if gpus > 1 else 1)
        if workers > 1 and gpus > 0 and gpus != workers:
            raise SpecError(f"--gpus-per-trial {gpus:g} --workers-per-trial {workers}: each data-parallel worker "
                            f"takes one GPU, so a trial of {workers} workers takes {workers} GPUs")
    gpu_each = gpus / workers
    if cpus is None:
        per_gpu = min(n.get("CPU", 0) / n["GPU"] for n in gpu_nodes) if gpu_each and gpu_nodes else 1.0
        cpus = workers * max(1.0, math.floor(per_gpu * gpu_each + EPS)) if gpu_each else float(workers)
    cpu_each = cpus / workers
    slots = [_slots(n, cpu_each, gpu_each) for n in nodes]
    at_once = sum(slots) // workers if workers > 1 else sum(slots)
    if at_once == 0:
        raise SpecError(unschedulable(nodes, cpus, gpus, workers))
    return Plan(cpus, gpus, workers, at_once, _line(nodes, slots, cpus, gpus, workers, at_once, auto, want_gpu))


def _slots(node: dict[str, float], cpus: float, gpus: float) -> int:
    """How many workers of ``cpus`` and ``gpus`` fit on ``node``."""
    fit = math.floor(node.get("CPU", 0) / cpus + EPS) if cpus else 10**6
    if gpus:
        fit = min(fit, math.floor(node.get("GPU", 0) / gpus + EPS))
    return fit


def worker_fits(node: dict[str, float], args) -> bool:
    """Whether one data-parallel worker (or a one-process trial) of the sweep's ``args`` fits ``node``."""
    return _slots(node, args.cpus_per_trial / args.workers_per_trial, args.gpus_per_trial / args.workers_per_trial) > 0


def _count(n: float, word: str) -> str:
    return f"{n:g} {word}{'' if n == 1 else 's'}"


def _line(nodes, slots, cpus, gpus, workers, at_once, auto, want_gpu) -> str:
    """The sweep's banner: what each trial gets and how many run at once."""
    each = f"{_count(gpus, 'GPU')} + {_count(cpus, 'CPU')}" if gpus else _count(cpus, "CPU")
    if workers > 1:
        each += f" ({workers} DDP workers of {_count(gpus / workers, 'GPU') + ' + ' if gpus else ''}" \
                f"{_count(cpus / workers, 'CPU')})"
    kind = "GPU cluster" if any(n.get("GPU", 0) >= 1 - EPS for n in nodes) else "no GPU in the Ray cluster"
    line = f"{kind}: {each} per trial, {at_once} trial{'s' if at_once != 1 else ''} at once"
    if gpus:
        idle = sum(1 for n, s in zip(nodes, slots) if not s)
        if idle:
            line += f"; only the {len(nodes) - idle} node(s) with GPUs get trials ({idle} without a GPU run none)"
    elif kind == "GPU cluster":
        line += " on CPU (" + ("every trial's train.device is cpu" if not want_gpu else "--gpus-per-trial 0") + ")"
    elif auto:
        line += " on CPU"
    return line


def unschedulable(nodes: list[dict[str, float]], cpus: float, gpus: float, workers: int = 1) -> str | None:
    """Why no trial asking for ``cpus`` and ``gpus`` (over ``workers`` workers) could ever start on
    ``nodes`` (Ray resource dicts); None if one can."""
    slots = sum(_slots(n, cpus / workers, gpus / workers) for n in nodes)
    if slots >= workers:
        return None
    have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "no live node"
    asked = f"--cpus-per-trial {cpus:g} --gpus-per-trial {gpus:g}"
    if workers > 1:
        return (f"{asked} ({workers} DDP workers of {cpus / workers:g} CPUs + {gpus / workers:g} GPUs): the Ray "
                f"cluster cannot place them (nodes: {have}), so no trial could ever start")
    return f"{asked}: no node of the Ray cluster has that much (nodes: {have}), so no trial could ever start"


def needs_cuda(trials) -> list:
    return [t for t in trials if t.config["train"]["device"] == "cuda"]


def cpu_estimate(config: dict[str, Any], measure_only: bool, threads: int | None = None) -> tuple[float, str]:
    """Seconds one trial of ``config`` would take on this machine's CPU, and how that was
    reckoned: one training step (forward + backward of one clip at the trial's size, after one
    untimed) and one forward, scaled by the clips of the trial's epochs, evaluations and timings.
    A lower bound: loading, bigger batches' memory traffic and the optimiser are left out."""
    import torch

    from gsf import build_model
    from harness.spec import TrialConfig

    cfg = TrialConfig.model_validate({k: v for k, v in config.items() if k != "seed"})
    size = cfg.measure.input_size if measure_only else cfg.data.crop_size
    torch.manual_seed(0)
    model = build_model(cfg.model)
    x = torch.randn(1, cfg.model.num_frames, 3, size, size)
    step, forward = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        model(x).sum().backward()
        step.append(time.perf_counter() - t0)
        with torch.inference_mode():
            model.eval()
            t0 = time.perf_counter()
            model(x)
            forward.append(time.perf_counter() - t0)
            model.train()
    step, forward = step[-1], forward[-1]
    m = cfg.measure
    timing = (m.latency_warmup + m.latency_runs) * forward * (2 if m.latency else 0) + (
        (3 + m.latency_runs) * step if m.train_step else 0)
    if measure_only:
        return timing, f"a forward of one clip takes {forward:.1f} s here"
    train_clips, val_views = _clip_counts(cfg)
    tc = cfg.train
    if tc.max_batches_per_epoch:
        train_clips = min(train_clips, tc.max_batches_per_epoch * tc.batch_size)
    evals = max(1, tc.epochs // tc.eval_every + (tc.epochs % tc.eval_every > 0))
    total = tc.epochs * train_clips * step + evals * val_views * forward + timing
    if tc.epochs == 0:
        return total, f"an evaluation of {val_views} views, a forward of one clip taking {forward:.1f} s here"
    return total, (f"a training step of one clip takes {step:.1f} s here, x {train_clips} clips x {tc.epochs} "
                   f"epochs, + {evals} evaluation(s) of {val_views} views")


def _clip_counts(cfg) -> tuple[int, int]:
    """Training clips per epoch and validation views (clips x test views) of ``cfg.data``."""
    data = cfg.data
    clips, crops = data.views
    if data.synthetic:
        return data.train_size, data.val_size * clips * crops

    def lines(path) -> int:
        with open(data.resolve(path)) as f:
            return sum(1 for line in f if line.strip())

    return lines(data.train_list), lines(data.val_list) * clips * crops


def hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"~{seconds / 3600:.0f} h"
    return f"~{max(1, round(seconds / 60))} min"
