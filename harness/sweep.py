"""Run a sweep spec: one Ray Tune trial per grid point, MLflow runs, the rendered table.

    python -m harness.sweep SPEC.yaml [--profile NAME] [--measure-only] [--results-dir DIR]
        [--address ADDR] [--cpus-per-trial N] [--gpus-per-trial G] [--fresh] [--dry-run]

Exit status: 0 success, 2 bad spec, data or command line (one line), 1 when trials failed
(listed), 130 when interrupted (Ctrl-C: what finished, what did not, how to resume).
Finished trials (same config hash, FINISHED in MLflow) are not run again; an interrupted
training trial resumes from its last epoch checkpoint. One driver at a time per results dir and
spec: a second one exits 2 naming the first.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.spec import Spec, SpecError, load_spec

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, no usage dump
        print(f"harness.sweep: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m harness.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="sweep spec YAML (ablations/*.yaml)")
    p.add_argument("--profile", help="profile of the spec to apply (default: smoke when defined)")
    p.add_argument("--measure-only", action="store_true", help="params, FLOPs and latency only; no training")
    p.add_argument("--results-dir", default="results", help="where tables, checkpoints, Ray and MLflow data go")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--fresh", action="store_true", help="re-run every trial, ignoring finished runs and checkpoints")
    p.add_argument("--dry-run", action="store_true",
                   help="check the spec, the data, the results dir and the store, list the trials, run nothing")
    args = p.parse_args(argv)
    if not (math.isfinite(args.cpus_per_trial) and args.cpus_per_trial > 0):
        p.error(f"--cpus-per-trial must be a number > 0, got {args.cpus_per_trial}")
    if not (math.isfinite(args.gpus_per_trial) and args.gpus_per_trial >= 0):
        p.error(f"--gpus-per-trial must be a number >= 0, got {args.gpus_per_trial}")
    return args


def _pick_runs(finished: dict[str, list[Any]], h: str, measure_only: bool):
    """The newest finished run of a trial that answers the request (a trained run also has sizes)."""
    for run in finished.get(h, []):
        if measure_only or run.data.tags.get("measure_only") == "False":
            return run
    return None


def check_results_dir(arg: str) -> Path:
    """The results dir, absolute, created and writable; else a one-line ``SpecError``."""
    path = Path(arg).expanduser().resolve()
    bad = [c for c in "?%" if c in str(path)]
    if bad:
        # sqlite:///path cuts the path at '?' and URL-decodes '%': MLflow's store would go elsewhere.
        raise SpecError(f"--results-dir {path}: holds {' and '.join(map(repr, bad))}, which the MLflow store's "
                        "sqlite URI cannot carry; choose a folder without '?' and '%'")
    if path.exists() and not path.is_dir():
        raise SpecError(f"--results-dir {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise SpecError(f"--results-dir {path}: cannot {'write in' if path.is_dir() else 'create'} it: "
                        f"{e.strerror or e}") from None
    return path


def take_lock(path: Path):
    """Hold an exclusive lock on ``path`` for the rest of this process (the open file is returned:
    keep it). Another driver holding it is a one-line ``SpecError`` naming that driver."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise SpecError(f"{path}: another sweep of this spec on this results dir is running ({holder}); "
                        "wait for it to end, or stop it") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f


