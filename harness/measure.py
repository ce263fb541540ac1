"""Size and speed of one model, measured the same way for every trial.

- ``params``: every parameter (fvcore's ``parameter_count``), classifier head included.
- ``flops``: multiply-accumulates of ONE view — a clip of T frames, (T, 3, S, S) — counted by
  fvcore in eval mode (convs, matmuls and norms; fvcore counts elementwise ops such as tanh,
  sigmoid, mul and mean as zero, so ``flops_uncounted_ops`` lists what it skipped).
- ``latency``: forward time of ``clips`` clips after warm-up; median and p90 of ``runs`` runs.
  CPU: fp32, wall clock. GPU: fp16 autocast (the paper's Table 12), timed with CUDA events
  after synchronisation.
- ``train_step`` (optional): forward + backward of one clip in train mode, median ms.
- ``relative_cost``: ``latency_x`` (and ``train_step_x``), the model's time over a baseline
  model's, timed alternately in the same process, median of the per-round ratios. Trials that
  run one after another see different machine states (on a shared 2-core CPU their medians
  drift by 10% or more), so a ratio of two trials' medians cannot resolve a 5% difference.
- ``compile`` (``measure.compile``): the timings above are of ``torch.compile(model)`` (the
  baseline's too); ``compile_s`` / ``train_step_compile_s`` are the wall times of the first
  forward / train step, compilation included (inductor's on-disk cache can shorten a repeat).
"""
from __future__ import annotations

import logging
import statistics
import time
import warnings
from contextlib import contextmanager, nullcontext

import torch
from torch import nn


def compiled(model: nn.Module, backend: bool | str) -> nn.Module:
    """``model``, or with ``backend`` (true = inductor, or a backend name) its torch.compile'd
    version (same parameters; save and load the state of ``model`` itself)."""
    if not backend:
        return model
    return torch.compile(model, backend="inductor" if backend is True else backend)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, num_frames: int, input_size: int) -> tuple[float, list[str]]:
    """fvcore multiply-accumulates of one (1, T, 3, S, S) view, and the op names it did not count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    was_training = model.training
    model.eval()
    clip = torch.randn(1, num_frames, 3, input_size, input_size, device=_device_of(model))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, clip).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = analysis.total()
            skipped = sorted(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    return float(total), skipped


def _timing_setup(model: nn.Module, num_frames: int, input_size: int, clips: int, fp16_on_gpu: bool):
    """The device, a random input of ``clips`` clips, whether it is CUDA, and the autocast to time under."""
    device = _device_of(model)
    x = torch.randn(clips, num_frames, 3, input_size, input_size, device=device)
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda and fp16_on_gpu else nullcontext()
    return device, x, cuda, autocast


def measure_latency(
    model: nn.Module, num_frames: int, input_size: int, runs: int = 20, warmup: int = 5,
    clips: int = 1, fp16_on_gpu: bool = True,
) -> dict[str, float | str]:
    device, x, cuda, autocast = _timing_setup(model, num_frames, input_size, clips, fp16_on_gpu)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast:
            first_ms = _forward_ms(model, x, cuda)  # a compiled model compiles here
            for _ in range(warmup - 1):
                model(x)
            times = [_forward_ms(model, x, cuda) for _ in range(runs)]
    finally:
        model.train(was_training)
    return {
        "first_forward_s": first_ms / 1e3,
        "latency_ms": statistics.median(times),
        "latency_p90_ms": statistics.quantiles(times, n=10, method="inclusive")[8],
        "latency_precision": "fp16-autocast" if cuda and fp16_on_gpu else "fp32",
        "latency_device": torch.cuda.get_device_name(device) if cuda else f"cpu x{torch.get_num_threads()} threads",
    }


def _forward_ms(model: nn.Module, x: torch.Tensor, cuda: bool) -> float:
    """One timed forward (the caller sets eval mode, inference mode and autocast)."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        model(x)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    model(x)
    return (time.perf_counter() - t0) * 1e3


def _train_step_ms(model: nn.Module, x: torch.Tensor, cuda: bool, autocast) -> float:
    """One timed forward + backward in the model's current mode; gradients are dropped after."""
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with autocast:
        loss = model(x).float().sum()
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - t0) * 1e3
    model.zero_grad(set_to_none=True)
    return elapsed


