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
import urllib.parse
from pathlib import Path
from typing import Any

from harness.resources import gpus_arg
from gsf.model import NO_WEIGHTS
from harness.spec import Spec, SpecError, load_spec

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


def load(args) -> Spec:
    """The spec of the command line. A grid of more than ``--max-trials`` trials is refused before
    it is expanded (one line with the count). A spec with no ``name:`` whose file name cannot name
    a folder (spaces, non-ASCII letters) is loaded under a name derived from it, said once here."""
    from harness.spec import NAME, read_yaml

    path = Path(args.spec)
    raw = read_yaml(path) if path.is_file() else None
    count = grid_size(raw)
    if count is not None and count > args.max_trials:
        raise SpecError(f"{path}: the grid expands to {count:,} trials ({grid_factors(raw)}), more than the "
                        f"limit of {args.max_trials:,}; to run them all, add --max-trials {count}")
    if not isinstance(raw, dict) or raw.get("name") is not None or NAME.fullmatch(path.stem):
        return load_spec(path, args.profile)
    name = safe_name(path.stem)
    # load_spec names a spec after its file: it reads this one through a link of the derived name
    # (its folder, where the spec's imports are found, is still the real file's).
    with tempfile.TemporaryDirectory(prefix="gsf-spec-") as tmp:
        link = Path(tmp) / f"{name}.yaml"
        link.symlink_to(path.resolve())
        try:
            spec = load_spec(link, args.profile)
        except SpecError as e:
            raise SpecError(str(e).replace(str(link), str(path))) from None
    spec.path = path
    print(f"{path}: the file name {path.stem!r} cannot name a results folder; this sweep is named {name!r} "
          f"(set name: in the spec to choose another)", flush=True)
    return spec


def grid_size(raw: Any) -> int | None:
    """Trials a spec's grid expands to (variants x axis values x seeds), counted from its YAML
    without expanding it; None when the grid is malformed (``load_spec`` says how)."""
    shape = _grid_shape(raw)
    return None if shape is None else shape[0] * math.prod(shape[1].values()) * shape[2]


def grid_factors(raw: Any) -> str:
    variants, axes, seeds = _grid_shape(raw)
    return " x ".join([f"{variants} variants", *(f"{n} {key}" for key, n in axes.items()), f"{seeds} seeds"])


def _grid_shape(raw: Any) -> tuple[int, dict[str, int], int] | None:
    if not isinstance(raw, dict):
        return None
    grid, seeds = raw.get("grid") or {}, raw.get("seeds", [0])
    if not isinstance(grid, dict) or not isinstance(seeds, list):
        return None
    variants, axes = grid.get("variants") or [None], grid.get("axes") or {}
    if not isinstance(variants, list) or not isinstance(axes, dict):
        return None
    if not all(isinstance(values, list) for values in axes.values()):
        return None
    return len(variants), {str(k): len(v) for k, v in axes.items()}, len(seeds)


def safe_name(stem: str) -> str:
    """A folder name (``harness.spec.NAME``) for a spec file named ``stem``: accents dropped, each
    run of other characters one '_'; a name with nothing left is named by a digest."""
    import hashlib
    import re
    import unicodedata

    from harness.spec import NAME

    bare = "".join(c for c in unicodedata.normalize("NFKD", stem) if not unicodedata.combining(c))
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", bare).strip("._-")[:100].rstrip("._-")
    return name if NAME.fullmatch(name) else f"spec-{hashlib.sha256(stem.encode()).hexdigest()[:8]}"


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


def check_data(spec: Spec, trials) -> list[str]:
    """The data of every distinct (data section, num_classes) among ``trials``, once, here in the
    driver: a bad list or folder is one line before anything starts, not one failure per trial.
    Returns the problems, one line each (a file not prepared yet names the command that makes it)."""
    problems = []
    for label, section, num_classes in _distinct_data(trials):
        problem = data_problem(section, num_classes)
        if problem:
            problems.append(f"{spec.path}: data of {label!r}: {problem}")
    return problems


