"""Runs as the reports read them, and the conventions the harness writes them by.

The bottom of the MLflow side: ``harness.tracking`` logs with ``readable`` and ``MAX_PARAM_LEN``,
and the reports turn a store's runs into a frame (``runs_frame``) and link back into the MLflow
UI (``ui_base``, ``run_url``, ``runs_view_url``). Imports nothing of the project.
"""
from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd

MAX_PARAM_LEN = 6000  # the longest param or tag value every MLflow store accepts
DEFAULT_UI = "http://127.0.0.1:5000"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A trial's config as its run's params spell it: ``{"model": {"backbone": x}}`` -> ``{"model.backbone": x}``."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def readable(value: float, name: str = "") -> float:
    """``value`` as MLflow shows the metric ``name``: to the digits that carry information (whole
    numbers exact). Accuracies and claims' differences in points to 0.01; ratios over the
    baseline to 0.001; times (``*_ms``, ``*_s``, ``*_per_s``) to 3 significant digits, their
    noise being a few percent; anything else (sizes, losses) to 4. Trials keep the raw values
    in their ``metrics_raw.json`` artifact, the report in ``sweep.json``."""
    value = float(value)
    if value.is_integer() or not math.isfinite(value):
        return value
    if name.startswith(("top", "claim.", "kendall")):
        return round(value, 2)
    if name.endswith("_x"):
        return round(value, 3)
    digits = 3 if name.endswith(("_ms", "_s")) else 4
    return float(f"{value:.{digits}g}")


def runs_frame(runs: dict[str, Any]) -> pd.DataFrame:
    """One row per trial hash: its latest metrics (final epoch) and tags. ``runs``: trial hash ->
    MLflow run."""
    rows = []
    for h, run in runs.items():
        row = {"trial_hash": h, "run_id": run.info.run_id}
        row.update(run.data.metrics)
        row.update({f"tag.{k}": v for k, v in run.data.tags.items() if not k.startswith("mlflow.")})
        rows.append(row)
    return pd.DataFrame(rows)


def ui_base(tracking_uri: str = "") -> str:
    """The MLflow UI's address for links: MLFLOW_UI_URL, else a tracking server's own address
    (it serves the UI), else ``mlflow ui``'s default."""
    base = os.environ.get("MLFLOW_UI_URL") or (tracking_uri if tracking_uri.startswith(("http://", "https://"))
                                               else DEFAULT_UI)
    return base.rstrip("/")


# MLflow 3's UI takes the layout from the address's workflowType, else from the browser's last
# choice, and a fresh browser's is GenAI: every link names the classic one.
CLASSIC = "workflowType=machine_learning"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{CLASSIC}"


def runs_view_url(base: str, experiment_id: str, key: str | None) -> str:
    """The experiment's runs list in the shared view ``key`` (trials, key columns, best first).
    ``/runs`` itself: the experiment page's redirect drops the view key."""
    url = f"{base}/#/experiments/{experiment_id}/runs?{CLASSIC}"
    return url + (f"&viewStateShareKey={key}" if key else "")