@contextmanager
def _unchanged(*models: nn.Module):
    """Restore the models' modes and buffers afterwards. A timed train step updates BatchNorm's
    running statistics, and a randomly initialised network with other statistics runs at another
    speed in eval mode (measured: GSF-ResNet-50 / TSN forward 1.05 fresh, 1.14 after GSF alone
    had been through 23 timed train steps)."""
    modes = [m.training for m in models]
    buffers = [{k: v.clone() for k, v in m.named_buffers()} for m in models]
    try:
        yield
    finally:
        for m, mode, saved in zip(models, modes, buffers):
            m.train(mode)
            with torch.no_grad():
                for k, v in m.named_buffers():
                    v.copy_(saved[k])


def measure_train_step(model: nn.Module, num_frames: int, input_size: int, runs: int = 20, warmup: int = 3,
                       clips: int = 1, fp16_on_gpu: bool = True) -> dict[str, float]:
    """Forward + backward of ``clips`` clips in train mode (the cost that training pays), median ms."""
    _, x, cuda, autocast = _timing_setup(model, num_frames, input_size, clips, fp16_on_gpu)
    with _unchanged(model):
        model.train()
        times = [_train_step_ms(model, x, cuda, autocast) for _ in range(warmup + runs)]
    return {"train_step_ms": statistics.median(times[warmup:]), "first_train_step_s": times[0] / 1e3}


def relative_cost(model: nn.Module, baseline: nn.Module, num_frames: int, cfg) -> dict[str, float]:
    """``latency_x`` (and ``train_step_x`` with ``cfg.train_step``): model time / baseline time.

    Both models are timed in every round, in alternating order (model first in even rounds), so
    slow drifts of the machine hit both alike; the result is the median of the per-round ratios.
    """
    _, x, cuda, autocast = _timing_setup(model, num_frames, cfg.input_size, cfg.latency_clips, cfg.fp16_on_gpu)
    pair = (compiled(model, cfg.compile), compiled(baseline, cfg.compile))
    model, baseline = pair

    def rounds(time_one, warmup: int) -> float:
        ratios = []
        for i in range(warmup + cfg.latency_runs):
            order = pair if i % 2 == 0 else pair[::-1]
            ms = dict(zip(map(id, order), (time_one(m) for m in order)))
            if i >= warmup:
                ratios.append(ms[id(model)] / ms[id(baseline)])
        return statistics.median(ratios)

    out = {}
    with _unchanged(*pair):
        for m in pair:
            m.eval()
        with torch.inference_mode(), autocast:
            out["latency_x"] = rounds(lambda m: _forward_ms(m, x, cuda), cfg.latency_warmup)
        if cfg.train_step:
            for m in pair:
                m.train()
            out["train_step_x"] = rounds(lambda m: _train_step_ms(m, x, cuda, autocast), 3)
    return out


def measure(model: nn.Module, num_frames: int, cfg) -> dict[str, float | str]:
    """All measurements named by ``cfg`` (a ``MeasureConfig``), as flat metric/tag values."""
    out: dict[str, float | str] = {"params": count_params(model), "params_M": count_params(model) / 1e6}
    if cfg.flops:
        flops, skipped = count_flops(model, num_frames, cfg.input_size)
        out["GFLOPs"] = flops / 1e9
        out["flops_counted"] = f"fvcore multiply-accumulates of one view (1x{num_frames}x3x{cfg.input_size}x{cfg.input_size}), eval mode"
        out["flops_uncounted_ops"] = ",".join(skipped)
    timed = model
    if cfg.compile and (cfg.latency or cfg.train_step):
        torch._dynamo.reset()  # a fresh compile (relative_cost may have compiled this model already)
        timed = compiled(model, cfg.compile)
        out["compiled"] = "inductor" if cfg.compile is True else cfg.compile
    if cfg.latency:
        out.update(measure_latency(timed, num_frames, cfg.input_size, cfg.latency_runs, cfg.latency_warmup,
                                   cfg.latency_clips, cfg.fp16_on_gpu))
    if cfg.train_step:
        out.update(measure_train_step(timed, num_frames, cfg.input_size, cfg.latency_runs, 3,
                                      cfg.latency_clips, cfg.fp16_on_gpu))
    # A compiled model's first call is its compilation; an eager model's, warm-up noise.
    first = {"compile_s": out.pop("first_forward_s", None), "train_step_compile_s": out.pop("first_train_step_s", None)}
    if cfg.compile:
        out.update({k: v for k, v in first.items() if v is not None})
    return out


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
