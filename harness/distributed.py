"""Data-parallel trials: one trial trained by N PyTorch DDP workers through Ray Train.

A trial with ``--workers-per-trial N`` (N > 1; by default the trial's GPUs when it has more than
one) is, to Ray Tune, a small driver (``run_data_parallel``) that starts a Ray Train
``TorchTrainer`` of N workers: Ray Train's documented way to run a Train job as a Tune trial,
with ``TuneReportCallback`` passing rank 0's reports on to Tune. Each worker gets one GPU and the
NCCL backend, or on CPU the gloo backend (the same code path, which is how it is tested here).
Every worker runs ``harness.trial.run_trial`` with its ``Group``: rank 0 measures the model,
writes the MLflow run and the checkpoints; every rank trains on its share of each global batch
and evaluates its share of the validation clips (``harness.train``).

BatchNorm keeps per-worker statistics (no SyncBN), as the TSM/GSM/GSF releases train: each
worker normalises over its own batch_size / N clips x T frames (the paper's 32 clips on 8 GPUs:
4 clips = 32 frames per BN batch), and SyncBN would add one all-reduce per BN layer per step
(BNInception has 70) for no reported gain at that size. Running statistics are rank 0's.

Checkpoints go to the trial's folder in the sweep's storage (Ray Train names them
``checkpoint_<time>``), so ``harness.storage.latest`` finds them as it finds a one-process
trial's, and a retried or later trial resumes from them with any number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """The workers that train one trial together; ``Group()`` is one process alone (no
    collectives). ``device``: where this worker's collectives put their tensors (NCCL needs CUDA)."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the workers."""
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every worker (e.g. whether a progress report is due, so that all
        of them report together: Ray Train's report is a barrier)."""
        if self.size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every worker's ``obj``, in rank order, on every worker."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def current_group(device: torch.device) -> Group:
    """This process's ``Group`` inside a Ray Train worker (its process group is set up by Ray)."""
    import ray.train

    ctx = ray.train.get_context()
    return Group(ctx.get_world_rank(), ctx.get_world_size(), device)


def worker_resources(job: dict[str, Any]) -> dict[str, float]:
    """What each of a trial's workers asks Ray for: its share of the trial's CPUs, one GPU each."""
    workers = int(job["workers"])
    return {"CPU": float(job["cpus_per_trial"]) / workers, "GPU": float(job["gpus"]) / workers}


def run_data_parallel(job: dict[str, Any], run_trial: Callable[..., Any]) -> None:
    """The Tune trial of a data-parallel job: a ``TorchTrainer`` of ``job["workers"]`` workers,
    each running ``run_trial`` (``harness.trial``'s, handed down so that this module needs no
    import of it) through ``_worker``; rank 0's reports reach Tune through ``TuneReportCallback``.
    The checkpoint to start from is looked up now (a retry resumes from what its last attempt saved)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from harness import storage

    resume = storage.latest(job["storage"], job["spec"], {job["hash"]}).get(job["hash"]) or job.get("resume_from")
    resources = worker_resources(job)
    gpu = resources["GPU"] > 0
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"job": {**job, "resume_from": resume}, "run_trial": run_trial},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=int(job["workers"]), use_gpu=gpu, resources_per_worker=resources),
        # The Tune trial's own folder (trial folders are named by hash): its checkpoints sit where
        # a one-process trial's do.
        run_config=RunConfig(name=job["hash"], storage_path=job["sweep_storage"],
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=0),  # Tune retries the trial
                             callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel trial."""
    import ray.train

    job, run_trial = config["job"], config["run_trial"]
    checkpoint = ray.train.get_checkpoint()  # Ray Train's own restart; else the one found at trial start
    if checkpoint is None and job.get("resume_from"):
        checkpoint = ray.train.Checkpoint(job["resume_from"])
    rank = ray.train.get_context().get_world_rank()

    def report(metrics: dict, checkpoint_dir=None) -> None:
        # A barrier: every worker reports each time, rank 0 alone with the checkpoint.
        if checkpoint_dir is not None and rank == 0:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)))
        else:
            ray.train.report(metrics)

    run_trial(job, report=report, checkpoint=checkpoint, distributed=True)
