"""The sweep's report in MLflow: the experiment's description and kind, a shared runs view with
the columns that matter, and the parent run's artifacts, verdict metrics and tags.
"""
from __future__ import annotations

import json
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from reports.runs import MAX_PARAM_LEN, flatten, readable
from reports.verdicts import tau_text


def describe_experiment(client: MlflowClient, experiment_id: str, description: str, verdicts: list[dict] = ()) -> None:
    """The experiment's description in the UI (its ``mlflow.note.content`` tag): the verdicts on
    one line first, since the runs page shows only the first line, then each verdict and the
    spec's description. And its kind: model training, so that the UI opens on the runs list
    rather than on (empty) GenAI traces."""
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    text = "\n".join(([f"**Verdicts**: {verdicts_line(verdicts)}", ""] if verdicts else [])
                     + [f"- {v['summary']}" for v in verdicts] + ["", description])
    if text.strip():
        client.set_experiment_tag(experiment_id, "mlflow.note.content", text.strip())


RUNS_VIEW_KEY = "gsf-harness-trials"
# The metrics a researcher reads first, after top1 and the spec's axes; then what identifies a run.
COST_COLUMNS = ["params_x", "gflops_x", "latency_x", "params_M", "GFLOPs"]
CHART_METRICS = ["top1", "params_x", "gflops_x", "latency_x", "params_M", "GFLOPs"]
HIDDEN_CHARTS = ["latency_ms", "latency_p90_ms", "train_step_ms"]  # absolute times on a shared CPU
# One colour per table row (all its seeds), as matplotlib's tab10.
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


def grid_keys(spec) -> list[str]:
    """The config keys the spec's grid sets: its axes, then every key on which its trials differ
    (a variant's ``set``), in config order; seeds aside."""
    configs = [flatten(t.config) for t in spec.trials]
    keys = dict.fromkeys(k for c in configs for k in c if k != "seed")
    varying = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
    return list(spec.axis_keys) + [k for k in varying if k not in spec.axis_keys]


def runs_view_state(spec, runs: int = 100) -> dict:
    """The shared view of a sweep's experiment (the JSON MLflow 3.17's runs page applies; its
    keys are those of ``ExperimentPageUIState`` and the search facets): the trials grouped into
    the table's rows (variant and grid axes) with their mean, best top-1 first; top1, the spec's
    axes, the cost ratios and sizes as columns; the parent run in the group of runs without a
    variant, opened, with its verdicts; charts of every run, the comparisons first and absolute
    times hidden."""
    axes = grid_keys(spec)
    group = ([{"mode": "param", "groupByData": "variant"}] if any(t.variant for t in spec.trials) else []) + [
        {"mode": "param", "groupByData": k} for k in spec.axis_keys]
    columns = (["metrics.`top1`"] + [f"params.`{k}`" for k in axes] + [f"metrics.`{m}`" for m in COST_COLUMNS]
               + ["tags.`verdicts`", "params.`module_effective`"])
    section = "gsf-metrics"
    charts = [_chart("BAR", "top1", section, runs),
              {**_chart("SCATTER", "top1-vs-gflops", section, runs), "xaxis": {"key": "gflops_x", "type": "METRIC"},
               "yaxis": {"key": "top1", "type": "METRIC"}}]
    charts += [_chart("BAR", m, section, runs) for m in CHART_METRICS[1:]]
    charts += [{**_chart("BAR", m, section, runs), "deleted": True} for m in HIDDEN_CHARTS]
    return {
        "searchFilter": "", "orderByKey": "metrics.`top1`", "orderByAsc": False,
        "selectedColumns": columns, "columnWidths": _widths(columns),
        "columnOrder": [*FIXED_WIDTHS, *columns],  # the widths apply to the columns it names
        "groupBy": {"aggregateFunction": "average", "groupByKeys": group} if group else None,
        # MLflow keeps the group of runs without these params (the sweep's run) closed unless named here.
        "groupsExpanded": {",".join(f"{g['mode']}.{g['groupByData']}" for g in group): True},
        "useGroupedValuesInCharts": False, "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": True,
        "compareRunCharts": charts, "isAccordionReordered": True,
        "compareRunSections": [{"uuid": section, "name": "Model metrics", "display": True, "isReordered": True,
                                "deleted": False, "isGenerated": True}],
        "runListHidden": False, "viewMaximized": False,
    }


FIXED_WIDTHS = {"attributes.`Run Name`": 165, "runDateAndNestInfo": 95}  # the run's name and date


def _widths(columns: list[str]) -> dict[str, int]:
    """Pixel widths of the runs list's columns (MLflow's own: 190 for the name, 150 for the date,
    100 for each other): a group's name ("Group: GSF 2") whole, a mean's digits before MLflow's
    "(average)", and top1, two axes, the three ratios and both sizes within 1280 px beside
    MLflow's side bar."""
    widths = dict(FIXED_WIDTHS)
    for c in columns:
        kind, name = c.split("`")[:2]
        kind = kind.rstrip(".")
        widths[c] = {"verdicts": 300, "top1": 90}.get(name, 80 if kind == "metrics" else max(72, 7 * len(name) + 14))
    return widths


def _chart(kind: str, metric: str, section: str, runs: int) -> dict:
    """A chart card of MLflow's runs page; not ``isGenerated``, which the UI would turn into a line
    chart for a metric logged per epoch."""
    return {"uuid": f"gsf-{metric}", "type": kind, "metricKey": metric, "displayName": metric,
            "metricSectionId": section, "runsCountToCompare": runs, "deleted": False, "isGenerated": False}


