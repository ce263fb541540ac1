"""The trials on Ray: each trial's job, starting Ray (the project's code shipped, one-line logs,
the resources each trial asks for) and stopping it, and the Ray Tune run itself (Ctrl-C, retries
after a lost node, each failed trial's error)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.preflight import choose_resources
from harness.spec import Spec, SpecError
from harness.trial_outcome import describe_failure, first_line


def job(spec: Spec, trial, uri: str, parent: str, results_dir: Path, args, commit: str) -> dict[str, Any]:
    job = {
        "config": trial.config, "hash": trial.hash, "label": trial.label, "variant": trial.variant,
        "spec": spec.name, "profile": spec.profile, "tracking_uri": uri, "parent_run_id": parent,
        "results_dir": str(results_dir), "measure_only": args.measure_only, "git_commit": commit,
        "gpus": args.gpus_per_trial, "cpus_per_trial": args.cpus_per_trial, "progress_every_s": args.progress_every,
        "workers": 1 if args.measure_only else args.workers_per_trial,
        "config_key": trial.config_key, "model_code_digest": trial.code,
        # The worker imports these first (what they register is used in the model), and checks that
        # the code it runs is the code this driver's identity of the trial was computed from.
        "imports": spec.imports, "import_folder": str(spec.path.resolve().parent), "user_modules": list(trial.user_modules),
    }
    if trial.baseline_model is not None:
        job["baseline_model"] = trial.baseline_model  # the trial times both side by side
    return job


def runtime_env(extra_modules: list[Path] = ()) -> dict[str, Any]:
    """What every Ray worker gets besides its own Python environment (which needs the project's
    dependencies): the project's packages, uploaded by Ray from this checkout, so that no node
    needs the checkout, let alone at the same path. ``extra_modules``: more local packages or
    modules to ship the same way (a spec's own code).

    The working_dir is an empty folder: without one, Ray puts the driver's current directory on
    every worker's sys.path, ahead of the shipped packages, and a node with a checkout of its own
    at that path (an older one, say) would import that instead."""
    import importlib

    from harness.run_info import SHIPPED_PACKAGES

    global _EMPTY_DIR
    if _EMPTY_DIR is None:
        _EMPTY_DIR = tempfile.TemporaryDirectory(prefix="gsf-harness-wd-")
    modules = [str(Path(importlib.import_module(name).__file__).parent) for name in SHIPPED_PACKAGES]
    return {"py_modules": modules + [str(m) for m in extra_modules], "working_dir": _EMPTY_DIR.name,
            "excludes": ["__pycache__", "*.pyc"]}


_EMPTY_DIR: tempfile.TemporaryDirectory | None = None


def start_ray(args, spec: Spec, todo) -> None:
    """Connect to (or start) Ray with the project's code and the spec's own modules (its
    ``imports:`` from outside the environment) in its runtime_env, then decide what each trial
    asks for (``harness.resources.plan``: GPUs by default where there are any) and say so. Requests
    no node could ever grant are refused (Ray would otherwise wait for ever, warning once a
    minute), and so are trials that need CUDA where no GPU will be given."""
    import logging

    import ray

    from harness.usercode import py_modules

    env = runtime_env([Path(m) for m in py_modules(spec.user_modules)])
    logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.WARNING)  # a line per package shipped
    # Ray's warnings and errors on the console, one line each; no INFO lines ("Started a local Ray
    # instance", "Wrote the latest version of all result files ...").
    quiet = {"include_dashboard": False, "log_to_driver": False, "runtime_env": env,
             "logging_level": logging.WARNING, "logging_format": "ray %(levelname)s: %(message)s"}
    if args.cluster:
        ray.init(address=args.cluster, **quiet)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), **quiet)
        context = ray.get_runtime_context()
        _watch_driver(os.path.join(context.get_temp_dir(), context.get_session_name()))
    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, OneLine) for f in handler.filters):  # once, however often Ray starts
            handler.addFilter(OneLine())
    try:
        choose_resources(args, spec, todo, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    except SpecError:
        stop_ray()
        raise


_REAPER: subprocess.Popen | None = None


def _watch_driver(session_dir: str) -> None:
    """Start ``harness/ray_reaper.py``: if this driver dies without stopping Ray (SIGKILL), it ends
    the Ray processes that would outlive it (the dashboard and runtime-env agents, by minutes)."""
    global _REAPER
    _REAPER = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ray_reaper.py")), str(os.getpid()),
                                session_dir], start_new_session=True, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class OneLine:
    """A filter for the handlers of Ray's loggers on the driver: a record is one line (the first of
    its message, and the last of its exception's), nothing under WARNING, and no line for a failed
    trial or the list of them, which the sweep prints itself with the error (the traceback stays
    in the trial's error.txt and its MLflow run)."""

    OWN = ("Trial task failed", "Trials did not complete")

    def filter(self, record) -> bool:
        import logging

        if record.levelno < logging.WARNING:
            return False
        text = [line for line in record.getMessage().splitlines() if line.strip()]
        if text and text[0].startswith(self.OWN):
            return False
        line = text[0].strip() if text else ""
        if record.exc_info and record.exc_info[1] is not None:
            line = f"{line}: {first_line(record.exc_info[1])}" if line else first_line(record.exc_info[1])
        record.msg, record.args, record.exc_info, record.exc_text, record.stack_info = line, (), None, None, None
        return True


def stop_ray() -> None:
    """Stop Ray, and the watcher that would have stopped it had this driver died (``_watch_driver``)."""
    global _REAPER
    import ray

    if _REAPER is not None:
        _REAPER.terminate()
        _REAPER.wait()
        _REAPER = None
    ray.shutdown()


def run_trials(spec: Spec, jobs: list[dict[str, Any]], store: str, sweep_name: str, args, client, uri: str):
    """Run the jobs; returns (the failed trials' errors, whether Ctrl-C stopped the sweep, Ray's results)."""
    from harness.tune_progress import OnInterrupt, Progress

    on_interrupt = OnInterrupt()
    tuner = _tuner(spec, jobs, store, sweep_name, args, on_interrupt, Progress(jobs, on_interrupt, args, client, uri))
    previous = signal.signal(signal.SIGINT, on_interrupt.on_sigint)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        grid = tuner.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
    results = list(grid)
    return _errors(results, args.max_failures), on_interrupt.requested, results


def _tuner(spec: Spec, jobs: list[dict[str, Any]], store: str, sweep_name: str, args, on_interrupt, progress):
    """Ray Tune's run of the jobs: one trial per job, stopped by ``on_interrupt``, told by ``progress``."""
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

    from harness.trial import tune_trainable

    data_parallel = args.workers_per_trial > 1 and not args.measure_only
    # A data-parallel trial is a driver that starts its Ray Train workers, which ask for the
    # trial's CPUs and GPUs themselves; Tune then cannot count them, so it is told how many fit.
    # The driver takes no CPU (one byte of memory: Tune needs some request): were it to take a
    # CPU, a box whose every CPU goes to the workers could never place them beside it.
    resources = {"cpu": 0, "memory": 1} if data_parallel else {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    return Tuner(
        tune.with_resources(tune_trainable, resources),
        param_space={"job": tune.grid_search(jobs)},
        # Trial folders named by hash: a later sweep finds each trial's checkpoints (storage.latest).
        tune_config=TuneConfig(reuse_actors=True, trial_dirname_creator=_trial_folder,
                               max_concurrent_trials=args.trials_at_once if data_parallel else None),
        run_config=RunConfig(
            name=sweep_name,
            storage_path=storage_path(store, spec.name),
            failure_config=FailureConfig(max_failures=args.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            stop=on_interrupt,
            verbose=0,
            callbacks=[progress],
        ),
    )


def _errors(results, max_failures: int) -> list[str]:
    """One line per failed trial among Ray's results."""
    errors = []
    for result in results:
        if result.error:
            label = result.config["job"]["label"] if result.config else "?"
            errors.append(f"{label}: {describe_failure(result.error, result.metrics or {}, max_failures)}")
    return errors


def storage_path(store: str, spec_name: str) -> str:
    return f"{store.rstrip('/')}/{spec_name}"


def _trial_folder(trial) -> str:
    return trial.config["job"]["hash"]

