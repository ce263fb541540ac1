"""End to end, no mocks: a real small sweep through a local Ray and a real MLflow sqlite store."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness import ray_reaper

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("RAY_ADDRESS", None)

SYNTHETIC = {"dataset": "synthetic", "num_classes": 4, "train_size": 64, "val_size": 32,
             "frame_size": 32, "input_size": 32}


def _spec(tmp_path: Path, variants: list[dict], name: str = "mini", claims: list[str] | None = None,
          shift_ratio: float | None = 0.5) -> Path:
    """A tiny spec; ``shift_ratio=None`` for grids with TSM rows (TSM takes no shift_ratio)."""
    spec = {
        "description": "a tiny Table 5",
        "paper_table": "table5_components.csv",
        "base": {
            "model": {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 4, "num_frames": 4,
                      "module": "gsf", **({"shift_ratio": shift_ratio} if shift_ratio else {})},
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
    note = exp.tags["mlflow.note.content"]  # the runs page shows its first line: the verdicts
    assert note.startswith(f"**Verdicts**: {verdict['verdict'].split(' at ')[0]}: GSF>TSN\n") and "a tiny Table 5" in note
    assert "mlflow.sharedViewState.gsf-harness-trials" in client.get_experiment(exp.experiment_id).tags
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"trial_hash", "device", "git_commit", "spec", "hw.cpu", "hw.cpu_capability", "sw.torch", "sw.torch_git",
                "hw.threads"} <= run.data.tags.keys()
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
    # The baseline's runs carry its own 1.0, and every run its size ratios, for MLflow's columns.
    tsn, gsf = ([r.data.metrics for r in runs if r.data.tags["variant"] == v] for v in ("TSN", "GSF"))
    assert all(m["latency_x"] == m["params_x"] == m["gflops_x"] == 1.0 for m in tsn)
    assert all(m["params_x"] == round(m["params_M"] / tsn[0]["params_M"], 3) > 1 for m in gsf)
    by_variant = table.set_index("variant")
    assert by_variant.loc["GSF", "latency_x"] == pytest.approx(sum(ratios) / 2, rel=1e-3)
    assert by_variant.loc["TSN", "latency_x"] == 1.0, "the baseline's own ratio"
    assert by_variant.loc["TSN", "params_x"] == 1.0 and by_variant.loc["GSF", "params_x"] > 1.0
    raw = json.loads(Path(client.download_artifacts(runs[0].info.run_id, "metrics_raw.json", str(tmp_path))).read_text())
    assert raw["final"]["top1"] == pytest.approx(runs[0].data.metrics["top1"], abs=0.005)

    # Same spec again: nothing re-runs, the table is rebuilt from MLflow.
    again = _sweep(path, results)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 already finished, 0 to run" in again.stdout
    assert len(client.search_runs([exp.experiment_id], "tags.kind = 'trial'")) == 4
    assert pd.read_csv(results / "mini" / "table.csv").equals(table)


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
@pytest.mark.timeout(600)
def test_failed_trial_exits_1_and_keeps_the_others(tmp_path):
    variants = [
        {"name": "ok", "set": {"model.module": "tsm"}},
        # a batch larger than the 64-clip training set: this trial fails when training starts
        {"name": "broken", "set": {"model.module": "tsm", "train.batch_size": 128}},
    ]
    path, results = _spec(tmp_path, variants, "failing", shift_ratio=None), tmp_path / "results"
    spec = yaml.safe_load(path.read_text())
    spec["seeds"] = [0]
    spec["base"]["train"]["epochs"] = 1
    path.write_text(yaml.safe_dump(spec))
    proc = _sweep(path, results)
    assert proc.returncode == 1
    assert "1 trial(s) failed" in proc.stderr and "broken" in proc.stderr and "batch_size=128" in proc.stderr
    table = pd.read_csv(results / "failing" / "table.csv").set_index("variant")
    assert table.loc["ok", "runs"] == "1/1" and table.loc["ok", "top1"] >= 0
    assert table.loc["broken", "runs"] == "0/1"


def _start(path: Path, results: Path, log: Path) -> subprocess.Popen:
    """A driver in its own session, as a terminal would run it; output goes to ``log``."""
    out = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "harness.sweep", str(path), "--results-dir", str(results)],
                            cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, log: Path, needle: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while needle not in log.read_text():
        assert proc.poll() is None, f"the driver ended (rc {proc.returncode}) before {needle!r}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {needle!r} after {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _statuses(client: MlflowClient, name: str) -> dict[str, list[str]]:
    exp = client.get_experiment_by_name(name)
    out: dict[str, list[str]] = {}
    for run in client.search_runs([exp.experiment_id]):
        out.setdefault(run.data.tags["kind"], []).append(run.info.status)
    return out


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
@pytest.mark.timeout(900)
def test_two_drivers_ctrl_c_and_a_dead_driver(tmp_path):
    """Two drivers started at once on one results dir: one runs, the other exits 2 naming it.
    Ctrl-C mid-epoch exits 130 and says how to resume; a SIGKILLed driver's RUNNING runs are
    closed by the next driver, which finishes the sweep."""
    variants = [{"name": "TSM", "set": {"model.module": "tsm"}}, {"name": "GSF"}]
    path, results = _spec(tmp_path, variants, "ctrlc", shift_ratio=None), tmp_path / "results dir"  # a space is fine
    spec = yaml.safe_load(path.read_text())
    spec["seeds"] = [0]
    spec["base"]["train"]["epochs"] = 4
    spec["base"]["data"]["train_size"] = 128
    path.write_text(yaml.safe_dump(spec))
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")

    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    drivers = [_start(path, results, log) for log in logs]
    deadline = time.time() + 300
    while all(d.poll() is None for d in drivers):
        assert time.time() < deadline, [log.read_text()[-2000:] for log in logs]
        time.sleep(0.2)
    loser = next(i for i, d in enumerate(drivers) if d.poll() is not None)
    first, log = drivers[1 - loser], logs[1 - loser]
    lines = [line for line in logs[loser].read_text().splitlines() if line.strip()]
    assert drivers[loser].returncode == 2 and len(lines) == 1, lines
    assert f"pid {first.pid} on " in lines[0] and "sweep.lock" in lines[0], lines

    _wait_for(first, log, ": epoch 1 ")
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole process group
    t0 = time.time()
    assert first.wait(timeout=120) == 130, log.read_text()[-3000:]
    assert time.time() - t0 < 60
    text = log.read_text()
    assert "interrupted: 0 of the 2 trial(s) to run finished, 2 did not:" in text, text[-3000:]
    assert "  - TSM seed=0" in text and "  - GSF seed=0" in text
    assert "resume with the same command (python -m harness.sweep" in text and "Traceback" not in text
    runs = _statuses(client, "ctrlc")
    assert runs["sweep"] == ["KILLED"] and sorted(runs["trial"]) == ["KILLED", "KILLED"], runs

    log = tmp_path / "killed.log"
    killed = _start(path, results, log)
    _wait_for(killed, log, ": epoch ")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert "RUNNING" in _statuses(client, "ctrlc")["sweep"], "the dead driver left its runs RUNNING"
    # Its local Ray goes with it: the agents that would stay 60-120 s end within seconds (ray_reaper).
    (session,) = glob.glob(f"{os.environ.get('RAY_TMPDIR', '/tmp')}/ray/session_*_{killed.pid}")
    t0 = time.time()
    while ray_reaper.holders(os.path.realpath(session)) and time.time() - t0 < 30:
        time.sleep(0.5)
    assert not ray_reaper.holders(os.path.realpath(session)), "Ray processes outlived the killed driver by 30 s"

    last = _sweep(path, results)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert "left RUNNING by an earlier driver of this results dir as KILLED" in last.stdout
    assert "0 already finished, 2 to run" in last.stdout
    runs = _statuses(client, "ctrlc")
    assert "RUNNING" not in runs["sweep"] + runs["trial"], runs
    assert runs["trial"] == ["FINISHED", "FINISHED"], "one run per trial, continued across the three drivers"
    table = pd.read_csv(results / "ctrlc" / "table.csv")
    assert (table["runs"] == "1/1").all() and table["top1"].notna().all()


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
@pytest.mark.timeout(300)
def test_gpu_request_on_a_machine_without_one_exits_2(tmp_path):
    variants = [{"name": "TSM", "set": {"model.module": "tsm"}}]
    path, results = _spec(tmp_path, variants, "nogpu", shift_ratio=None), tmp_path / "r"
    t0 = time.time()
    proc = _sweep(path, results, "--gpus-per-trial", "1", "--cpus-per-trial", "1")
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "INFO" not in line]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines == [lines[-1]] and "--gpus-per-trial 1: no node of the Ray cluster has that much" in lines[0], lines
    assert time.time() - t0 < 120
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    assert client.get_experiment_by_name("nogpu") is None, "no parent run for a sweep that could not start"