def set_runs_view(client: MlflowClient, experiment_id: str, spec, key: str = RUNS_VIEW_KEY) -> str:
    """The experiment's shared runs view (``runs_view_state``). MLflow keeps no server-side default
    view (a fresh browser gets the columns Source, Models, Dataset, ungrouped); what it does store
    is a shared view, an experiment tag the UI applies when opened as
    ``#/experiments/<id>/runs?viewStateShareKey=<key>``. Returns ``key``."""
    state = runs_view_state(spec, runs=max(100, len(spec.trials) + 10))
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{key}", json.dumps(state))
    return key


def cost_ratios(spec, frame) -> dict[str, dict[str, float]]:
    """run id -> ``params_x``, ``gflops_x`` (over the mean of the baseline row's runs at the same
    grid point) and ``latency_x`` (timed beside the baseline by the trial itself); a baseline
    row's runs get 1.0 for each. ``frame``: ``runs_frame``'s rows."""
    trials = {t.hash: t for t in spec.trials}
    baselines = {(t.baseline, _row(t)[1]) for t in spec.trials if t.baseline}
    rows = {}
    for _, r in frame.iterrows():
        if r["trial_hash"] in trials:
            rows.setdefault(_row(trials[r["trial_hash"]]), []).append(r)
    out = {}
    for key, runs in rows.items():
        for r in runs:
            t = trials[r["trial_hash"]]
            if key in baselines:
                out[r["run_id"]] = {"params_x": 1.0, "gflops_x": 1.0, "latency_x": 1.0}
            elif t.baseline and (t.baseline, key[1]) in rows:
                base = rows[t.baseline, key[1]]
                ratios = {name: _mean([r], col) / _mean(base, col) for name, col in (("params_x", "params_M"),
                                                                                      ("gflops_x", "GFLOPs"))}
                out[r["run_id"]] = {k: v for k, v in ratios.items() if pd.notna(v)}  # NaN: not measured
    return out


def _row(trial) -> tuple[str, str]:
    """The table row of a trial: its variant and grid point."""
    return trial.variant, json.dumps(trial.axes, sort_keys=True, default=str)


def _mean(rows: list, col: str) -> float:
    values = [float(r[col]) for r in rows if col in r and pd.notna(r[col])]
    return sum(values) / len(values) if values else math.nan


def log_run_extras(client: MlflowClient, spec, frame) -> None:
    """What the runs list needs beyond what the trials logged: the cost ratios of ``cost_ratios``
    (also put into ``frame``, where the table reads them) and one colour per table row."""
    ratios = cost_ratios(spec, frame)
    trials = {t.hash: t for t in spec.trials}
    rows = list(dict.fromkeys(_row(t) for t in spec.trials))
    now = int(time.time() * 1000)
    for i, r in frame.iterrows():
        new = {k: readable(v, k) for k, v in ratios.get(r["run_id"], {}).items()
               if r.get(k) != readable(v, k)}
        for k, v in new.items():
            frame.loc[i, k] = v
        t = trials.get(r["trial_hash"])
        color = [RunTag("mlflow.runColor", COLORS[rows.index(_row(t)) % len(COLORS)])] if t else []
        client.log_batch(r["run_id"], metrics=[Metric(k, v, now, 0) for k, v in new.items()], tags=color)


def log_parent_report(client: MlflowClient, run_id: str, files: list, metrics: dict[str, float],
                      tags: dict[str, str], params: dict[str, Any]) -> None:
    """The sweep's results on its parent run: files as artifacts (report/), the rest in one batch.
    An HTML fragment gets a charset first: MLflow's preview shows it without one as Latin-1."""
    with tempfile.TemporaryDirectory() as tmp:
        for f in map(Path, files):
            if not f.is_file():
                continue
            if f.suffix == ".html" and "charset" not in f.read_text()[:1000]:
                fixed = Path(tmp, f.name)
                fixed.write_text('<meta charset="utf-8">\n' + f.read_text(), encoding="utf-8")
                f = fixed
            client.log_artifact(run_id, str(f), artifact_path="spec" if f.suffix in (".yaml", ".yml") else "report")
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, readable(v, k), now, 0) for k, v in metrics.items()],
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
    if meta["verdicts"]:
        tags["verdicts"] = verdicts_line(meta["verdicts"])
    # The run page folds the note after two lines: the verdicts come first.
    note = "\n".join(([f"**Verdicts**: {tags['verdicts']}", ""] if meta["verdicts"] else [])
                     + [f"- {v['summary']}" for v in meta["verdicts"]] + ["", meta["description"]]
                     + ([f"\nKendall tau vs the paper: {tau_text(meta['kendall_tau'])} over {meta['tau_rows']} rows"]
                        if meta["tau_rows"] >= 2 else []))
    tags["mlflow.note.content"] = note
    if meta.get("gate_answer"):
        tags["fig8.bottom_differencing_top_averaging"] = meta["gate_answer"]
    log_parent_report(client, meta["parent_run_id"], [spec_path, *files], metrics, tags,
                      {"profile": meta["profile"], "claims": len(meta["verdicts"]), "rows": len(meta["rows"]),
                       "baseline": meta["baseline"] or "-"})


def verdicts_line(verdicts: list[dict]) -> str:
    """The claims by verdict, in one line: 'holds: TSM>TSN, TDN>TSN; unresolved: GSF>GSM'."""
    by: dict[str, list[str]] = {}
    for v in verdicts:
        kind = v["verdict"] if v["verdict"] in ("holds", "reversed") else v["verdict"].split(" at ")[0]
        by.setdefault(kind, []).append(v["claim"].replace(" > ", ">") + (f" [{v['point']}]" if v["point"] else ""))
    return "; ".join(f"{k}: {', '.join(c)}" for k, c in by.items())
