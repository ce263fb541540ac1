"""Fit and evaluate one model with the paper's recipe (section 4.2), resumable per epoch.

SGD (momentum, weight decay; AdamW as an option for short CPU runs), lr linear in the batch size, linear warm-up then cosine decay
per iteration, gradient-norm clipping, AMP (``train.amp``: fp16 on GPU by default, bf16 on any
device), optionally channels_last and torch.compile (``train.channels_last``, ``train.compile``),
evaluation included. After every epoch the full training state
(model, optimiser, schedule, scaler, RNG states, history) goes to ``checkpoint_dir/last.pt``;
``fit`` called again with the same folder continues after the last finished epoch and ends with
the same weights as an uninterrupted run. A NaN or infinite loss fails the trial with that reason.
``train.epochs: 0`` evaluates the model as built (e.g. ``model.release_checkpoint``) once, with no
optimiser and no checkpoint.
"""
from __future__ import annotations

import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, Subset

from harness.data import build_datasets
from harness.data import transforms as tf
from harness.distributed import Group

# fp16's GradScaler skips the optimiser step of an overflowing first batch (its initial scale is
# a guess), and torch then warns on every trial that the schedule stepped first: expected, harmless.
warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class AugmentedSampler(Sampler):
    """An epoch in random order, each sample with the draw that seeds its augmentation, all made
    here from one generator: a run's clips do not depend on how many loader processes load them,
    nor on how many data-parallel workers train on them. Only whole global batches of
    ``batch_size`` are drawn (the last partial one is dropped); worker ``rank`` of ``workers``
    takes its ``batch_size / workers`` consecutive samples of each, so N workers together see
    exactly the batches one process sees. ``set_epoch(seed)`` before each epoch."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, workers: int = 1):
        self.size, self.batch_size, self.seed, self.rank, self.workers = size, batch_size, seed, rank, workers
        self.per_worker = batch_size // workers

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return self.size // self.batch_size * self.per_worker

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        # Until the loader became persistent (#18), a fresh DataLoader per epoch drew its workers'
        # base seed from this generator first: drawn here too, so every epoch's clips are those
        # that earlier sweeps trained on.
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(self.size, generator=generator).tolist()
        draws = torch.randint(2**62, (self.size,), generator=generator).tolist()
        for start in range(0, self.size - self.batch_size + 1, self.batch_size):
            first = start + self.rank * self.per_worker
            yield from zip(order[first:first + self.per_worker], draws[first:first + self.per_worker])


def loader_workers(workers: int | None, cpus: float) -> int:
    """``data.workers``, or by default the trial's CPUs (``--cpus-per-trial``) minus one for the
    training process itself."""
    return workers if workers is not None else max(0, int(cpus) - 1)


def _loader(ds, batch_size: int, shuffle: bool, workers: int, seed: int, group: Group | None = None,
            pin_memory: bool = False) -> DataLoader:
    """Training (``shuffle``: this worker's share of each global batch of ``batch_size``) or
    evaluation batches. Loader processes persist across epochs and prefetch; with ``pin_memory``
    (a CUDA trial) batches arrive in page-locked memory, so their copy to the GPU is asynchronous."""
    group = group or Group()
    sampler = AugmentedSampler(len(ds), batch_size, seed, group.rank, group.size) if shuffle else None
    per_worker = batch_size // group.size if shuffle else batch_size
    extra = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
    return DataLoader(ds, batch_size=per_worker, sampler=sampler, num_workers=workers,
                      worker_init_fn=_worker_init, drop_last=shuffle, pin_memory=pin_memory, **extra)


def autocast_dtype(amp: str | bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: full precision)."""
    if amp == "bf16":
        return torch.bfloat16
    if amp in ("auto", True) and device.type == "cuda":
        return torch.float16
    return None


class Progress:
    """Where an epoch is, every ``every_s`` seconds: batches done, clips/s, mean loss so far, the
    share of the time spent waiting for the loader, and the time the trial's remaining batches
    take at this rate (evaluation not included). Rank 0's clock decides for every worker."""

    def __init__(self, every_s: float, batches: int, epochs: int, callback: Callable[[dict], None] | None,
                 group: Group):
        self.every_s, self.batches, self.epochs, self.callback, self.group = every_s, batches, epochs, callback, group

    def start(self, epoch: int) -> None:
        self.epoch, self.t0 = epoch, time.time()
        self.last = self.t0

    def step(self, batch: int, clips: int, loss_sum: float, waited_s: float) -> None:
        now = time.time()
        if self.callback is None or not self.group.agree(now - self.last >= self.every_s):
            return
        self.last = now
        rate = batch / (now - self.t0)  # batches/s this epoch
        left = (self.batches - batch) + (self.epochs - self.epoch) * self.batches
        self.callback({"epoch": self.epoch, "batch": batch, "batches": self.batches, "loss": loss_sum / clips,
                       "clips_per_s": clips * self.group.size / (now - self.t0), "eta_s": left / rate,
                       "data_wait_fraction": waited_s / (now - self.t0)})


def model_input(x: torch.Tensor, device: torch.device, normalize: str) -> torch.Tensor:
    """uint8 frames from the loader -> the model's input on ``device``: a quarter of the bytes of
    float32 cross the PCIe bus (asynchronously from pinned memory), then normalised there."""
    return tf.normalise(x.to(device, non_blocking=True).float(), normalize)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: str | bool,
             record_gates: bool = True, group: Group | None = None) -> dict:
    """Top-1/top-5 (%) of the clip-averaged softmax over each video's views (clips x crops), over
    every clip of the loader's dataset; with a ``group`` each worker's loader holds its share
    (``shard``) and the scores are gathered, so every clip counts exactly once (``val_clips``).

    Also, for the report (not metrics): ``confusion`` (true x predicted counts), ``predictions``
    and ``labels`` (top-1 and truth per video, in dataset order), ``class_names``, and with ``record_gates`` a histogram of
    the gate values per GSF layer with learned gating (``gates``, see ``harness.gates``)."""
    from harness.gates import GateRecorder, merge

    group = group or Group()
    dataset = loader.dataset
    base = getattr(dataset, "dataset", dataset)  # a shard is a Subset of the dataset
    recorder = GateRecorder(model) if record_gates else None
    with recorder or nullcontext():
        clips = _scores(model, loader, device, amp, base.cfg.normalize)
    clips["index"] = list(getattr(dataset, "indices", range(len(dataset))))
    gates = recorder.summary() if recorder is not None and recorder.probes else None
    everyone = group.gather((clips, gates))
    out = _summarise([c for c, _ in everyone], base.num_classes)
    out["class_names"] = list(base.class_names)
    if gates is not None:
        out["gates"] = merge([g for _, g in everyone])
    return out


