"""MLflow bookkeeping: one experiment per spec, one parent run per sweep, one child run per trial.

Everything goes through an explicit ``MlflowClient(uri)`` (no fluent global state), so Ray
workers write to exactly the store the driver chose.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.spec import SpecError
from reports.runs import MAX_PARAM_LEN, flatten, readable

PROBE_TIMEOUT_S = 10  # an MLflow server answers in milliseconds; MLflow's own retries take minutes


def tracking_uri(results_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set (a relative sqlite or file path made absolute, see
    ``absolute_uri``), else a sqlite store under the results dir."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return absolute_uri(uri, Path.cwd())
    path = Path(results_dir).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def absolute_uri(uri: str, cwd: Path) -> str:
    """``uri`` with a relative local path taken from ``cwd``: ``sqlite:///rel.db`` (three slashes
    and a relative path), ``file:rel`` or a bare path. A trial runs in a folder of its own, where
    the same relative path would open a new, empty store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path, sep, query = uri.removeprefix("sqlite:///").partition("?")
        return f"sqlite:///{os.path.normpath(cwd / path)}{sep}{query}"
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return (cwd / uri.removeprefix("file:")).resolve().as_uri()
    if "://" not in uri and not uri.startswith(("databricks", "file:", "sqlite:")) and not Path(uri).is_absolute():
        return str((cwd / uri).resolve())
    return uri


def is_local_store(uri: str) -> bool:
    """A store that lives in a file on the driver's disk (sqlite, a folder): other nodes cannot share it."""
    return uri.startswith(("sqlite:", "file:")) or ("://" not in uri and not uri.startswith("databricks"))


def open_store(uri: str) -> MlflowClient:
    """The store at ``uri``, probed once with a short timeout and created (migrated) here in the
    driver. A store that does not answer or that MLflow rejects is a one-line ``SpecError``."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # something answers; the query below says whether it is an MLflow server
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SpecError(f"tracking store {uri} does not answer ({reason}; waited up to {PROBE_TIMEOUT_S} s): "
                            "start the MLflow server or fix MLFLOW_TRACKING_URI") from None
    try:
        with _creation_lock(uri), _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                                       MLFLOW_HTTP_REQUEST_TIMEOUT=str(PROBE_TIMEOUT_S)), _quiet("mlflow.store.db.utils"):
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 (MLflow raises many types for a store it cannot use)
        text = str(e).strip().splitlines()
        raise SpecError(f"tracking store {uri}: {type(e).__name__}: {text[0] if text else ''}") from None
    return client


@contextlib.contextmanager
def _creation_lock(uri: str):
    """A fresh sqlite DB hit by two drivers at once fails its schema migration: create it under a
    file lock beside it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _quiet(logger: str):
    """No INFO lines from ``logger`` (MLflow announces creating a store's tables on stderr)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _env(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifact_location)


def local_artifact_location(uri: str, results_dir: str | Path, spec_name: str) -> str | None:
    """Where a local sqlite store keeps a spec's artifacts: beside the store, not in the driver's
    working folder (MLflow's default, ./mlruns). A tracking server decides for itself (None)."""
    if not uri.startswith("sqlite:"):
        return None
    return (Path(results_dir).resolve() / "mlartifacts" / spec_name).as_uri()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_parent(client: MlflowClient, spec_name: str, tags: dict[str, str], artifact_location: str | None = None) -> str:
    exp = experiment_id(client, spec_name, artifact_location)
    run = client.create_run(exp, run_name=f"{spec_name} sweep {time.strftime('%Y-%m-%d %H:%M:%S')}",
                            tags={"spec": spec_name, "kind": "sweep", **tags})
    return run.info.run_id


def finished_trials(client: MlflowClient, spec_name: str, key: str = "trial_hash") -> dict[str, list[Any]]:
    """Tag ``key`` (the trial hash; ``config_key``: the same config of any code) -> this spec's
    FINISHED trial runs, newest first."""
    exp = client.get_experiment_by_name(spec_name)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50000)
    out: dict[str, list[Any]] = {}
    for run in runs:
        out.setdefault(run.data.tags.get(key), []).append(run)
    return out


