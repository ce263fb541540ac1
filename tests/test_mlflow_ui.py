"""What MLflow shows of a sweep: the shared runs view, the links into the UI, the values as logged,
the cost ratios on the runs, and the parent run's verdicts and artifacts (a real sqlite store)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.spec import load_spec
from reports import mlflow_ui
from reports.runs import readable, run_url, runs_view_url
from reports.verdicts import claim_verdicts, verdicts_frame

ROOT = Path(__file__).resolve().parent.parent
TABLE5 = ROOT / "ablations" / "table5_components.yaml"


def test_links_open_the_classic_layout_not_genai():
    assert run_url("http://h:5000", "7", "abc") == "http://h:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    assert runs_view_url("http://h:5000", "7", "v") == (
        "http://h:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=v")


def test_metrics_are_logged_to_the_digits_that_carry_information():
    assert readable(70.36363636, "top1") == 70.36
    assert readable(0.13333333333333522, "claim.GSF_gt_TSN.diff") == 0.13
    assert readable(1.0213789, "latency_x") == 1.021 and readable(1.00052, "params_x") == 1.001
    assert readable(12.358248999987609, "latency_ms") == 12.4 and readable(3.14159, "compile_s") == 3.14
    assert readable(0.048035104, "GFLOPs") == 0.04804 and readable(0.7036412, "params_M") == 0.7036
    assert readable(710924, "params") == 710924 and readable(float("inf"), "x") == float("inf")


def test_the_shared_view_groups_rows_and_puts_top1_the_axes_and_costs_first():
    state = mlflow_ui.runs_view_state(load_spec(TABLE5, "smoke"))
    assert state["groupBy"] == {"aggregateFunction": "average",
                                "groupByKeys": [{"mode": "param", "groupByData": "variant"}]}
    assert state["groupsExpanded"] == {"param.variant": True}  # the parent run's group
    assert state["searchFilter"] == "" and state["orderByKey"] == "metrics.`top1`" and state["orderByAsc"] is False
    assert state["selectedColumns"] == [
        "metrics.`top1`", "params.`model.gating`", "params.`model.fusion`", "metrics.`params_x`", "metrics.`gflops_x`",
        "metrics.`latency_x`", "metrics.`params_M`", "metrics.`GFLOPs`", "tags.`verdicts`", "params.`module_effective`"]
    assert state["runsHiddenMode"] == "SHOW_ALL" and state["useGroupedValuesInCharts"] is False
    charts = state["compareRunCharts"]
    assert [c["metricKey"] for c in charts if not c["deleted"]] == [
        "top1", "top1-vs-gflops", "params_x", "gflops_x", "latency_x", "params_M", "GFLOPs"]
    assert charts[1]["type"] == "SCATTER" and charts[1]["xaxis"]["key"] == "gflops_x"
    assert {c["metricKey"] for c in charts if c["deleted"]} == {"latency_ms", "latency_p90_ms", "train_step_ms"}
    assert all(not c["isGenerated"] and c["runsCountToCompare"] >= 100 for c in charts)
    widths = state["columnWidths"]
    assert sum(widths[c] for c in state["columnOrder"][:10]) <= 1026 - 73  # the table at 1280 px, less checkboxes
    assert widths["attributes.`Run Name`"] >= 165 and widths["params.`model.gating`"] >= 7 * len("model.gating")


def test_grid_axes_are_groups_and_columns(tmp_path):
    path = tmp_path / "axes.yaml"
    path.write_text(json.dumps({
        "base": {"model": {"backbone": "resnet18", "module": "gsf"}},
        "grid": {"variants": [{"name": "GSF", "set": {"model.fusion": "learned"}},
                              {"name": "GSM", "set": {"model.fusion": "sum"}}],
                 "axes": {"model.shift_ratio": [0.25, 0.5]}}}))
    state = mlflow_ui.runs_view_state(load_spec(path))
    assert state["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "variant"},
                                               {"mode": "param", "groupByData": "model.shift_ratio"}]
    assert state["groupsExpanded"] == {"param.variant,param.model.shift_ratio": True}
    assert state["selectedColumns"][:3] == ["metrics.`top1`", "params.`model.shift_ratio`", "params.`model.fusion`"]


def _frame(spec, values: dict[str, dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"trial_hash": t.hash, "run_id": f"{t.variant}{t.seed}", **values[t.variant]}
                         for t in spec.trials])


def test_cost_ratios_are_over_the_baseline_row_which_gets_1():
    spec = load_spec(TABLE5, "smoke")
    frame = _frame(spec, {"GSF": {"params_M": 0.72, "GFLOPs": 0.05, "latency_x": 1.3},
                          **{v: {"params_M": 0.71, "GFLOPs": 0.05, "latency_x": 1.1} for v in ("GSM", "TSM", "TDN")},
                          "TSN": {"params_M": 0.70, "GFLOPs": 0.04}})
    ratios = mlflow_ui.cost_ratios(spec, frame)
    assert ratios["TSN0"] == ratios["TSN2"] == {"params_x": 1.0, "gflops_x": 1.0, "latency_x": 1.0}
    assert ratios["GSF1"] == pytest.approx({"params_x": 0.72 / 0.70, "gflops_x": 1.25})
    assert ratios["TSM0"] == pytest.approx({"params_x": 0.71 / 0.70, "gflops_x": 1.25})


def _store(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_extras_go_onto_the_runs_and_into_the_frame(tmp_path):
    spec = load_spec(TABLE5, "smoke")
    client = _store(tmp_path)
    exp = client.create_experiment("t5", artifact_location=(tmp_path / "art").as_uri())
    ids = {}
    for t in spec.trials:
        run = client.create_run(exp, tags={"variant": t.variant})
        client.log_metric(run.info.run_id, "params_M", 0.72 if t.variant == "GSF" else 0.70)
        ids[run.info.run_id] = t
    frame = pd.DataFrame([{"trial_hash": t.hash, "run_id": rid, "params_M": 0.72 if t.variant == "GSF" else 0.70}
                          for rid, t in ids.items()])
    mlflow_ui.log_run_extras(client, spec, frame)
    runs = {rid: client.get_run(rid).data for rid in ids}
    gsf = [d for rid, d in runs.items() if ids[rid].variant == "GSF"]
    tsn = [d for rid, d in runs.items() if ids[rid].variant == "TSN"]
    assert all(d.metrics["params_x"] == 1.029 for d in gsf)  # 0.72 / 0.70, to 0.001
    assert all(d.metrics["params_x"] == d.metrics["latency_x"] == 1.0 for d in tsn)
    assert frame.set_index("run_id").loc[[r for r in ids if ids[r].variant == "TSN"], "latency_x"].eq(1.0).all()
    colors = {ids[rid].variant: d.tags["mlflow.runColor"] for rid, d in runs.items()}
    assert colors == dict(zip(["GSF", "GSM", "TSM", "TDN", "TSN"], mlflow_ui.COLORS[:5]))


def test_verdicts_csv_puts_the_verdict_first_rounded(tmp_path):
    spec = load_spec(TABLE5, "smoke")
    top1 = {"GSF": [70.0, 71.0, 72.4], "GSM": [70.0, 71.0, 72.0], "TSM": [60.0, 61.0, 65.0], "TDN": [60.0, 60.0, 60.0],
            "TSN": [50.0, 50.2, 50.1]}
    runs = pd.DataFrame([{"trial_hash": t.hash, "top1": top1[t.variant][t.seed]} for t in spec.trials])
    frame = verdicts_frame(claim_verdicts(spec, runs))
    assert list(frame.columns[:5]) == ["claim", "verdict", "diff", "interval", "paper_diff"]  # no axes: no point
    first = frame.iloc[0]
    assert (first["claim"], first["diff"], first["verdict"]) == ("GSF > GSM", 0.13, "unresolved at 3 seeds")
    assert (first["interval"], first["low"], first["seeds_needed"]) == ("[-0.44, +0.71]", -0.44, "~15 seeds")
    assert frame.set_index("claim").loc["TSM > TSN", "verdict"] == "holds"
    text = frame.to_csv(index=False)
    assert "0.1333" not in text and "inf" not in text


def test_parent_run_shows_its_verdicts_and_html_with_a_charset(tmp_path):
    client = _store(tmp_path)
    exp = client.create_experiment("t5", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp).info.run_id
    out = tmp_path / "t5"
    out.mkdir()
    (out / "table.html").write_text("<table><tr><th>latency_ms†</th></tr></table>")
    verdicts = [{"claim": "TSM > TSN", "point": "", "verdict": "holds", "summary": "TSM > TSN: +9.00 → holds",
                 "diff": 9.0, "low": 1.0, "high": 17.0},
                {"claim": "GSF > GSM", "point": "", "verdict": "unresolved at 3 seeds", "summary": "GSF > GSM: +0.13",
                 "diff": 0.13333333333333522, "low": -1.0, "high": 1.3}]
    meta = {"verdicts": verdicts, "kendall_tau": None, "tau_rows": 0, "description": "Table 5", "figures": {},
            "parent_run_id": parent, "profile": "smoke", "rows": [], "baseline": "TSN"}
    mlflow_ui.log_to_parent(client, meta, out, tmp_path / "missing.yaml")
    data = client.get_run(parent).data
    assert data.tags["verdicts"] == "holds: TSM>TSN; unresolved: GSF>GSM"
    assert data.tags["mlflow.note.content"].startswith("**Verdicts**: holds: TSM>TSN; unresolved: GSF>GSM\n")
    assert data.metrics["claim.GSF_gt_GSM.diff"] == 0.13
    html = Path(client.download_artifacts(parent, "report/table.html", str(tmp_path))).read_bytes()
    assert html.startswith(b'<meta charset="utf-8">') and "latency_ms†".encode() in html
