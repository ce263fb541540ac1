"""Run a sweep spec: one Ray Tune trial per grid point, MLflow runs, the rendered table.

    python -m harness.sweep SPEC.yaml [--profile NAME] [--measure-only] [--results-dir DIR]
        [--address ADDR] [--storage PATH|s3://...] [--cpus-per-trial N] [--gpus-per-trial auto|G]
        [--workers-per-trial N] [--device auto|cpu|cuda] [--max-failures N] [--progress-every S]
        [--fresh] [--dry-run] [--max-trials N]

Exit status: 0 success, 2 bad spec, data or command line (one line), 1 when trials failed
(listed, with those whose results did not reach the driver's MLflow store), 130 when
interrupted (Ctrl-C: what finished, what did not, how to resume).
Finished trials (same config hash, FINISHED in MLflow) are not run again; an interrupted or
retried training trial resumes from its last epoch checkpoint (Ray Tune's, in ``--storage``) on
any node, and continues its MLflow run. One driver at a time per results dir and spec: a second
one exits 2 naming the first. Relative paths in the spec and in MLFLOW_TRACKING_URI are taken
from the directory the command runs in.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import preflight, raytrials
from harness.resources import gpus_arg
from harness.spec import Spec, SpecError
from harness.store_check import check_store

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
# Trials a spec may expand to unless --max-trials says more: expanding (validating every grid
# point) takes ~1 ms per point, and a grid past this is more likely a typo than a plan.
MAX_TRIALS = 10_000


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, no usage dump
        print(f"harness.sweep: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m harness.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="sweep spec YAML (ablations/*.yaml); its name: (default: the file's name, made a "
                   "folder name when it has spaces or non-ASCII letters, and said so) names its results folder")
    p.add_argument("--profile", help="profile of the spec to apply (default: smoke when defined)")
    p.add_argument("--measure-only", action="store_true", help="params, FLOPs and latency only; no training")
    p.add_argument("--results-dir", default="results", help="where tables, checkpoints, Ray and MLflow data go")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray); "
                   "a cluster needs MLFLOW_TRACKING_URI=http://HEAD:PORT (make mlflow-server)")
    p.add_argument("--storage", default=None, help="where Ray Tune keeps checkpoints: a folder every node sees "
                   "(NFS) or s3://...; default RESULTS_DIR/ray")
    p.add_argument("--cpus-per-trial", type=float, default=None,
                   help="CPUs Ray gives each trial; default: a GPU node's CPUs per GPU with GPUs, else 1 (per "
                   "data-parallel worker); data.workers defaults to one fewer per worker (DataLoader processes)")
    p.add_argument("--gpus-per-trial", type=gpus_arg, default="auto", metavar="auto|G",
                   help="GPUs Ray gives each trial; auto (default): 1 per worker when the cluster has GPUs, else 0")
    p.add_argument("--workers-per-trial", type=int, default=None, metavar="N",
                   help="PyTorch DDP workers per training trial, through Ray Train (1 GPU each, or gloo on CPU); "
                   "default: the trial's GPUs when more than 1, else 1. train.batch_size stays the global batch")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="override every trial's train.device (--device cpu runs a paper profile on CPU)")
    p.add_argument("--max-failures", type=int, default=None, help="times Ray retries a failed trial (a lost node) "
                   "from its last checkpoint; default 1 on a cluster (--address), 0 on a local Ray")
    p.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between progress lines within an epoch (clips/s, loss, ETA); default 30")
    p.add_argument("--fresh", action="store_true",
                   help="re-run every trial, ignoring finished runs and deleting its checkpoints in --storage")
    p.add_argument("--dry-run", action="store_true",
                   help="check the spec, the data, the results dir and the store, list the trials, run nothing")
    p.add_argument("--max-trials", type=int, default=MAX_TRIALS, metavar="N",
                   help=f"refuse a spec whose grid (variants x axis values x seeds) has more than N trials, at once "
                   f"and before expanding it (exit 2); default {MAX_TRIALS:,}")
    args = p.parse_args(argv)
    if args.cpus_per_trial is not None and not (math.isfinite(args.cpus_per_trial) and args.cpus_per_trial > 0):
        p.error(f"--cpus-per-trial must be a number > 0, got {args.cpus_per_trial}")
    if args.workers_per_trial is not None and not 1 <= args.workers_per_trial <= 1024:
        p.error(f"--workers-per-trial must be 1 to 1024, got {args.workers_per_trial}")
    if args.max_failures is not None and not 0 <= args.max_failures <= 100:
        p.error(f"--max-failures must be 0 to 100, got {args.max_failures}")
    if args.max_trials < 1:
        p.error(f"--max-trials must be at least 1, got {args.max_trials}")
    if not (math.isfinite(args.progress_every) and 0 < args.progress_every <= 86400):
        p.error(f"--progress-every must be seconds in (0, 86400], got {args.progress_every}")
    args.cluster = args.address or (os.environ.get("RAY_ADDRESS") if os.environ.get("RAY_ADDRESS") != "local" else None)
    if args.max_failures is None:
        args.max_failures = 1 if args.cluster else 0
    return args


@dataclass
class Plan:
    """What the checks before any trial found: the trials still to run and where things go."""

    spec: Spec
    results_dir: Path
    lock: Any  # the open lock file: held until the sweep ends
    uri: str
    store: str
    client: Any
    stale: int
    finished: dict[str, list[Any]]
    todo: list
    rerun: str  # why trials with finished runs of the same config re-run (code changed, defaults filled in)


@dataclass
class Outcome:
    """What running the trials left: the failed ones, whether Ctrl-C stopped them, the parent run,
    the finished runs in the store; ``exit`` set when the sweep must stop at once with it."""

    finished: dict[str, list[Any]]
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    parent: str | None = None
    exit: int | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _ray_settings()
    try:
        plan = _before_trials(args)
    except SpecError as e:
        for line in str(e).splitlines():
            print(f"harness.sweep: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness.sweep: interrupted before any trial started; nothing ran", file=sys.stderr)
        return INTERRUPTED

    mode, resume = _announce(plan, args)
    if args.dry_run:
        _list_trials(plan, args)
        return 0
    if args.fresh and not args.measure_only:
        _forget_checkpoints(plan)
    outcome = _run_trials(plan, args, mode, resume)
    if outcome.exit is not None:
        return outcome.exit
    runs = _report(plan, args, outcome, mode)
    return _exit_status(plan, outcome, runs, argv)


def _ray_settings() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # data-parallel trials use Ray Train's V2 API
    # Tune's newer console output prints its configuration box and a TensorBoard hint whatever
    # RunConfig(verbose) says (ray/tune/tune.py calls experiment_started unconditionally); the
    # older one at verbose=0 prints nothing. The sweep prints its own line per trial event.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Every epoch checkpoints (CheckpointConfig(num_to_keep=1)): Tune then warns on each short epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _before_trials(args) -> Plan:
    """Every check that needs no Ray, in order; a ``SpecError`` (one line per problem) at the first
    that fails."""
    spec = preflight.load(args)
    if args.device:
        for t in spec.trials:  # where a trial runs is not part of its identity (its hash)
            t.config["train"]["device"] = args.device
    workers = args.workers_per_trial or (int(args.gpus_per_trial) if args.gpus_per_trial != "auto" else 1)
    if not args.measure_only:
        preflight.check_batches(spec, spec.trials, max(1, workers))
    results_dir = preflight.check_results_dir(args.results_dir)
    lock = preflight.take_lock(results_dir / spec.name / "sweep.lock")  # held until exit (Plan.lock)

    from harness import storage, tracking

    uri = tracking.tracking_uri(results_dir)
    if args.cluster and tracking.is_local_store(uri):
        raise SpecError(f"MLflow store {uri}: a file on this machine, which the other nodes of the Ray cluster "
                        f"({args.cluster}) cannot reach; a cluster needs a tracking server: start one on the head "
                        "(make mlflow-server) and set MLFLOW_TRACKING_URI=http://HEAD:PORT")
    store = storage.resolve(args.storage, results_dir)
    client = tracking.open_store(uri)
    stale = tracking.close_stale_runs(client, spec.name, str(results_dir))
    finished = {} if args.fresh else tracking.finished_trials(client, spec.name)
    todo = [t for t in spec.trials if preflight.pick_runs(finished, t.hash, args.measure_only) is None]
    preflight.check_release_checkpoints(spec, todo)
    by_config = {} if args.fresh else tracking.finished_trials(client, spec.name, "config_key")
    rerun = "\n".join(filter(None, [preflight.code_changed(spec, todo, by_config, args.measure_only),
                                     preflight.defaults_filled(todo, by_config, args.measure_only)]))
    problems = [] if args.measure_only else preflight.check_weights(spec, todo)  # measuring needs no weights
    if not args.measure_only and not args.cluster:
        problems += preflight.check_data(spec, todo)  # on a cluster, on every node once Ray is up (check_nodes)
    if problems:
        raise SpecError("\n".join(problems))
    return Plan(spec, results_dir, lock, uri, store, client, stale, finished, todo, rerun)


def _announce(plan: Plan, args) -> tuple[str, dict]:
    """Print what the checks found and the sweep's line (its mode, trials to run and resumed);
    returns the mode and the checkpoints the trials resume from."""
    from harness import storage

    spec, todo = plan.spec, plan.todo
    if plan.rerun:
        print(plan.rerun, flush=True)
    if plan.stale:
        print(f"closed {plan.stale} run(s) left RUNNING by an earlier driver of this results dir as KILLED", flush=True)
    evaluate_only = all(t.config["train"]["epochs"] == 0 for t in spec.trials)  # train.epochs: 0
    mode = "measure-only" if args.measure_only else "evaluate + measure" if evaluate_only else "train + measure"
    resume = {} if args.fresh or args.measure_only else storage.latest(plan.store, spec.name, {t.hash for t in todo})
    print(f"{spec.name} [profile {spec.profile or '-'}, {mode}]: {len(spec.trials)} trials, "
          f"{len(spec.trials) - len(todo)} already finished, {len(todo)} to run"
          + (f" ({len(resume)} from an earlier checkpoint)" if resume else ""), flush=True)
    return mode, resume


def _list_trials(plan: Plan, args) -> None:
    """--dry-run: the trials that would run."""
    for t in plan.todo:
        print(f"  to run: {t.label} ({t.hash})")
    if args.cluster and not args.measure_only:
        print("  (on a cluster the data is checked on every node when the sweep starts)")


def _forget_checkpoints(plan: Plan) -> None:
    """--fresh: delete every trial's checkpoints in the storage."""
    from harness import storage

    gone = storage.forget(plan.store, plan.spec.name, {t.hash for t in plan.spec.trials})
    if gone:
        print(f"--fresh: deleted the checkpoints of {gone} trial folder(s) in {plan.store}/{plan.spec.name}", flush=True)