def _distinct_data(trials) -> list[tuple[str, dict, int]]:
    seen, out = set(), []
    for trial in trials:
        data, num_classes = trial.config["data"], trial.config["model"]["num_classes"]
        key = json.dumps([data, num_classes], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((trial.label, data, num_classes))
    return out


def data_problem(section: dict, num_classes: int) -> str | None:
    """What is wrong with a trial's data, in one line, or None."""
    from harness.data import DataConfig, DataError, check_data as check
    from harness.prepare import data_command

    cfg = DataConfig.model_validate(section)
    if not cfg.synthetic:
        for name in (cfg.categories, cfg.train_list, cfg.val_list):
            if not cfg.resolve(name).is_file():
                return (f"{cfg.resolve(name)}: not found; prepare it from the official download with: "
                        f"{data_command(cfg.dataset, Path(cfg.root), 'frames' if cfg.frames else 'videos')}")
    try:
        check(cfg, num_classes)
    except DataError as e:
        return str(e)
    return None


def check_weights(spec: Spec, trials) -> list[str]:
    """Each ``model.pretrained`` file once per backbone setting, here in the driver: present (else
    the command that prepares it), loadable into the trial's backbone with every key matched, and
    fed the input normalisation its preparation recorded. One line per problem."""
    problems, seen = [], {}
    for trial in trials:
        model, data = trial.config["model"], trial.config["data"]
        path = model.get("pretrained")
        if path in (None, NO_WEIGHTS):
            continue
        key = json.dumps({k: model.get(k) for k in ("pretrained", "backbone", "layout", "width_mult")}, sort_keys=True)
        if key not in seen:
            seen[key] = weights_problem(model)
        problem = seen[key] or _normalisation_problem(path, data.get("normalize", "imagenet"))
        if problem:
            problems.append(f"{spec.path}: model.pretrained of {trial.label!r}: {problem}")
    return list(dict.fromkeys(problems))


def weights_problem(model: dict) -> str | None:
    """What is wrong with a trial's ``model.pretrained`` file, or None: the plain backbone is built
    with it as the trial builds it (the loader matches every key or says which do not)."""
    from gsf.model import ModelConfig
    from gsf.registry import get_backbone
    from harness.prepare import weights_command

    path = model["pretrained"]
    if not os.path.isfile(path):
        command = weights_command(Path(path))
        return (f"{path}: not found; " + (f"make it with: {command}" if command else "give a local ImageNet weights "
                "file") + " (or model.pretrained: none to train from random weights, on purpose)")
    cfg = ModelConfig.model_validate(model)
    try:
        get_backbone(cfg.backbone).build(None, **cfg.backbone_kwargs())
    except (OSError, ValueError, RuntimeError) as e:
        message = str(e).strip().splitlines()[0]
        return message if path in message else f"{path}: {message}"
    return None


def _normalisation_problem(path: str, normalize: str) -> str | None:
    from harness.prepare.weights import read_sidecar

    expected = (read_sidecar(path) or {}).get("normalize")
    if expected and expected != normalize:
        return (f"{path} expects data.normalize: {expected} (its preparation says so, {Path(path).with_suffix('.json')}), "
                f"but the trial sets {normalize}")
    return None


def check_batches(spec: Spec, trials, workers: int) -> None:
    """Each trial's ``train.batch_size`` (the global batch) must divide among its workers."""
    bad = sorted({t.config["train"]["batch_size"] for t in trials if t.config["train"]["batch_size"] % workers})
    if bad:
        raise SpecError(f"{spec.path}: train.batch_size {', '.join(map(str, bad))} does not divide among {workers} "
                        "data-parallel workers (--workers-per-trial, by default the trial's GPUs): the spec's batch is "
                        "the global one, each worker takes an equal share")


def check_release_checkpoints(spec: Spec, trials) -> None:
    """Each ``model.release_checkpoint`` read once, here in the driver, and held against every
    trial's model section: a missing, unreadable or mismatched file is one line before anything starts."""
    from gsf.release import check_request, load_release_checkpoint

    found = {}
    for trial in trials:
        model = trial.config["model"]
        path = model.get("release_checkpoint")
        if path is None:
            continue
        try:
            if path not in found:
                found[path] = load_release_checkpoint(path)[0]
            check_request(found[path], path, **model)
        except (OSError, ValueError) as e:
            raise SpecError(f"{spec.path}: model.release_checkpoint of {trial.label!r}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # data-parallel trials use Ray Train's V2 API
    # Tune's newer console output prints its configuration box and a TensorBoard hint whatever
    # RunConfig(verbose) says (ray/tune/tune.py calls experiment_started unconditionally); the
    # older one at verbose=0 prints nothing. The sweep prints its own line per trial event.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Every epoch checkpoints (CheckpointConfig(num_to_keep=1)): Tune then warns on each short epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        spec = load(args)
        if args.device:
            for t in spec.trials:  # where a trial runs is not part of its identity (its hash)
                t.config["train"]["device"] = args.device
        workers = args.workers_per_trial or (int(args.gpus_per_trial) if args.gpus_per_trial != "auto" else 1)
        if not args.measure_only:
            check_batches(spec, spec.trials, max(1, workers))
        results_dir = check_results_dir(args.results_dir)
        lock = take_lock(results_dir / spec.name / "sweep.lock")  # noqa: F841 (held until exit)

        from harness import run_info, storage, tracking

        uri = tracking.tracking_uri(results_dir)
        if args.cluster and tracking.is_local_store(uri):
            raise SpecError(f"MLflow store {uri}: a file on this machine, which the other nodes of the Ray cluster "
                            f"({args.cluster}) cannot reach; a cluster needs a tracking server: start one on the head "
                            "(make mlflow-server) and set MLFLOW_TRACKING_URI=http://HEAD:PORT")
        store = storage.resolve(args.storage, results_dir)
        client = tracking.open_store(uri)
        stale = tracking.close_stale_runs(client, spec.name, str(results_dir))
        finished = {} if args.fresh else tracking.finished_trials(client, spec.name)
        todo = [t for t in spec.trials if _pick_runs(finished, t.hash, args.measure_only) is None]
        check_release_checkpoints(spec, todo)
        by_config = {} if args.fresh else tracking.finished_trials(client, spec.name, "config_key")
        code_changed = _code_changed(spec, todo, by_config, args.measure_only)
        problems = [] if args.measure_only else check_weights(spec, todo)  # measuring needs no weights
        if not args.measure_only and not args.cluster:
            problems += check_data(spec, todo)  # on a cluster, on every node once Ray is up (check_nodes)
        if problems:
            raise SpecError("\n".join(problems))
    except SpecError as e:
        for line in str(e).splitlines():
            print(f"harness.sweep: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness.sweep: interrupted before any trial started; nothing ran", file=sys.stderr)
        return INTERRUPTED

    if code_changed:
        print(code_changed, flush=True)
    if stale:
        print(f"closed {stale} run(s) left RUNNING by an earlier driver of this results dir as KILLED", flush=True)
    evaluate_only = all(t.config["train"]["epochs"] == 0 for t in spec.trials)  # train.epochs: 0
    mode = "measure-only" if args.measure_only else "evaluate + measure" if evaluate_only else "train + measure"
    resume = {} if args.fresh or args.measure_only else storage.latest(store, spec.name, {t.hash for t in todo})
    print(f"{spec.name} [profile {spec.profile or '-'}, {mode}]: {len(spec.trials)} trials, "
          f"{len(spec.trials) - len(todo)} already finished, {len(todo)} to run"
          + (f" ({len(resume)} from an earlier checkpoint)" if resume else ""), flush=True)
    if args.dry_run:
        for t in todo:
            print(f"  to run: {t.label} ({t.hash})")
        if args.cluster and not args.measure_only:
            print("  (on a cluster the data is checked on every node when the sweep starts)")
        return 0
    if args.fresh and not args.measure_only:
        gone = storage.forget(store, spec.name, {t.hash for t in spec.trials})
        if gone:
            print(f"--fresh: deleted the checkpoints of {gone} trial folder(s) in {store}/{spec.name}", flush=True)

    from reports.report import report_sweep, write_index
    from reports.runs import runs_view_url, ui_base

    commit = tracking.git_commit()
    errors: list[str] = []
    interrupted = False
    parent = None
    if todo:
        status = "FAILED"
        sweep_name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        marker = storage.join(store, spec.name, sweep_name, storage.MARKER)
        try:
            try:
                storage.write_text(marker, json.dumps({"driver": f"pid {os.getpid()} on {socket.gethostname()}"}))
            except OSError as e:
                raise SpecError(f"--storage {store}: cannot write {marker} there: {e}") from None
            _start_ray(args, spec, todo)
            if args.cluster:
                check_nodes(spec, todo, uri, marker, args)
            parent = tracking.start_parent(client, spec.name, {
                "profile": spec.profile, "git_commit": commit, "spec_path": str(spec.path), "mode": mode,
                "results_dir": str(results_dir), "driver": f"pid {os.getpid()} on {socket.gethostname()}",
                "storage": store, "code_digest": run_info.code_digest()},
                tracking.local_artifact_location(uri, results_dir, spec.name))
            jobs = [_job(spec, t, uri, parent, results_dir, args, commit)
                    | {"sweep_trials": len(todo), "storage": store, "storage_marker": marker,
                       "sweep_storage": f"{storage_path(store, spec.name)}/{sweep_name}",
                       "resume_from": resume.get(t.hash)} for t in todo]
            errors, interrupted, results = _run_ray(spec, jobs, store, sweep_name, args, client, uri)
            if not interrupted:
                errors += check_store(client, uri, results, spec.name, parent, args.measure_only)
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
    print("\n" + (out_dir / "table.md").read_text().split("\n\n")[0])
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


def _code_changed(spec: Spec, todo, by_config: dict[str, list[Any]], measure_only: bool) -> str:
    """The line saying which trials re-run because the model's code changed since their finished
    runs (same config, another code digest), and which files changed; "" when none."""
    from harness.usercode import changed_files, listing

    again = [(t, run) for t in todo if (run := _pick_runs(by_config, t.config_key, measure_only)) is not None]
    if not again:
        return ""
    files = set()
    for t, run in again:
        try:
            listed = json.loads(run.data.tags.get("model_code_sources", "{}"))
        except json.JSONDecodeError:
            listed = {}
        if listed:  # {}: too many files for the tag (or no tag); the digest alone said "changed"
            files.update(changed_files(listed, listing(spec.trial_sources(t))))
    shown = sorted(files)[:6] + (["..."] if len(files) > 6 else [])
    return (f"{len(again)} trial{'s' if len(again) != 1 else ''} re-run: model code changed since their runs"
            + (f" ({', '.join(shown)})" if shown else ""))


def _command(argv: list[str] | None) -> list[str]:
    """This command line, minus --fresh (resuming must not start over)."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--fresh"]
    return ["python", "-m", "harness.sweep", *words]


def _job(spec: Spec, trial, uri: str, parent: str, results_dir: Path, args, commit: str) -> dict[str, Any]:
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


def _start_ray(args, spec: Spec, todo) -> None:
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
    for handler in logging.getLogger("ray").handlers:
        handler.addFilter(OneLine())
    try:
        choose_resources(args, spec, todo, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    except SpecError:
        ray.shutdown()
        raise


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
            line = f"{line}: {_first_line(record.exc_info[1])}" if line else _first_line(record.exc_info[1])
        record.msg, record.args, record.exc_info, record.exc_text, record.stack_info = line, (), None, None, None
        return True


def choose_resources(args, spec: Spec, todo, nodes: list[dict[str, float]]) -> None:
    """Set ``args.cpus_per_trial``, ``gpus_per_trial`` and ``workers_per_trial`` for ``nodes``
    and print the banner; a ``SpecError`` when trials cannot run as asked."""
    from harness import resources

    training = not args.measure_only
    want_gpu = any(t.config["train"]["device"] != "cpu" for t in todo)
    chosen = resources.plan(nodes, args.cpus_per_trial, args.gpus_per_trial,
                            args.workers_per_trial if training else 1, want_gpu)
    cuda = resources.needs_cuda(todo)
    if cuda and not chosen.gpus:
        seconds, how = resources.cpu_estimate(cuda[0].config, args.measure_only)
        where = "the Ray cluster has no GPU" if not any(n.get("GPU", 0) for n in nodes) else "--gpus-per-trial 0"
        raise SpecError(f"{spec.path} [profile {spec.profile or '-'}]: its trials need a GPU (train.device: cuda) and "
                        f"{where}; on this CPU one trial would take {resources.hours(seconds)} ({how}), "
                        f"{len(todo)} trial(s) to run: use a GPU machine or cluster, or --device cpu to run on the CPU")
    if training:
        check_batches(spec, todo, chosen.workers)
    args.cpus_per_trial, args.gpus_per_trial, args.workers_per_trial = chosen.cpus, chosen.gpus, chosen.workers
    args.trials_at_once = chosen.at_once
    print(chosen.line, flush=True)


def check_nodes(spec: Spec, trials, uri: str, marker: str, args) -> None:
    """On a cluster, what every node that could run a trial must see, checked there by a small
    Ray task before any trial: the data (at the same absolute paths), the sweep's storage, and a
    tracking server that is not each node's own localhost. One ``SpecError`` naming the node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from harness.resources import worker_fits

    nodes = [n for n in ray.nodes() if n.get("Alive") and worker_fits(n["Resources"], args)]
    here = ray.util.get_node_ip_address()
    host = urllib.parse.urlparse(uri).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        others = sorted({n["NodeManagerAddress"] for n in nodes} - {here})
        if others:
            raise SpecError(f"MLFLOW_TRACKING_URI {uri} names each node's own machine, and nodes run at "
                            f"{', '.join(others)} besides this one ({here}): use an address they all reach, "
                            "http://HEAD_IP:PORT (make mlflow-server MLFLOW_HOST=0.0.0.0)")
    data = [] if args.measure_only else _distinct_data(trials)
    weights = [] if args.measure_only else sorted(
        {p for t in trials if (p := t.config["model"].get("pretrained")) not in (None, NO_WEIGHTS)})
    probe = ray.remote(num_cpus=0)(_node_problem)
    answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote(spec.name, data, weights, None if args.measure_only else marker) for n in nodes],
                      timeout=600)
    for node, problem in zip(nodes, answers):
        if problem:
            raise SpecError(f"node {node['NodeManagerAddress']} (Ray node {node['NodeID'][:12]}): {problem}")


