"""One trial: build the model, measure it, train and evaluate it when asked; log to MLflow.

``run_trial`` is a plain function of a config dict (the Ray Tune trainable), and runs the same
way outside Ray (``report`` defaults to a no-op), which is how the tests call it.
"""
from __future__ import annotations

import math
import os
import platform
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from gsf import build_model
from harness.measure import measure, relative_cost
from harness.spec import TrialConfig
from harness.run_info import log_evaluation, trial_params, trial_tags
from harness.tracking import TrialRun


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_trial(job: dict[str, Any], report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """``job``: the trial's resolved ``config`` and ``hash``, plus where to log (``tracking_uri``,
    ``parent_run_id``, ``spec``, ``results_dir``) and what to do (``measure_only``). With
    ``baseline_model`` (the ``model`` section of the variant's baseline), the trial also times that
    model alternately with its own and reports ``latency_x`` / ``train_step_x``."""
    report = report or (lambda metrics: None)
    cfg = TrialConfig.model_validate({k: v for k, v in job["config"].items() if k != "seed"})
    seed = int(job["config"].get("seed", 0))
    use_cuda = torch.cuda.is_available() and job.get("gpus", 0) > 0
    device = torch.device("cuda" if use_cuda else "cpu")
    run = TrialRun(
        job["tracking_uri"], job["spec"], job.get("parent_run_id"), job["label"],
        params={**job["config"], "measure_only": job["measure_only"], **trial_params(job)},
        tags={"trial_hash": job["hash"], "profile": job.get("profile", ""), "variant": job.get("variant", ""),
              "seed": str(seed), "device": describe_device(device), "git_commit": job.get("git_commit", "unknown"),
              "measure_only": str(job["measure_only"]), **trial_tags(job, device)},
    )
    if not job["measure_only"]:
        run.log_metrics({"top1": math.nan})  # not evaluated yet; first, so that MLflow's compare page plots it
    try:
        torch.manual_seed(seed)
        model = build_model(**cfg.model.model_dump()).to(device)
        measured = {}
        if job.get("baseline_model") and cfg.measure.latency:
            # First, while neither model has run: the fvcore trace or timed train steps of one
            # model alone left it ~5% slower against a fresh baseline (allocator state).
            base_cfg = type(cfg.model).model_validate(job["baseline_model"])
            baseline = build_model(**base_cfg.model_dump()).to(device)
            measured.update(relative_cost(model, baseline, cfg.model.num_frames, cfg.measure))
            del baseline
        measured.update(measure(model, cfg.model.num_frames, cfg.measure))
        metrics = {k: v for k, v in measured.items() if isinstance(v, (int, float))}
        run.log_metrics(metrics)
        run.set_tags({k: v for k, v in measured.items() if isinstance(v, str)})
        result = dict(metrics)
        if not job["measure_only"]:
            from harness.train import fit

            ckpt_dir = Path(job["results_dir"]) / job["spec"] / "checkpoints" / job["hash"]

            epochs_run = []

            def on_epoch(epoch_metrics: dict[str, float], epoch: int) -> None:
                epochs_run.append(epoch)
                run.log_metrics(epoch_metrics, step=epoch)
                report({**result, **epoch_metrics, "epoch": epoch})

            # Per-epoch metrics are already logged (step = epoch); the last epoch's are the result.
            trained = fit(model, cfg, seed=seed, device=device, checkpoint_dir=ckpt_dir, on_epoch=on_epoch,
                          on_evaluate=lambda details, epoch: log_evaluation(run, details))
            if not epochs_run:
                # The checkpoint already held the last epoch (its driver died before the run was
                # closed): no epoch ran here, so this run gets the result now, or it has no top1.
                run.log_metrics(trained, step=cfg.train.epochs)
            result.update(trained)
    except SystemExit as e:
        # Ray Tune stops a trial by raising SystemExit(0) inside report(): not a failure.
        run.end("KILLED" if e.code in (0, None) else "FAILED")
        raise
    except BaseException as e:
        run.set_tags({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-5000:]})
        run.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    run.end("FINISHED")
    # The last report comes after the run is closed: Ray may end the trial inside it.
    report(result)
    return result


def tune_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune entry point: ``config["job"]`` is one job dict from the sweep."""
    from ray.tune import report

    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    run_trial(config["job"], report=lambda metrics: report(metrics))