def shard(ds, group: Group):
    """Worker ``rank``'s share of an evaluation set: every ``size``-th clip, none twice and none
    padded (``DistributedSampler`` would repeat clips to even the shares out)."""
    return ds if group.size == 1 else Subset(ds, range(group.rank, len(ds), group.size))


@torch.no_grad()
def _scores(model: nn.Module, loader: DataLoader, device: torch.device, amp: str | bool, normalize: str) -> dict:
    """Per clip, in loader order: its label, the top-5 classes of its view-averaged softmax and
    the negative log-likelihood of its label."""
    model.eval()
    top, labels_out, nll = [], [], []
    dtype = autocast_dtype(amp, device)
    for views, labels in loader:
        b, v = views.shape[:2]
        views, labels = model_input(views.flatten(0, 1), device, normalize), labels.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(views).float()
        probs = logits.softmax(-1).view(b, v, -1).mean(1)
        nll += nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="none").tolist()
        top += probs.topk(min(5, probs.shape[1]), dim=1).indices.tolist()
        labels_out += labels.tolist()
    return {"top": top, "labels": labels_out, "nll": nll}


def _summarise(parts: list[dict], num_classes: int) -> dict:
    """The metrics and details of ``evaluate`` from every worker's per-clip scores, in dataset order."""
    rows = sorted(row for p in parts for row in zip(p["index"], p["top"], p["labels"], p["nll"]))
    total = len(rows)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    correct1 = correct5 = 0
    for _, top, label, _ in rows:
        correct1 += top[0] == label
        correct5 += label in top
        confusion[label, top[0]] += 1
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total,
            "val_loss": sum(r[3] for r in rows) / total, "val_clips": float(total),
            "confusion": confusion.tolist(), "predictions": [r[1][0] for r in rows], "labels": [r[2] for r in rows]}