def close_stale_runs(client: MlflowClient, spec_name: str, results_dir: str) -> int:
    """Mark KILLED the RUNNING runs of this spec whose sweep wrote to ``results_dir``: the caller
    holds that folder's lock, so the driver that started them is gone. Returns how many."""
    exp = client.get_experiment_by_name(spec_name)
    if exp is None:
        return 0
    running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=50000)
    folder_of: dict[str, str | None] = {}

    def sweep_folder(run_id: str | None) -> str | None:
        if run_id and run_id not in folder_of:
            try:
                folder_of[run_id] = client.get_run(run_id).data.tags.get("results_dir")
            except Exception:  # noqa: BLE001 (a parent deleted from the store)
                folder_of[run_id] = None
        return folder_of.get(run_id) if run_id else None

    closed = 0
    for run in running:
        tags = run.data.tags
        folder = tags.get("results_dir") if tags.get("kind") == "sweep" else sweep_folder(tags.get("mlflow.parentRunId"))
        if folder == results_dir:
            client.set_terminated(run.info.run_id, "KILLED")
            closed += 1
    return closed


def close_children(client: MlflowClient, parent_run_id: str, status: str = "KILLED") -> int:
    """End the parent's child runs still RUNNING (their trial's process was stopped or lost)."""
    run = client.get_run(parent_run_id)
    runs = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
                              "and attributes.status = 'RUNNING'", max_results=50000)
    for child in runs:
        client.set_terminated(child.info.run_id, status)
    return len(runs)


def run_to_continue(client: MlflowClient, experiment: str, trial_hash: str, parent_run_id: str | None,
                    checkpoint_run_id: str | None, measure_only: str = "False") -> str | None:
    """The run a trial starting now continues: this sweep's run of the trial (an earlier attempt,
    lost with its node or failed), else the unfinished run its checkpoint was written by (a
    sweep stopped or killed earlier, whose runs the next driver closed as KILLED); without a
    checkpoint, the trial's newest run if an earlier driver left it KILLED or FAILED before any
    epoch (killed before the first checkpoint: nothing to resume, but one run per trial); else None."""
    if parent_run_id:
        runs = client.search_runs([experiment], f"tags.trial_hash = '{trial_hash}' and "
                                  f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            return runs[0].info.run_id
    if checkpoint_run_id:
        try:
            run = client.get_run(checkpoint_run_id)
        except Exception:  # noqa: BLE001 (another store: the checkpoint outlived its run)
            return None
        if (run.info.experiment_id == experiment and run.data.tags.get("trial_hash") == trial_hash
                and run.info.status != "FINISHED"):
            return checkpoint_run_id
        return None
    newest = client.search_runs([experiment], f"tags.trial_hash = '{trial_hash}' and tags.kind = 'trial'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    run = newest[0] if newest else None
    if (run is not None and run.info.status in ("KILLED", "FAILED") and run.data.tags.get("measure_only") == measure_only
            and not client.get_metric_history(run.info.run_id, "train_loss")):
        return run.info.run_id
    return None


# MLflow's compare page plots the first metric the runs share, in the order they were first logged.
FIRST_METRICS = ("top1", "params_M", "GFLOPs", "latency_x")


class TrialRun:
    """The child run of one trial. Metrics are logged in batches (one call per epoch).

    A trial that runs again continues its run (``run_to_continue``): the same run holds every
    attempt's epochs, and ``earlier`` holds the tags it had (empty for a new run)."""

    def __init__(self, uri: str, spec_name: str, parent_run_id: str | None, run_name: str,
                 params: dict[str, Any], tags: dict[str, str], checkpoint_run_id: str | None = None):
        self.client = MlflowClient(uri)
        exp = experiment_id(self.client, spec_name)
        all_tags = {"kind": "trial", "spec": spec_name, **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = run_to_continue(self.client, exp, tags["trial_hash"], parent_run_id, checkpoint_run_id,
                                      tags.get("measure_only", "False"))
        self.earlier: dict[str, str] = {}
        if self.run_id is None:
            self.run_id = self.client.create_run(exp, run_name=run_name, tags=all_tags).info.run_id
            flat = flatten(params)
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flat.items()])
            return
        self.earlier = self.client.get_run(self.run_id).data.tags
        self.client.update_run(self.run_id, status="RUNNING")
        for stale in ("error", "traceback"):  # an earlier attempt's failure
            if stale in self.earlier:
                self.client.delete_tag(self.run_id, stale)
        self.set_tags(all_tags)

    def logged_steps(self, metric: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, metric)}

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        ordered = sorted(metrics.items(), key=lambda kv: FIRST_METRICS.index(kv[0]) if kv[0] in FIRST_METRICS else 99)
        batch = [Metric(k, readable(v, k), now, step) for k, v in ordered if isinstance(v, (int, float))]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_PARAM_LEN]) for k, v in tags.items()])

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
