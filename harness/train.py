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
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from harness.data import build_datasets


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
    here from one generator: a run's clips do not depend on how many workers load them."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator = size, generator

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator).tolist()
        draws = torch.randint(2**62, (self.size,), generator=self.generator).tolist()
        return iter(zip(order, draws))


def loader_workers(workers: int | None, cpus: float) -> int:
    """``data.workers``, or by default the trial's CPUs (``--cpus-per-trial``) minus one for the
    training process itself."""
    return workers if workers is not None else max(0, int(cpus) - 1)


def _loader(ds, batch_size: int, shuffle: bool, workers: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    sampler = AugmentedSampler(len(ds), gen) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, generator=gen,
                      worker_init_fn=_worker_init, drop_last=shuffle, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def autocast_dtype(amp: str | bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: full precision)."""
    if amp == "bf16":
        return torch.bfloat16
    if amp in ("auto", True) and device.type == "cuda":
        return torch.float16
    return None


class Progress:
    """Where an epoch is, every ``every_s`` seconds: batches done, clips/s, mean loss so far and
    the time the trial's remaining batches take at this rate (evaluation not included)."""

    def __init__(self, every_s: float, batches: int, epochs: int, callback: Callable[[dict], None] | None):
        self.every_s, self.batches, self.epochs, self.callback = every_s, batches, epochs, callback

    def start(self, epoch: int) -> None:
        self.epoch, self.t0 = epoch, time.time()
        self.last = self.t0

    def step(self, batch: int, clips: int, loss_sum: float) -> None:
        now = time.time()
        if self.callback is None or now - self.last < self.every_s:
            return
        self.last = now
        rate = batch / (now - self.t0)  # batches/s this epoch
        left = (self.batches - batch) + (self.epochs - self.epoch) * self.batches
        self.callback({"epoch": self.epoch, "batch": batch, "batches": self.batches, "loss": loss_sum / clips,
                       "clips_per_s": clips / (now - self.t0), "eta_s": left / rate})


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: str | bool,
             record_gates: bool = True) -> dict:
    """Top-1/top-5 (%) of the clip-averaged softmax over each video's views (clips x crops).

    Also, for the report (not metrics): ``confusion`` (true x predicted counts), ``predictions``
    and ``labels`` (top-1 and truth per video, in loader order), ``class_names``, and with ``record_gates`` a histogram of
    the gate values per GSF layer with learned gating (``gates``, see ``harness.gates``)."""
    from harness.gates import GateRecorder

    recorder = GateRecorder(model) if record_gates else None
    with recorder or nullcontext():
        out = _scores(model, loader, device, amp)
    out["class_names"] = list(getattr(loader.dataset, "class_names", []))
    if recorder is not None and recorder.probes:
        out["gates"] = recorder.summary()
    return out


@torch.no_grad()
def _scores(model: nn.Module, loader: DataLoader, device: torch.device, amp: str | bool) -> dict:
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    confusion, predictions, truth = None, [], []
    for views, labels in loader:
        b, v = views.shape[:2]
        views, labels = views.to(device, non_blocking=True), labels.to(device)
        dtype = autocast_dtype(amp, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(views.flatten(0, 1)).float()
        probs = logits.softmax(-1).view(b, v, -1).mean(1)
        loss_sum += nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").item()
        top = probs.topk(min(5, probs.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(1).sum().item()
        total += b
        k = probs.shape[1]
        confusion = torch.zeros(k, k, dtype=torch.long) if confusion is None else confusion
        confusion.view(-1).index_add_(0, (labels * k + top[:, 0]).cpu(), torch.ones(b, dtype=torch.long))
        predictions += top[:, 0].tolist()
        truth += labels.tolist()
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "val_loss": loss_sum / total,
            "confusion": confusion.tolist(), "predictions": predictions, "labels": truth}


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


def _validate(model: nn.Module, val_ds, cfg, device: torch.device, seed: int, workers: int,
              on_evaluate: Callable[[dict, int], None] | None, epoch: int) -> dict[str, float]:
    """``evaluate`` on the validation set in batches of about ``train.batch_size`` views; the
    metrics are returned, the rest goes to ``on_evaluate(details, epoch)``."""
    views_per_clip = val_ds[0][0].shape[0]
    loader = _loader(val_ds, max(1, cfg.train.batch_size // views_per_clip), False, workers, seed)
    scores = evaluate(model, loader, device, cfg.train.amp)
    details = {k: scores.pop(k) for k in EVALUATION_DETAILS if k in scores}
    if on_evaluate is not None:
        on_evaluate(details, epoch)
    return scores


def fit(model: nn.Module, cfg, seed: int, device: torch.device, checkpoint_dir: str | Path | None = None,
        on_epoch: Callable[[dict[str, float], int], None] | None = None,
        on_evaluate: Callable[[dict, int], None] | None = None, cpus: float = 1,
        on_progress: Callable[[dict], None] | None = None, progress_every_s: float = 30) -> dict[str, float]:
    """Train ``model`` on ``cfg.data`` with ``cfg.train``; returns the final epoch's metrics.
    ``on_evaluate(details, epoch)`` gets what ``evaluate`` found besides the metrics;
    ``on_progress(dict)`` where an epoch is, every ``progress_every_s`` seconds (``Progress``).
    ``cpus``: what this training may use; ``data.workers`` defaults to one fewer."""
    tc = cfg.train
    seed_everything(seed)
    train_ds, val_ds = build_datasets(cfg.data, num_frames=cfg.model.num_frames, seed=seed)
    if train_ds.num_classes != cfg.model.num_classes:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but the dataset has {train_ds.num_classes} classes")
    workers = loader_workers(cfg.data.workers, cpus)
    if tc.epochs == 0:  # evaluation only
        _to_device(model, tc, device)
        return _validate(model, val_ds, cfg, device, seed, workers, on_evaluate, epoch=0) | {"epochs": 0.0}
    steps_per_epoch = len(train_ds) // tc.batch_size
    if tc.max_batches_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tc.max_batches_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f"train set of {len(train_ds)} clips is smaller than batch_size={tc.batch_size}")

    _to_device(model, tc, device)
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
    progress = Progress(progress_every_s, steps_per_epoch, tc.epochs, on_progress)
    for epoch in range(start_epoch, tc.epochs + 1):
        model.train()
        t0 = time.time()
        progress.start(epoch)
        loader = _loader(train_ds, tc.batch_size, True, workers, seed * 1000 + epoch)
        loss_sum, seen = 0.0, 0
        for step, (clips, labels) in enumerate(loader):
            if step >= steps_per_epoch:
                break
            clips, labels = clips.to(device, non_blocking=True), labels.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = criterion(model(clips), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, batch {step}: training diverged")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.clip_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.item() * labels.shape[0]
            seen += labels.shape[0]
            progress.step(step + 1, seen, loss_sum)
        metrics = {"train_loss": loss_sum / seen, "lr": scheduler.get_last_lr()[0], "epoch_seconds": time.time() - t0}
        if epoch % tc.eval_every == 0 or epoch == tc.epochs:
            metrics.update(_validate(model, val_ds, cfg, device, seed, workers, on_evaluate, epoch))
        metrics["epoch"] = epoch
        history.append(metrics)
        if ckpt is not None:
            _save(ckpt, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                         "rng_torch": torch.get_rng_state(), "rng_python": random.getstate(),
                         "rng_numpy": np.random.get_state(), "epoch": epoch, "history": history})
        if on_epoch is not None:
            on_epoch(metrics, epoch)
    return {k: v for k, v in metrics.items() if k != "epoch"} | {"epochs": float(tc.epochs)}
