"""The sweep's report in MLflow: the experiment's description and kind, a shared runs view with
the columns that matter, and the parent run's artifacts, verdict metrics and tags.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from reports.runs import MAX_PARAM_LEN, readable
from reports.verdicts import tau_text


def describe_experiment(client: MlflowClient, experiment_id: str, description: str) -> None:
    """The experiment's description in the UI (its ``mlflow.note.content`` tag), and its kind:
    model training, so that the UI opens on the runs list rather than on (empty) GenAI traces."""
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    if description:
        client.set_experiment_tag(experiment_id, "mlflow.note.content", description)


RUNS_VIEW_KEY = "gsf-harness-trials"
# The runs-list columns a researcher reads first.
VIEW_COLUMNS = [("params", "variant"), ("params", "seed"), ("params", "module_effective"), ("metrics", "top1"),
                ("metrics", "params_M"), ("metrics", "GFLOPs"), ("metrics", "latency_x")]


def set_runs_view(client: MlflowClient, experiment_id: str, columns: list[tuple[str, str]] = VIEW_COLUMNS,
                  key: str = RUNS_VIEW_KEY) -> str:
    """A shared view of the experiment's runs list: trials only, these columns, best top-1 first.

    MLflow keeps no server-side default columns (the UI picks Source, Models, Dataset and keeps a
    user's choice in the browser); what it does store is a shared view, an experiment tag the UI
    applies when opened as ``#/experiments/<id>?viewStateShareKey=<key>``. Returns ``key``."""
    state = {
        "searchFilter": "tags.kind = 'trial'",
        "orderByKey": "metrics.`top1`", "orderByAsc": False,
        "selectedColumns": [f"{kind}.`{name}`" for kind, name in columns],
        "columnOrder": [f"{kind}.`{name}`" for kind, name in columns],
        "runListHidden": False, "viewMaximized": False,
    }
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{key}", json.dumps(state))
    return key


def log_parent_report(client: MlflowClient, run_id: str, files: list, metrics: dict[str, float],
                      tags: dict[str, str], params: dict[str, Any]) -> None:
    """The sweep's results on its parent run: files as artifacts (report/), the rest in one batch."""
    for f in files:
        f = Path(f)
        if f.is_file():
            client.log_artifact(run_id, str(f), artifact_path="spec" if f.suffix in (".yaml", ".yml") else "report")
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, readable(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()],
                     tags=[RunTag(k, str(v)[:MAX_PARAM_LEN]) for k, v in tags.items()])


def claim_key(claim: str) -> str:
    """An MLflow metric/tag name for a claim: 'GSF > GSM' -> 'claim.GSF_gt_GSM' ('+' 'plus', '%' 'pct')."""
    text = claim.replace(" > ", "_gt_").replace("+", "plus").replace("%", "pct")
    return "claim." + re.sub(r"[^\w.\- /]", "_", text).strip().replace(" ", "_")


def log_to_parent(client, meta: dict, out: Path, spec_path) -> None:
    """The sweep's parent run: spec, tables, figures and sweep.json as artifacts; each verdict as
    metrics (difference, interval) and a tag (the sentence); the description as the run's note."""
    files = [out / name for name in ("table.csv", "table.md", "table.html", "table.tex", "verdicts.csv",
                                     "sweep.json", "fig7.csv", "fig8.json")]
    files += [out / f for f in meta["figures"].values()]
    metrics, tags = {}, {}
    for v in meta["verdicts"]:
        key = claim_key(v["claim"]) + (("." + re.sub(r"[^\w.\-]", "_", v["point"])) if v["point"] else "")
        tags[key] = v["summary"]
        for field in ("diff", "low", "high"):
            if v[field] is not None and not (isinstance(v[field], float) and math.isnan(v[field])):
                metrics[f"{key}.{field}"] = v[field]
        metrics[f"{key}.holds"] = 1.0 if v["verdict"] == "holds" else -1.0 if v["verdict"] == "reversed" else 0.0
    if meta["kendall_tau"] is not None and not math.isnan(meta["kendall_tau"]):
        metrics["kendall_tau"] = meta["kendall_tau"]
    note = "\n".join([meta["description"], ""] + [f"- {v['summary']}" for v in meta["verdicts"]]
                     + ([f"\nKendall tau vs the paper: {tau_text(meta['kendall_tau'])} over {meta['tau_rows']} rows"]
                        if meta["tau_rows"] >= 2 else []))
    tags["mlflow.note.content"] = note
    if meta.get("gate_answer"):
        tags["fig8.bottom_differencing_top_averaging"] = meta["gate_answer"]
    log_parent_report(client, meta["parent_run_id"], [spec_path, *files], metrics, tags,
                      {"profile": meta["profile"], "claims": len(meta["verdicts"]), "rows": len(meta["rows"]),
                       "baseline": meta["baseline"] or "-"})
