"""End to end, no mocks: a real small sweep through a local Ray and a real MLflow sqlite store."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("RAY_ADDRESS", None)

SYNTHETIC = {"dataset": "synthetic", "num_classes": 4, "train_size": 64, "val_size": 32,
             "frame_size": 32, "input_size": 32}


def _spec(tmp_path: Path, variants: list[dict], name: str = "mini", claims: list[str] | None = None) -> Path:
    spec = {
        "description": "a tiny Table 5",
        "paper_table": "table5_components.csv",
        "base": {
            "model": {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 4, "num_frames": 4,
                      "module": "gsf", "shift_ratio": 0.5},
            "data": SYNTHETIC,
            "train": {"epochs": 2, "batch_size": 16, "warmup_epochs": 0, "lr": 0.05},
            "measure": {"input_size": 32, "latency_runs": 20, "latency_warmup": 1},
        },
        "grid": {"variants": variants},
        "seeds": [0, 1],
        "profiles": {"smoke": {}},
    }
    if claims:
        spec["claims"] = claims
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sweep(path: Path, results: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "--results-dir", str(results), *extra],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)


@pytest.mark.timeout(600)
def test_sweep_trains_logs_renders_and_resumes(tmp_path):
    variants = [
        {"name": "GSF", "set": {"model.gating": "learned", "model.fusion": "learned"}, "paper_row": {"model": "GSF"},
         "baseline": "TSN"},
        {"name": "TSN", "set": {"model.gating": 0, "model.fusion": "sum"}, "paper_row": {"model": "TSN"}},
    ]
    path, results = _spec(tmp_path, variants, claims=["GSF > TSN"]), tmp_path / "results"
    proc = _sweep(path, results)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 to run" in proc.stdout and "[4/4]" in proc.stdout
    assert "Claims (top-1 difference, 95% interval):" in proc.stdout and "GSF > TSN: " in proc.stdout

    table = pd.read_csv(results / "mini" / "table.csv")
    assert list(table["variant"]) == ["GSF", "TSN"]
    assert (table["runs"] == "2/2").all()
    for col in ("top1", "top1_std", "params_M", "GFLOPs", "latency_ms", "paper_top1"):
        assert table[col].notna().all(), col
    assert table.set_index("variant").loc["GSF", "paper_top1"] == pytest.approx(48.44)
    assert table.set_index("variant").loc["GSF", "params_M"] > table.set_index("variant").loc["TSN", "params_M"]
    assert ((table["top1"] >= 0) & (table["top1"] <= 100)).all()
    for ext in ("md", "html", "tex", "png"):
        assert (results / "mini" / f"table.{ext}").stat().st_size > 0
    # The verdict on the claim reaches table.md, verdicts.csv, the index page and (below) MLflow.
    verdict = pd.read_csv(results / "mini" / "verdicts.csv").iloc[0]
    assert verdict["claim"] == "GSF > TSN" and verdict["method"] == "paired t" and verdict["n"] == 2
    assert verdict["low"] <= verdict["diff"] <= verdict["high"]
    assert verdict["verdict"] in ("holds", "reversed", "unresolved at 2 seeds")
    md = (results / "mini" / "table.md").read_text()
    assert "## Claims" in md and f"GSF > TSN: {verdict['diff']:+.2f}" in md and "Kendall tau-b over 2 rows" in md
    if (os.cpu_count() or 1) > 1:  # two trials at once: absolute times are marked as not comparable
        assert "latency_ms†" in md and "latency_x" in md
    for fig in ("fig7", "fig8", "fig9"):
        assert (results / "mini" / f"{fig}.png").stat().st_size > 0, fig
    index = (results / "index.html").read_text()
    assert "GSF &gt; TSN" in index and "/#/experiments/" in index

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mini")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial'")
    parents = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")
    assert len(runs) == 4 and len(parents) == 1
    parent = parents[0]
    key = "claim.GSF_gt_TSN"
    assert parent.data.tags[key].startswith(f"GSF > TSN: {verdict['diff']:+.2f}")
    assert parent.data.metrics[f"{key}.diff"] == pytest.approx(verdict["diff"], abs=0.01)
    assert {f"{key}.low", f"{key}.high", f"{key}.holds"} <= parent.data.metrics.keys()
    assert "a tiny Table 5" in parent.data.tags["mlflow.note.content"]
    reported = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/table.md", "report/table.png", "report/verdicts.csv", "report/fig7.png", "report/fig8.png"} <= reported
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "spec")] == ["spec/mini.yaml"]
    assert exp.tags["mlflow.note.content"].startswith("a tiny Table 5")
    assert "mlflow.sharedViewState.gsf-harness-trials" in client.get_experiment(exp.experiment_id).tags
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"trial_hash", "device", "git_commit", "spec", "hw.cpu", "sw.torch", "hw.threads"} <= run.data.tags.keys()
        assert run.data.params["model.backbone"] == "resnet18"
        assert run.data.params["module_effective"] == {"GSF": "gsf", "TSN": "tsn-like"}[run.data.params["variant"]]
        assert run.info.run_name == f"{run.data.params['variant']} seed={run.data.params['seed']}"
        evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        assert "evaluation/confusion.json" in evaluation
        assert ("evaluation/gates.json" in evaluation) == (run.data.params["variant"] == "GSF")
        assert {"top1", "train_loss", "GFLOPs", "params_M", "latency_ms"} <= run.data.metrics.keys()
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == [1, 2], "one train_loss per epoch"
    # GSF's trials timed TSN beside themselves; the table shows their ratio, not one of row medians.
    ratios = [r.data.metrics.get("latency_x") for r in runs if r.data.tags["variant"] == "GSF"]
    assert len(ratios) == 2 and all(0.5 < x < 5 for x in ratios), ratios
    assert all("latency_x" not in r.data.metrics for r in runs if r.data.tags["variant"] == "TSN")
    by_variant = table.set_index("variant")
    assert by_variant.loc["GSF", "latency_x"] == pytest.approx(sum(ratios) / 2, rel=1e-3)
    assert pd.isna(by_variant.loc["TSN", "latency_x"])

    # Same spec again: nothing re-runs, the table is rebuilt from MLflow.
    again = _sweep(path, results)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 already finished, 0 to run" in again.stdout
    assert len(client.search_runs([exp.experiment_id], "tags.kind = 'trial'")) == 4
    assert pd.read_csv(results / "mini" / "table.csv").equals(table)


@pytest.mark.timeout(600)
def test_failed_trial_exits_1_and_keeps_the_others(tmp_path):
    variants = [
        {"name": "ok", "set": {"model.module": "tsm"}},
        # 7 classes in the model but 4 in the data: this trial fails when training starts.
        {"name": "broken", "set": {"model.module": "tsm", "model.num_classes": 7}},
    ]
    path, results = _spec(tmp_path, variants, "failing"), tmp_path / "results"
    spec = yaml.safe_load(path.read_text())
    spec["seeds"] = [0]
    spec["base"]["train"]["epochs"] = 1
    path.write_text(yaml.safe_dump(spec))
    proc = _sweep(path, results)
    assert proc.returncode == 1
    assert "1 trial(s) failed" in proc.stderr and "broken" in proc.stderr and "num_classes" in proc.stderr
    table = pd.read_csv(results / "failing" / "table.csv").set_index("variant")
    assert table.loc["ok", "runs"] == "1/1" and table.loc["ok", "top1"] >= 0
    assert table.loc["broken", "runs"] == "0/1"