def _node_problem(spec_name: str, data: list, weights: list[str], marker: str | None) -> str | None:
    """Run on one node by ``check_nodes``: what is wrong there, or None."""
    from harness import storage

    if marker and storage.read_text(marker) is None:
        return (f"does not see the sweep's storage ({marker} is missing there): --storage must be a folder every "
                "node mounts (NFS) or s3://...")
    for path in weights:
        if not os.path.isfile(path):
            return f"{spec_name}: model.pretrained {path}: not found on this node (every node needs the file at that path)"
    for label, section, num_classes in data:
        problem = data_problem(section, num_classes)
        if problem:
            return f"{spec_name}: data of {label!r}: {problem}"
    return None


def _stop_ray() -> None:
    import ray

    ray.shutdown()


def _run_ray(spec: Spec, jobs: list[dict[str, Any]], store: str, sweep_name: str, args, client, uri: str):
    """Run the jobs; returns (the failed trials' errors, whether Ctrl-C stopped the sweep, Ray's results)."""
    from ray import tune
    from ray.tune import Callback, CheckpointConfig, FailureConfig, RunConfig, Stopper, TuneConfig, Tuner

    from harness.trial import tune_trainable

    class Progress(Callback):
        """One line per finished trial, per epoch and every --progress-every seconds within an
        epoch; a warning as soon as a trial's run is not in the driver's store; retries."""

        def __init__(self):
            self.done, self.t0, self.checked = 0, time.time(), set()

        def _line(self, trial, status: str, result: dict | None = None, error: str = "") -> None:
            self.done += 1
            r = result or trial.last_result or {}
            parts = [f"{k} {r[k]:.2f}" for k in ("top1", "params_M", "GFLOPs", "latency_ms") if k in r]
            print(f"[{self.done}/{len(jobs)}] {status} {trial.config['job']['label']}: "
                  f"{'; '.join(filter(None, [', '.join(parts), error]))} ({time.time() - self.t0:.0f} s)", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, "stopped" if on_interrupt.requested else "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            # One line: the error's own (a DataError names the file). The traceback stays in the
            # trial's folder (error.txt) and in its MLflow run (traceback.txt, tag traceback).
            error = trial_error(trial)
            where = f"; traceback in {trial.path}/error.txt" if trial.path else ""
            self._line(trial, "FAILED", error=(_first_line(error) if error else "failed") + where)

        def on_trial_recover(self, iteration, trials, trial, **info):
            error = trial_error(trial)  # None: no error file yet, Ray's message is all there is
            why = "its node died or became unreachable" if error is None or lost_node(error) else _first_line(error)
            print(f"    {trial.config['job']['label']}: {why}{_on_node(trial.last_result or {})} (attempt "
                  f"{trial.num_failures} of {args.max_failures + 1}); Ray retries it from its last checkpoint",
                  flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            label = trial.config["job"]["label"]
            if result.get("run_id") and trial.trial_id not in self.checked:
                self.checked.add(trial.trial_id)
                if _run_status(client, result["run_id"]) is None:
                    print(f"warning: {label}{_on_node(result)} writes to a tracking store that is not the driver's "
                          f"(its run {result['run_id']} is not in {uri}); the sweep will fail it at the end",
                          file=sys.stderr, flush=True)
            if result.get("progress"):
                wait = result.get("data_wait_fraction")
                print(f"    {label}: epoch {result['epoch']} batch {result['batch']}/{result['batches']}, "
                      f"loss {result['loss']:.3f}, {result['clips_per_s']:.1f} clips/s"
                      + (f", waiting for data {100 * wait:.0f}% of the time" if wait is not None else "")
                      + f", ETA {_duration(result['eta_s'])}", flush=True)
            elif "epoch" in result and not result.get("final"):
                # top1 only after an epoch that was evaluated (train.eval_every)
                top1 = f" top1 {result['top1']:.2f}" if _number(result.get("top1")) else ""
                print(f"    {label}: epoch {result['epoch']} loss {result.get('train_loss', float('nan')):.3f}{top1}"
                      f"{_on_node(result) if args.cluster else ''}", flush=True)

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

    data_parallel = args.workers_per_trial > 1 and not args.measure_only
    # A data-parallel trial is a driver that starts its Ray Train workers, which ask for the
    # trial's CPUs and GPUs themselves; Tune then cannot count them, so it is told how many fit.
    # The driver takes no CPU (one byte of memory: Tune needs some request): were it to take a
    # CPU, a box whose every CPU goes to the workers could never place them beside it.
    resources = {"cpu": 0, "memory": 1} if data_parallel else {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    tuner = Tuner(
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
            callbacks=[Progress()],
        ),
    )
    previous = signal.signal(signal.SIGINT, on_sigint)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        grid = tuner.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
    errors, results = [], list(grid)
    for result in results:
        if result.error:
            label = result.config["job"]["label"] if result.config else "?"
            errors.append(f"{label}: {describe_failure(result.error, result.metrics or {}, args.max_failures)}")
    return errors, on_interrupt.requested, results


def trial_error(trial) -> BaseException | None:
    """The exception a trial failed with, or None. Ray writes it to the trial's folder on the
    driver first and copies it to the storage later: the first may be all there is yet."""
    import cloudpickle

    try:
        if trial.pickled_error_file and os.path.isfile(trial.pickled_error_file):
            with open(trial.pickled_error_file, "rb") as f:
                return cloudpickle.load(f)
        return trial.get_pickled_error()
    except Exception:  # noqa: BLE001 (an error that does not unpickle here)
        return None


def storage_path(store: str, spec_name: str) -> str:
    return f"{store.rstrip('/')}/{spec_name}"


def _trial_folder(trial) -> str:
    return trial.config["job"]["hash"]


def _on_node(result: dict) -> str:
    if not result.get("host"):
        return ""
    return f" on {result['host']} (Ray node {str(result.get('ray_node_id', '?'))[:12]})"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _run_status(client, run_id: str) -> str | None:
    try:
        return client.get_run(run_id).info.status
    except Exception:  # noqa: BLE001 (MLflow raises its own error for a run it does not have)
        return None


def lost_node(error: BaseException) -> bool:
    """Whether ``error`` is Ray's for a trial whose worker or node went away."""
    import ray.exceptions as rex

    lost = tuple(getattr(rex, n) for n in ("RayActorError", "NodeDiedError", "ActorUnavailableError",
                                           "WorkerCrashedError", "LocalRayletDiedError") if hasattr(rex, n))
    text = str(error).lower()
    return isinstance(error, lost) or "node" in text and ("died" in text or "dead" in text)


def describe_failure(error: BaseException, last: dict, max_failures: int) -> str:
    """A failed trial in one line: a lost node says so (Ray's own words name an actor and a socket)."""
    text = _first_line(error)
    if lost_node(error):
        retried = f"Ray retried it {max_failures} time(s) (--max-failures {max_failures})" if max_failures else (
            "no retries (--max-failures 0)")
        return (f"the node running it{_on_node(last)} died or became unreachable (its Ray worker was lost); "
                f"{retried}; Ray said: {text}")
    return text


def check_store(client, uri: str, results, spec_name: str, parent: str, measure_only: bool) -> list[str]:
    """Every trial Ray reports finished must have its FINISHED run with the metrics its mode needs
    in the driver's store. One that lacks it is a failed trial (its line says why); its numbers
    and epoch curves come back from Ray's results into a new run of the driver's store."""
    from harness.tracking import TrialRun
    from harness.trial import identity, trial_metrics

    problems = []
    for result in results:
        final = result.metrics or {}
        if result.error or not final.get("final"):
            continue
        job = result.config["job"]
        run_id = final.get("run_id")
        wrong = _missing(client, run_id, job, measure_only)
        if wrong is None:
            continue
        params, tags = identity(job, str(final.get("device", "unknown")))
        tags.update({k: str(final[k]) for k in ("host", "ray_node_id", "code_digest", "attempt") if k in final})
        run = TrialRun(uri, spec_name, parent, job["label"], params,
                       {**tags, "recovered_from": f"Ray Tune results (the trial's own run {run_id} is not usable here)"})
        epochs = _epoch_rows(result)
        for row in epochs:
            run.log_metrics({k: v for k, v in trial_metrics(row).items()}, step=int(row["epoch"]))
        run.log_metrics(trial_metrics(final), step=int(epochs[-1]["epoch"]) if epochs else 0)
        run.end("FINISHED")
        problems.append(f"{job['label']}: finished{_on_node(final)}, but {wrong} in the driver's store {uri}: the "
                        "trial's node could not reach that tracking store (there, MLFLOW_TRACKING_URI names another "
                        f"store); its numbers and curves are recovered from Ray's results into run {run.run_id} "
                        "(no evaluation artifacts)")
    return problems


def _missing(client, run_id: str | None, job: dict, measure_only: bool) -> str | None:
    """What the driver's store lacks of a finished trial's run, or None."""
    try:
        run = client.get_run(run_id) if run_id else None
    except Exception:  # noqa: BLE001 (MLflow's error for a run it does not have)
        run = None
    if run is None:
        return f"its run {run_id} is not"
    if run.data.tags.get("trial_hash") != job["hash"]:
        return f"its run {run_id} is another trial's"
    if run.info.status != "FINISHED":
        return f"its run {run_id} is {run.info.status}"
    cfg = job["config"]["measure"]
    needed = ["params_M"] + (["GFLOPs"] if cfg["flops"] else []) + (["latency_ms"] if cfg["latency"] else [])
    needed += [] if measure_only else ["top1"]
    lacking = [k for k in needed if not math.isfinite(run.data.metrics.get(k, math.nan))]
    return f"its run {run_id} has no {', '.join(lacking)}" if lacking else None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _epoch_rows(result) -> list[dict]:
    """The per-epoch reports among a trial's Ray results (progress and final ones left out)."""
    frame = result.metrics_dataframe
    if frame is None or "epoch" not in frame:
        return []
    rows = []
    for row in frame.to_dict("records"):
        epoch, batch = row.get("epoch"), row.get("batch")
        if _number(epoch) and not _number(batch) and str(row.get("final")) != "True":
            rows.append(row)
    return rows


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # Ray wraps the trial's exception; its last line names the original error.
    lines = [line for line in text if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
