"""One trial: build the model, measure it, train and evaluate it when asked; log to MLflow.

``run_trial`` is a plain function of a config dict (the Ray Tune trainable), and runs the same
way outside Ray (``report`` defaults to a no-op), which is how the tests call it.

Checkpoints go through Ray Tune: after every epoch the trial reports its training state as a
``Checkpoint`` (Ray copies it to the sweep's storage), then logs the epoch to MLflow. A trial
that starts from a checkpoint (a retry after its node was lost, or a later sweep) continues the
run that checkpoint belongs to and first logs the epochs that run lacks, so one run per trial
holds every epoch, whichever nodes and sweeps ran them.
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from gsf import build_model
from harness import storage, usercode
from harness.measure import measure, relative_cost
from harness.run_info import log_evaluation, trial_params, trial_tags, where_it_runs
from harness.spec import TrialConfig
from harness.tracking import TrialRun

# What a trial's reports carry besides its metrics (Ray Tune adds its own, AUTO_RESULT_KEYS).
INFO_KEYS = ("epoch", "run_id", "host", "ray_node_id", "code_digest", "code_path", "attempt", "final", "progress",
             "batch", "batches", "eta_s", "clips_per_s", "loss", "checkpoint_path")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class NoGPU(RuntimeError):
    """Ray gave a trial a GPU (or its spec requires one) that torch cannot see."""


def pick_device(want: str, gpus: float, host: str, distributed: bool = False) -> torch.device:
    """Where a trial runs: ``want`` is its ``train.device`` (auto | cuda | cpu) and ``gpus`` what
    Ray gave it. A GPU from Ray, or ``cuda``, that torch cannot see is an error naming the host and
    what torch saw: never a silent fall-back to the CPU."""
    if want == "cpu":
        return torch.device("cpu")
    if gpus <= 0 and want == "auto":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        given = f"Ray gave this trial {gpus:g} GPU(s)" if gpus > 0 else "train.device is cuda"
        raise NoGPU(f"{given} but on {host} torch {torch.__version__} sees no CUDA device "
                    f"(torch.cuda.device_count()={torch.cuda.device_count()}, built for CUDA {torch.version.cuda}, "
                    f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}): check the node's "
                    "NVIDIA driver and CUDA_VISIBLE_DEVICES, or run with --device cpu")
    if distributed:
        import ray.train.torch

        device = ray.train.torch.get_device()  # this worker's own GPU among the node's
        torch.cuda.set_device(device)
        return device
    return torch.device("cuda")


class NoRun:
    """What a data-parallel worker other than rank 0 has for an MLflow run: rank 0 writes it."""

    run_id = None
    earlier: dict[str, str] = {}

    def logged_steps(self, metric: str) -> set[int]:
        return set()

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        pass

    def set_tags(self, tags: dict) -> None:
        pass

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own numbers in one of its Ray Tune results."""
    from ray.tune.result import AUTO_RESULT_KEYS

    skip = set(AUTO_RESULT_KEYS) | set(INFO_KEYS) | {"done", "trial_id", "experiment_tag"}
    return {k: float(v) for k, v in result.items()  # "config/..." columns: Ray's copy of the config
            if k not in skip and "/" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


def identity(job: dict[str, Any], device_name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The params and tags of a trial's MLflow run (also what the driver writes when it recovers
    a run from Ray's results)."""
    seed = str(int(job["config"].get("seed", 0)))
    params = {**job["config"], "measure_only": job["measure_only"], **trial_params(job),
              "world_size": int(job.get("workers", 1))}
    tags = {"trial_hash": job["hash"], "config_key": job.get("config_key", ""),
            "model_code_digest": job.get("model_code_digest", ""),
            "profile": job.get("profile", ""), "variant": job.get("variant", ""),
            "seed": seed, "device": device_name, "git_commit": job.get("git_commit", "unknown"),
            "measure_only": str(job["measure_only"])}
    return params, tags


def restore(checkpoint, folder: Path, trial_hash: str) -> dict[str, Any]:
    """Download ``checkpoint`` (a ``ray.tune.Checkpoint`` or None) into ``folder``; its meta (empty
    without one). A checkpoint of another trial is a bug in the caller: fail."""
    if checkpoint is None:
        return {}
    checkpoint.to_directory(str(folder))
    meta = json.loads((folder / storage.META).read_text())
    if meta.get("trial_hash") != trial_hash:
        raise RuntimeError(f"checkpoint {checkpoint.path} is of trial {meta.get('trial_hash')}, not {trial_hash}")
    return meta


def check_storage(job: dict[str, Any], host: str) -> None:
    """Fail at once, naming this node, when it cannot see the sweep's storage: its checkpoints
    would go to a disk no other node reads."""
    marker = job.get("storage_marker")
    if marker and storage.read_text(marker) is None:
        raise RuntimeError(f"this node ({host}) does not see the sweep's storage {job['storage']} ({marker} is "
                           "missing here): --storage must be a folder every node mounts (NFS) or s3://...")


def run_trial(job: dict[str, Any], report: Callable[..., None] | None = None, checkpoint=None,
              distributed: bool = False) -> dict[str, Any]:
    """``job``: the trial's resolved ``config`` and ``hash``, plus where to log (``tracking_uri``,
    ``parent_run_id``, ``spec``) and what to do (``measure_only``). With ``baseline_model`` (the
    ``model`` section of the variant's baseline), the trial also times that model alternately with
    its own and reports ``latency_x`` / ``train_step_x``.

    ``report(metrics, checkpoint_dir=None)``: Ray Tune's report; a folder given is the trial's
    checkpoint for that epoch. ``checkpoint``: a ``ray.tune.Checkpoint`` to resume from.
    ``distributed``: this is one worker of a data-parallel trial (``harness.distributed``): rank 0
    measures and writes the run and the checkpoints, every rank trains."""
    from harness.distributed import Group, current_group

    report = report or (lambda metrics, checkpoint_dir=None: None)
    code = check_code(job)
    cfg = TrialConfig.model_validate({k: v for k, v in job["config"].items() if k != "seed"})
    seed = int(job["config"].get("seed", 0))
    here = where_it_runs()
    gpus = float(job.get("gpus", 0)) / int(job.get("workers", 1))
    device = pick_device(cfg.train.device, gpus, here["host"], distributed)
    group = current_group(device) if distributed else Group()
    with tempfile.TemporaryDirectory(prefix="gsf-trial-") as work:
        work = Path(work)
        if not job["measure_only"]:
            check_storage(job, here["host"])
        meta = restore(checkpoint, work, job["hash"])
        if not group.lead:
            return _run(job, cfg, seed, device, NoRun(), meta, work, {**here}, report, group)
        params, tags = identity(job, describe_device(device))
        run = TrialRun(job["tracking_uri"], job["spec"], job.get("parent_run_id"), job["label"], params,
                       {**tags, **trial_tags(job, device), **here, **code_tags(job, code)},
                       checkpoint_run_id=meta.get("run_id"))
        attempt = int(run.earlier.get("attempt", 0)) + 1
        where = f"{here['host']} (Ray node {here['ray_node_id'][:12]}) from epoch {meta.get('epoch', 0) + 1}"
        attempts = "; ".join(filter(None, [run.earlier.get("attempts"), f"{attempt}: {where}"]))
        run.set_tags({"attempt": attempt, "attempts": attempts})
        info = {"run_id": run.run_id, "attempt": attempt, **here}
        return _run(job, cfg, seed, device, run, meta, work, info, report, group)


def _run(job, cfg, seed, device, run: TrialRun | NoRun, meta: dict, work: Path, info: dict, report,
         group) -> dict[str, Any]:
    if not job["measure_only"] and not run.earlier:
        run.log_metrics({"top1": math.nan})  # not evaluated yet; first, so that MLflow's compare page plots it
    try:
        torch.manual_seed(seed)
        model_cfg = cfg.model
        if job["measure_only"]:  # params, FLOPs and latency do not depend on the weights: no file needed
            model_cfg = model_cfg.model_copy(update={"pretrained": None})
        model = build_model(model_cfg).to(device)
        measured = _measure(job, cfg, model, device) if group.lead else {}  # rank 0 measures
        metrics = {k: v for k, v in measured.items() if isinstance(v, (int, float))}
        run.log_metrics(metrics)
        run.set_tags({k: v for k, v in measured.items() if isinstance(v, str)})
        result = dict(metrics)
        if not job["measure_only"]:
            result.update(_train(job, cfg, seed, device, model, run, meta, work, info, result, report, group))
        # MLflow's metrics are rounded to what the UI should show (reports.runs.readable); the raw values:
        run.log_dict({"final": result, "epochs": meta.get("history", [])}, "metrics_raw.json")
    except SystemExit as e:
        # Ray Tune stops a trial by raising SystemExit(0) inside report(): not a failure.
        run.end("KILLED" if e.code in (0, None) else "FAILED")
        raise
    except BaseException as e:
        # The driver's console shows the error's line; the traceback is kept here (its end in a tag,
        # all of it as traceback.txt) and in the trial's folder (Ray's error.txt).
        text = traceback.format_exc()
        run.set_tags({"error": f"{type(e).__name__}: {e}", "traceback": text[-5000:]})
        if isinstance(run, TrialRun):  # rank 0 of a data-parallel trial, or a plain trial
            run.client.log_text(run.run_id, text, "traceback.txt")
        run.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    run.end("FINISHED")
    # The last report comes after the run is closed: Ray may end the trial inside it.
    report({**result, **info, "final": True})
    return result


def _measure(job, cfg, model, device) -> dict[str, float | str]:
    measured = {}
    if job.get("baseline_model") and cfg.measure.latency:
        # First, while neither model has run: the fvcore trace or timed train steps of one
        # model alone left it ~5% slower against a fresh baseline (allocator state).
        baseline = build_model(type(cfg.model).model_validate(job["baseline_model"])).to(device)
        measured.update(relative_cost(model, baseline, cfg.model.num_frames, cfg.measure))
        del baseline
    measured.update(measure(model, cfg.model.num_frames, cfg.measure))
    return measured


def _train(job, cfg, seed, device, model, run: TrialRun | NoRun, meta: dict, work: Path, info: dict,
           measured: dict, report, group) -> dict[str, float]:
    from harness.train import fit, loader_workers

    # Epochs the checkpoint holds but this run lacks: a new run (another store, or the old run
    # deleted), or a node lost between the checkpoint and the MLflow write.
    logged = run.logged_steps("train_loss")
    for past in meta.get("history", []):
        if past["epoch"] not in logged:
            run.log_metrics({k: v for k, v in past.items() if k != "epoch"}, step=past["epoch"])

    def on_epoch(epoch_metrics: dict[str, float], epoch: int) -> None:
        if not group.lead:  # rank 0 holds the checkpoint and the run; the others join the report
            report({**epoch_metrics, **info, "epoch": epoch})
            return
        history = meta.setdefault("history", [])
        history.append(dict(epoch_metrics))
        state = work / storage.STATE
        meta.update(trial_hash=job["hash"], run_id=run.run_id, epoch=epoch, state_bytes=state.stat().st_size)
        (work / storage.META).write_text(json.dumps(meta))
        # Ray copies the checkpoint to storage before report returns; only then does MLflow get
        # the epoch, so a run never shows an epoch that no checkpoint holds.
        report({**measured, **epoch_metrics, **info, "epoch": epoch}, checkpoint_dir=work)
        run.log_metrics(epoch_metrics, step=epoch)

    def on_progress(p: dict) -> None:
        step = (p["epoch"] - 1) * p["batches"] + p["batch"]
        run.log_metrics({"progress_loss": p["loss"], "progress_clips_per_s": p["clips_per_s"],
                         "progress_data_wait_fraction": p["data_wait_fraction"]}, step=step)
        report({**info, **p, "progress": True})

    cpus = float(job.get("cpus_per_trial", 1)) / group.size  # this worker's share
    run.set_tags({"data_workers": loader_workers(cfg.data.workers, cpus)})
    trained = fit(model, cfg, seed=seed, device=device, checkpoint_dir=work, on_epoch=on_epoch,
                  on_evaluate=lambda details, epoch: log_evaluation(run, details), cpus=cpus,
                  on_progress=on_progress, progress_every_s=job.get("progress_every_s", 30.0), group=group)
    if cfg.train.epochs == 0:  # evaluation only: no epoch ran, so the result is logged here
        run.log_metrics({k: v for k, v in trained.items() if k != "epochs"}, step=0)
    run.log_metrics({"epochs": trained["epochs"]})
    return trained


def check_code(job: dict[str, Any]) -> dict[str, str]:
    """Import the spec's modules here (a Ray worker imports only gsf by itself), and return the
    sources of the model's code; a digest other than the driver's (a node with other code, or a
    file edited since the sweep started) fails the trial: its identity would not be its code."""
    try:
        usercode.import_modules(job.get("imports", []), job.get("import_folder"), first=False)
    except usercode.ImportFailed as e:
        raise RuntimeError(f"{e} (on {platform.node()})") from None
    code = usercode.code_sources(job.get("user_modules", []))
    expected = job.get("model_code_digest")
    if expected and usercode.digest(code) != expected:
        raise RuntimeError(f"the model's code on {platform.node()} is not the code the sweep started with "
                           f"(digest {usercode.digest(code)}, expected {expected}); re-run the sweep to "
                           "run its trials with the current code")
    return code


def code_tags(job: dict[str, Any], code: dict[str, str]) -> dict[str, str]:
    """The files (and sha256 prefixes) of the model's code this trial ran, and where it found the
    user's. Code of more files than one MLflow tag can list is listed as {}: its digest still
    decides whether the trial re-runs, only the re-run line names no files."""
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    listed = json.dumps(usercode.listing(code), sort_keys=True)
    return {"model_code_sources": listed if len(listed) <= MAX_TAG_VAL_LENGTH else "{}",
            "user_code": json.dumps(usercode.py_modules(job.get("user_modules", [])))}


def tune_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune entry point: ``config["job"]`` is one job dict from the sweep. It resumes from
    Tune's own latest checkpoint (a retry) or else from the one an earlier sweep left."""
    from ray import tune

    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    job = config["job"]
    if int(job.get("workers", 1)) > 1 and not job["measure_only"]:
        from harness.distributed import run_data_parallel

        return run_data_parallel(job, run_trial)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None and job.get("resume_from"):
        checkpoint = tune.Checkpoint(job["resume_from"])

    def report(metrics: dict, checkpoint_dir: Path | None = None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None)

    run_trial(job, report=report, checkpoint=checkpoint)