def _run_trials(plan: Plan, args, mode: str, resume: dict) -> Outcome:
    """The trials to run, on Ray, under a parent MLflow run; then the store check. Ray is stopped
    and the runs its trials could not close are closed, whatever happens."""
    from harness import storage, tracking

    spec, client, store = plan.spec, plan.client, plan.store
    commit = tracking.git_commit()
    outcome = Outcome(finished=plan.finished)
    if not plan.todo:
        return outcome
    status = "FAILED"
    sweep_name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    marker = storage.join(store, spec.name, sweep_name, storage.MARKER)
    try:
        try:
            storage.write_text(marker, json.dumps({"driver": f"pid {os.getpid()} on {socket.gethostname()}"}))
        except OSError as e:
            raise SpecError(f"--storage {store}: cannot write {marker} there: {e}") from None
        raytrials.start_ray(args, spec, plan.todo)
        if args.cluster:
            preflight.check_nodes(spec, plan.todo, plan.uri, marker, args)
        outcome.parent = _start_parent(plan, mode, commit)
        jobs = _jobs(plan, args, outcome.parent, commit, sweep_name, marker, resume)
        outcome.errors, outcome.interrupted, results = raytrials.run_trials(spec, jobs, store, sweep_name, args,
                                                                            client, plan.uri)
        if not outcome.interrupted:
            outcome.errors += check_store(client, plan.uri, results, spec.name, outcome.parent, args.measure_only)
        status = "KILLED" if outcome.interrupted else "FAILED" if outcome.errors else "FINISHED"
    except SpecError as e:
        print(f"harness.sweep: error: {e}", file=sys.stderr)
        outcome.exit = 2
        return outcome
    except KeyboardInterrupt:  # before the trials started, or a second Ctrl-C
        outcome.interrupted, status = True, "KILLED"
    finally:
        raytrials.stop_ray()
        if outcome.parent is not None:
            # A trial whose process was stopped or lost cannot close its own run.
            tracking.close_children(client, outcome.parent, "KILLED")
            client.set_terminated(outcome.parent, status)
    outcome.finished = tracking.finished_trials(client, spec.name)
    return outcome