def check_data(spec: Spec, trials) -> None:
    """The data of every distinct (data section, num_classes) among ``trials``, once, here in the
    driver: a bad list or folder is one line before anything starts, not one failure per trial."""
    from harness.data import DataConfig, DataError, check_data as check

    seen = set()
    for trial in trials:
        data, num_classes = trial.config["data"], trial.config["model"]["num_classes"]
        key = json.dumps([data, num_classes], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            check(DataConfig.model_validate(data), num_classes)
        except DataError as e:
            raise SpecError(f"{spec.path}: data of {trial.label!r}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    try:
        spec = load_spec(args.spec, args.profile)
        results_dir = check_results_dir(args.results_dir)
        lock = take_lock(results_dir / spec.name / "sweep.lock")  # noqa: F841 (held until exit)

        from harness import tracking

        uri = tracking.tracking_uri(results_dir)
        client = tracking.open_store(uri)
        stale = tracking.close_stale_runs(client, spec.name, str(results_dir))
        finished = {} if args.fresh else tracking.finished_trials(client, spec.name)
        todo = [t for t in spec.trials if _pick_runs(finished, t.hash, args.measure_only) is None]
        if not args.measure_only:
            check_data(spec, todo)
    except SpecError as e:
        print(f"harness.sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness.sweep: interrupted before any trial started; nothing ran", file=sys.stderr)
        return INTERRUPTED

    if stale:
        print(f"closed {stale} run(s) left RUNNING by an earlier driver of this results dir as KILLED", flush=True)
    mode = "measure-only" if args.measure_only else "train + measure"
    print(f"{spec.name} [profile {spec.profile or '-'}, {mode}]: {len(spec.trials)} trials, "
          f"{len(spec.trials) - len(todo)} already finished, {len(todo)} to run", flush=True)
    if args.dry_run:
        for t in todo:
            print(f"  to run: {t.label} ({t.hash})")
        return 0
    if args.fresh:
        for trial in spec.trials:
            shutil.rmtree(results_dir / spec.name / "checkpoints" / trial.hash, ignore_errors=True)

    from reports.report import report_sweep, runs_view_url, ui_base, write_index

    commit = tracking.git_commit()
    errors: list[str] = []
    interrupted = False
    parent = None
    if todo:
        status = "FAILED"
        try:
            _start_ray(args)
            parent = tracking.start_parent(client, spec.name, {
                "profile": spec.profile, "git_commit": commit, "spec_path": str(spec.path), "mode": mode,
                "results_dir": str(results_dir), "driver": f"pid {os.getpid()} on {socket.gethostname()}"},
                tracking.local_artifact_location(uri, results_dir, spec.name))
            jobs = [_job(spec, t, uri, parent, results_dir, args, commit) | {"sweep_trials": len(todo)} for t in todo]
            errors, interrupted = _run_ray(spec, jobs, results_dir, args)
            status = "KILLED" if interrupted else "FAILED" if errors else "FINISHED"
        except SpecError as e:
            print(f"harness.sweep: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # before the trials started, or a second Ctrl-C
            interrupted, status = True, "KILLED"
        finally:
            _stop_ray()
            if parent is not None:
                # A trial whose process was stopped or lost cannot close its own run.
                tracking.close_children(client, parent, "KILLED")
                client.set_terminated(parent, status)
        finished = tracking.finished_trials(client, spec.name)

    runs = {t.hash: r for t in spec.trials if (r := _pick_runs(finished, t.hash, args.measure_only)) is not None}
    out_dir = results_dir / spec.name
    report = report_sweep(spec, client, runs, out_dir, uri, parent, mode)
    print((out_dir / "table.md").read_text().split("\n\n")[0])
    print("\n" + "\n".join(report["lines"]) if report["lines"] else "")
    index = write_index(results_dir)
    view = runs_view_url(ui_base(uri), report["experiment_id"], report.get("runs_view"))
    print(f"\nwrote {out_dir}/table.{{csv,md,html,tex,png}}, verdicts.csv, figures {', '.join(report['figures'].values())}"
          f"\nreport: {index}\nMLflow store: {uri}; runs with the key columns (after `make mlflow-ui`): {view}")
    if interrupted:
        done = [t for t in todo if t.hash in runs]
        left = [t for t in todo if t.hash not in runs]
        print(f"\ninterrupted: {len(done)} of the {len(todo)} trial(s) to run finished, {len(left)} did not:",
              file=sys.stderr)
        for t in left:
            print(f"  - {t.label}", file=sys.stderr)
        print(f"resume with the same command ({shlex.join(_command(argv))}): finished trials are kept, "
              "interrupted ones continue from their last epoch checkpoint", file=sys.stderr)
        return INTERRUPTED
    if errors:
        print(f"\n{len(errors)} trial(s) failed:", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    return 0


def _command(argv: list[str] | None) -> list[str]:
    """This command line, minus --fresh (resuming must not start over)."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--fresh"]
    return ["python", "-m", "harness.sweep", *words]


def _job(spec: Spec, trial, uri: str, parent: str, results_dir: Path, args, commit: str) -> dict[str, Any]:
    job = {
        "config": trial.config, "hash": trial.hash, "label": trial.label, "variant": trial.variant,
        "spec": spec.name, "profile": spec.profile, "tracking_uri": uri, "parent_run_id": parent,
        "results_dir": str(results_dir), "measure_only": args.measure_only, "git_commit": commit,
        "gpus": args.gpus_per_trial, "cpus_per_trial": args.cpus_per_trial,
    }
    if trial.baseline:
        # The baseline's model at the same grid point: the trial times both side by side.
        base = next(t for t in spec.trials if t.variant == trial.baseline and t.axes == trial.axes)
        job["baseline_model"] = base.config["model"]
    return job


def _start_ray(args) -> None:
    """Connect to (or start) Ray, and refuse requests no node of it could ever grant: Ray would
    otherwise wait for ever, warning once a minute."""
    import ray

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    problem = unschedulable([n["Resources"] for n in ray.nodes() if n.get("Alive")],
                            args.cpus_per_trial, args.gpus_per_trial)
    if problem:
        ray.shutdown()
        raise SpecError(problem)


def unschedulable(nodes: list[dict[str, float]], cpus: float, gpus: float) -> str | None:
    """Why no node (Ray resource dicts) could run a trial asking for ``cpus`` and ``gpus``; None if one can."""
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return None
    have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "no live node"
    return (f"--cpus-per-trial {cpus:g} --gpus-per-trial {gpus:g}: no node of the Ray cluster has that much "
            f"(nodes: {have}), so no trial could ever start")


def _stop_ray() -> None:
    import ray

    ray.shutdown()


def _run_ray(spec: Spec, jobs: list[dict[str, Any]], results_dir: Path, args) -> tuple[list[str], bool]:
    """Run the jobs; returns (the failed trials' errors, whether Ctrl-C stopped the sweep)."""
    from ray import tune
    from ray.tune import Callback, FailureConfig, RunConfig, Stopper, TuneConfig, Tuner

    from harness.trial import tune_trainable

    class Progress(Callback):
        """One line per finished trial: long sweeps show where they are."""

        def __init__(self):
            self.done, self.t0 = 0, time.time()

        def _line(self, trial, status: str, result: dict | None = None) -> None:
            self.done += 1
            r = result or trial.last_result or {}
            parts = [f"{k} {r[k]:.2f}" for k in ("top1", "params_M", "GFLOPs", "latency_ms") if k in r]
            print(f"[{self.done}/{len(jobs)}] {status} {trial.config['job']['label']}: {', '.join(parts)} "
                  f"({time.time() - self.t0:.0f} s)", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, "stopped" if on_interrupt.requested else "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "FAILED")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result:
                print(f"    {trial.config['job']['label']}: epoch {result['epoch']} "
                      f"loss {result.get('train_loss', float('nan')):.3f} top1 {result.get('top1', float('nan')):.2f}",
                      flush=True)

    # Ctrl-C: Ray Tune's own handler ends the run as if it had completed, so the sweep takes the
    # signal itself and asks Tune to stop every trial; a second Ctrl-C stops at once.
    class OnInterrupt(Stopper):
        requested = False  # a plain attribute: Tune pickles its stopper

        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return self.requested

    on_interrupt = OnInterrupt()

    def on_sigint(signum, frame):
        on_interrupt.requested = True
        print("\ninterrupt: stopping the trials (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    tuner = Tuner(
        tune.with_resources(tune_trainable, resources),
        param_space={"job": tune.grid_search(jobs)},
        tune_config=TuneConfig(reuse_actors=True),
        run_config=RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(results_dir / "ray"),
            failure_config=FailureConfig(max_failures=0),
            stop=on_interrupt,
            verbose=0,
            callbacks=[Progress()],
        ),
    )
    previous = signal.signal(signal.SIGINT, on_sigint)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        grid = tuner.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
    errors = []
    for result in grid:
        if result.error:
            label = result.config["job"]["label"] if result.config else "?"
            errors.append(f"{label}: {_first_line(result.error)}")
    return errors, on_interrupt.requested


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # Ray wraps the trial's exception; its last line names the original error.
    lines = [line for line in text if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
