"""Run a sweep spec: one Ray Tune trial per grid point, MLflow runs, the rendered table.

    python -m harness.sweep SPEC.yaml [--profile NAME] [--measure-only] [--results-dir DIR]
        [--address ADDR] [--cpus-per-trial N] [--gpus-per-trial G] [--fresh]

Exit status: 0 success, 2 bad spec or command line, 1 when trials failed (listed).
Finished trials (same config hash, FINISHED in MLflow) are not run again; an interrupted
training trial resumes from its last epoch checkpoint.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from harness.spec import Spec, SpecError, load_spec


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
    args = p.parse_args(argv)
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        p.error("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    return args


def _pick_runs(finished: dict[str, list[Any]], h: str, measure_only: bool):
    """The newest finished run of a trial that answers the request (a trained run also has sizes)."""
    for run in finished.get(h, []):
        if measure_only or run.data.tags.get("measure_only") == "False":
            return run
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec(args.spec, args.profile)
    except SpecError as e:
        print(f"harness.sweep: error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")

    from harness import tracking
    from reports.report import report_sweep, runs_view_url, ui_base, write_index

    results_dir = Path(args.results_dir).resolve()
    uri = tracking.tracking_uri(results_dir)
    client = tracking.init_store(uri)
    commit = tracking.git_commit()
    finished = {} if args.fresh else tracking.finished_trials(client, spec.name)

    todo = []
    for trial in spec.trials:
        if _pick_runs(finished, trial.hash, args.measure_only) is None:
            todo.append(trial)
        if args.fresh:
            shutil.rmtree(results_dir / spec.name / "checkpoints" / trial.hash, ignore_errors=True)
    mode = "measure-only" if args.measure_only else "train + measure"
    print(f"{spec.name} [profile {spec.profile or '-'}, {mode}]: {len(spec.trials)} trials, "
          f"{len(spec.trials) - len(todo)} already finished, {len(todo)} to run", flush=True)

    errors: list[str] = []
    parent = None
    if todo:
        parent = tracking.start_parent(client, spec.name, {"profile": spec.profile, "git_commit": commit,
                                                           "spec_path": str(spec.path), "mode": mode},
                                       tracking.local_artifact_location(uri, results_dir, spec.name))
        jobs = [_job(spec, t, uri, parent, results_dir, args, commit) | {"sweep_trials": len(todo)} for t in todo]
        try:
            errors = _run_ray(spec, jobs, results_dir, args)
        finally:
            client.set_terminated(parent, "FAILED" if errors else "FINISHED")
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
    if errors:
        print(f"\n{len(errors)} trial(s) failed:", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    return 0


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


def _run_ray(spec: Spec, jobs: list[dict[str, Any]], results_dir: Path, args) -> list[str]:
    import ray
    from ray import tune
    from ray.tune import Callback, FailureConfig, RunConfig, TuneConfig, Tuner

    from harness.trial import tune_trainable

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

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
            self._line(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "FAILED")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result:
                print(f"    {trial.config['job']['label']}: epoch {result['epoch']} "
                      f"loss {result.get('train_loss', float('nan')):.3f} top1 {result.get('top1', float('nan')):.2f}",
                      flush=True)

    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    tuner = Tuner(
        tune.with_resources(tune_trainable, resources),
        param_space={"job": tune.grid_search(jobs)},
        tune_config=TuneConfig(reuse_actors=True),
        run_config=RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(results_dir / "ray"),
            failure_config=FailureConfig(max_failures=0),
            verbose=0,
            callbacks=[Progress()],
        ),
    )
    try:
        grid = tuner.fit()
        errors = []
        for result in grid:
            if result.error:
                label = result.config["job"]["label"] if result.config else "?"
                errors.append(f"{label}: {_first_line(result.error)}")
        return errors
    finally:
        ray.shutdown()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # Ray wraps the trial's exception; its last line names the original error.
    lines = [line for line in text if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
