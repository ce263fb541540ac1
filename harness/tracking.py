"""MLflow bookkeeping: one experiment per spec, one parent run per sweep, one child run per trial.

Everything goes through an explicit ``MlflowClient(uri)`` (no fluent global state), so Ray
workers write to exactly the store the driver chose.
"""
from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

MAX_PARAM_LEN = 6000


def tracking_uri(results_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a sqlite store under the results dir (absolute path)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = Path(results_dir).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def init_store(uri: str) -> MlflowClient:
    """Create (migrate) the store once in the driver: a fresh sqlite DB hit by several
    processes at once fails its schema migration."""
    client = MlflowClient(uri)
    client.search_experiments(max_results=1)
    return client


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


def finished_trials(client: MlflowClient, spec_name: str) -> dict[str, list[Any]]:
    """trial hash -> this spec's FINISHED trial runs, newest first."""
    exp = client.get_experiment_by_name(spec_name)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50000)
    out: dict[str, list[Any]] = {}
    for run in runs:
        out.setdefault(run.data.tags.get("trial_hash"), []).append(run)
    return out


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# MLflow's compare page plots the first metric the runs share, in the order they were first logged.
FIRST_METRICS = ("top1", "params_M", "GFLOPs", "latency_x")


class TrialRun:
    """The child run of one trial. Metrics are logged in batches (one call per epoch)."""

    def __init__(self, uri: str, spec_name: str, parent_run_id: str | None, run_name: str,
                 params: dict[str, Any], tags: dict[str, str]):
        self.client = MlflowClient(uri)
        exp = experiment_id(self.client, spec_name)
        all_tags = {"kind": "trial", "spec": spec_name, **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(exp, run_name=run_name, tags=all_tags).info.run_id
        flat = flatten(params)
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flat.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        ordered = sorted(metrics.items(), key=lambda kv: FIRST_METRICS.index(kv[0]) if kv[0] in FIRST_METRICS else 99)
        batch = [Metric(k, readable(v), now, step) for k, v in ordered if isinstance(v, (int, float))]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_PARAM_LEN]) for k, v in tags.items()])

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def runs_frame(client: MlflowClient, runs: dict[str, Any]) -> pd.DataFrame:
    """One row per trial hash: its latest metrics (final epoch) and tags."""
    rows = []
    for h, run in runs.items():
        row = {"trial_hash": h, "run_id": run.info.run_id}
        row.update(run.data.metrics)
        row.update({f"tag.{k}": v for k, v in run.data.tags.items() if not k.startswith("mlflow.")})
        rows.append(row)
    return pd.DataFrame(rows)


def readable(value: float, digits: int = 5) -> float:
    """``value`` to ``digits`` significant digits (whole numbers exact): what the UI shows.
    Timings and ratios carry no more precision than that; counts stay exact."""
    value = float(value)
    if value.is_integer() or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")