def _start_parent(plan: Plan, mode: str, commit: str) -> str:
    """The sweep's parent MLflow run, which every trial's run is a child of."""
    from harness import run_info, tracking

    return tracking.start_parent(plan.client, plan.spec.name, {
        "profile": plan.spec.profile, "git_commit": commit, "spec_path": str(plan.spec.path), "mode": mode,
        "results_dir": str(plan.results_dir), "driver": f"pid {os.getpid()} on {socket.gethostname()}",
        "storage": plan.store, "code_digest": run_info.code_digest()},
        tracking.local_artifact_location(plan.uri, plan.results_dir, plan.spec.name))


def _jobs(plan: Plan, args, parent: str, commit: str, sweep_name: str, marker: str, resume: dict) -> list[dict]:
    """One job per trial to run: what its Ray Tune trial is given."""
    spec, store = plan.spec, plan.store
    return [raytrials.job(spec, t, plan.uri, parent, plan.results_dir, args, commit)
            | {"sweep_trials": len(plan.todo), "storage": store, "storage_marker": marker,
               "sweep_storage": f"{raytrials.storage_path(store, spec.name)}/{sweep_name}",
               "resume_from": resume.get(t.hash)} for t in plan.todo]


def _report(plan: Plan, args, outcome: Outcome, mode: str) -> dict[str, Any]:
    """The sweep's report from the finished runs, and where it went; returns the runs it used."""
    from reports.report import report_sweep, write_index
    from reports.runs import runs_view_url, ui_base

    spec, results_dir, uri = plan.spec, plan.results_dir, plan.uri
    runs = {t.hash: r for t in spec.trials
            if (r := preflight.pick_runs(outcome.finished, t.hash, args.measure_only)) is not None}
    out_dir = results_dir / spec.name
    report = report_sweep(spec, plan.client, runs, out_dir, uri, outcome.parent, mode)
    print("\n" + (out_dir / "table.md").read_text().split("\n\n")[0])
    print("\n" + "\n".join(report["lines"]) if report["lines"] else "")
    index = write_index(results_dir)
    view = runs_view_url(ui_base(uri), report["experiment_id"], report.get("runs_view"))
    print(f"\nwrote {out_dir}/table.{{csv,md,html,tex,png}}, verdicts.csv, figures {', '.join(report['figures'].values())}"
          f"\nreport: {index}\nMLflow store: {uri}; runs with the key columns (after `make mlflow-ui`): {view}")
    return runs


def _exit_status(plan: Plan, outcome: Outcome, runs: dict[str, Any], argv: list[str] | None) -> int:
    """What did not finish and how to resume after Ctrl-C (130), the failed trials (1), else 0."""
    todo = plan.todo
    if outcome.interrupted:
        done = [t for t in todo if t.hash in runs]
        left = [t for t in todo if t.hash not in runs]
        print(f"\ninterrupted: {len(done)} of the {len(todo)} trial(s) to run finished, {len(left)} did not:",
              file=sys.stderr)
        for t in left:
            print(f"  - {t.label}", file=sys.stderr)
        print(f"resume with the same command ({shlex.join(_command(argv))}): finished trials are kept, "
              "interrupted ones continue from their last epoch checkpoint", file=sys.stderr)
        return INTERRUPTED
    if outcome.errors:
        print(f"\n{len(outcome.errors)} trial(s) failed:", file=sys.stderr)
        for e in outcome.errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    return 0


def _command(argv: list[str] | None) -> list[str]:
    """This command line, minus --fresh (resuming must not start over)."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--fresh"]
    return ["python", "-m", "harness.sweep", *words]


if __name__ == "__main__":
    sys.exit(main())