EVALUATION_DETAILS = ("confusion", "predictions", "labels", "class_names", "gates")  # evaluate's non-metric results


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def _to_device(model: nn.Module, tc, device: torch.device) -> None:
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    if tc.compile:  # in place: module names and state-dict keys stay the model's own
        model.compile(backend="inductor" if tc.compile is True else tc.compile)


def _validation(val_ds, cfg, seed: int, workers: int, group: Group, pin_memory: bool) -> DataLoader:
    """This worker's share of the validation set in batches of about ``train.batch_size`` views."""
    views_per_clip = val_ds[0][0].shape[0]
    return _loader(shard(val_ds, group), max(1, cfg.train.batch_size // views_per_clip), False, workers, seed,
                   pin_memory=pin_memory)


def _validate(model: nn.Module, loader: DataLoader, cfg, device: torch.device, group: Group,
              on_evaluate: Callable[[dict, int], None] | None, epoch: int) -> dict[str, float]:
    """``evaluate``: the metrics are returned, the rest goes to ``on_evaluate(details, epoch)`` (rank 0)."""
    scores = evaluate(model, loader, device, cfg.train.amp, group=group)
    details = {k: scores.pop(k) for k in EVALUATION_DETAILS if k in scores}
    if on_evaluate is not None and group.lead:
        on_evaluate(details, epoch)
    return scores


def fit(model: nn.Module, cfg, seed: int, device: torch.device, checkpoint_dir: str | Path | None = None,
        on_epoch: Callable[[dict[str, float], int], None] | None = None,
        on_evaluate: Callable[[dict, int], None] | None = None, cpus: float = 1,
        on_progress: Callable[[dict], None] | None = None, progress_every_s: float = 30,
        group: Group | None = None) -> dict[str, float]:
    """Train ``model`` on ``cfg.data`` with ``cfg.train``; returns the final epoch's metrics.
    ``on_evaluate(details, epoch)`` gets what ``evaluate`` found besides the metrics;
    ``on_progress(dict)`` where an epoch is, every ``progress_every_s`` seconds (``Progress``).
    ``cpus``: what this training may use; ``data.workers`` defaults to one fewer.
    ``group``: the data-parallel workers this one trains with (``harness.distributed``; default
    none): each takes ``batch_size / N`` clips of every global batch, the model is wrapped in
    ``DistributedDataParallel``, evaluation is sharded and gathered, and only rank 0 writes the
    checkpoint (``on_epoch`` is called on every worker)."""
    tc, group = cfg.train, group or Group()
    seed_everything(seed)
    train_ds, val_ds = build_datasets(cfg.data, num_frames=cfg.model.num_frames, seed=seed)
    if train_ds.num_classes != cfg.model.num_classes:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but the dataset has {train_ds.num_classes} classes")
    if tc.batch_size % group.size:
        raise ValueError(f"train.batch_size={tc.batch_size} does not divide among {group.size} data-parallel workers")
    workers, cuda = loader_workers(cfg.data.workers, cpus), device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: cuDNN picks each conv's fastest kernel once
    val_loader = _validation(val_ds, cfg, seed, workers, group, cuda)
    if tc.epochs == 0:  # evaluation only
        _to_device(model, tc, device)
        return _validate(model, val_loader, cfg, device, group, on_evaluate, epoch=0) | {"epochs": 0.0}
    steps_per_epoch = len(train_ds) // tc.batch_size
    if tc.max_batches_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tc.max_batches_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f"train set of {len(train_ds)} clips is smaller than batch_size={tc.batch_size}")

    _to_device(model, tc, device)
    trained = DistributedDataParallel(model, device_ids=[device] if cuda else None) if group.size > 1 else model
    lr = tc.lr * tc.batch_size / tc.lr_batch
    if tc.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(tc.epochs * steps_per_epoch, int(tc.warmup_epochs * steps_per_epoch)))
    amp_dtype = autocast_dtype(tc.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = nn.CrossEntropyLoss()

    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    start_epoch, history = 1, []
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_torch"])
        random.setstate(state["rng_python"])
        np.random.set_state(state["rng_numpy"])
        start_epoch, history = state["epoch"] + 1, state["history"]

    metrics = history[-1] if history else {}
    progress = Progress(progress_every_s, steps_per_epoch, tc.epochs, on_progress, group)
    loader = _loader(train_ds, tc.batch_size, True, workers, seed, group, pin_memory=cuda)
    normalize = cfg.data.normalize
    for epoch in range(start_epoch, tc.epochs + 1):
        trained.train()
        t0 = time.time()
        progress.start(epoch)
        loader.sampler.set_epoch(seed * 1000 + epoch)
        loss_sum, seen, waited, first_loss = 0.0, 0, 0.0, None
        batches = iter(loader)
        for step in range(steps_per_epoch):
            t_wait = time.perf_counter()
            clips, labels = next(batches)
            waited += time.perf_counter() - t_wait
            clips, labels = model_input(clips, device, normalize), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = criterion(trained(clips), labels)
            value = loss.item()  # waits for the GPU: the loader's prefetching overlaps it
            if not math.isfinite(value):
                raise FloatingPointError(f"loss is {value} at epoch {epoch}, batch {step}: training diverged")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.clip_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += value * labels.shape[0]
            seen += labels.shape[0]
            first_loss = value if first_loss is None else first_loss
            progress.step(step + 1, seen, loss_sum, waited)
        del batches
        metrics = _epoch_metrics(group, loss_sum, seen, waited, time.time() - t0, steps_per_epoch, first_loss)
        metrics["lr"] = scheduler.get_last_lr()[0]
        if epoch % tc.eval_every == 0 or epoch == tc.epochs:
            metrics.update(_validate(model, val_loader, cfg, device, group, on_evaluate, epoch))
        metrics["epoch"] = epoch
        history.append(metrics)
        if ckpt is not None and group.lead:
            _save(ckpt, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                         "rng_torch": torch.get_rng_state(), "rng_python": random.getstate(),
                         "rng_numpy": np.random.get_state(), "epoch": epoch, "history": history})
        if on_epoch is not None:
            on_epoch(metrics, epoch)
    return {k: v for k, v in metrics.items() if k != "epoch"} | {"epochs": float(tc.epochs)}


def _epoch_metrics(group: Group, loss_sum: float, seen: int, waited: float, seconds: float, steps: int,
                   first_loss: float) -> dict[str, float]:
    """An epoch's training numbers over every worker: mean loss, the global batches' first loss,
    and the share of the epoch spent waiting for the loader (the slowest worker's)."""
    loss_sum, seen, first_loss = group.sum([loss_sum, seen, first_loss / group.size])
    wait_fraction = max(w for w in group.gather(waited / seconds))
    return {"train_loss": loss_sum / seen, "loss_first_step": first_loss, "train_steps": float(steps),
            "train_clips": seen, "epoch_seconds": seconds, "data_wait_fraction": wait_fraction}
