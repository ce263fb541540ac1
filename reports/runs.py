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


def readable(value: float, digits: int = 5) -> float:
    """``value`` to ``digits`` significant digits (whole numbers exact): what the UI shows.
    Timings and ratios carry no more precision than that; counts stay exact."""
    value = float(value)
    if value.is_integer() or not math.isfinite(value):
        return value
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


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def runs_view_url(base: str, experiment_id: str, key: str | None) -> str:
    """The experiment's runs list in the shared view ``key`` (trials, key columns, best first).
    ``/runs`` itself: the experiment page's redirect drops the view key."""
    url = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return url + (f"&viewStateShareKey={key}" if key else "")
