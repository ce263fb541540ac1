"""What the sweep checks before any trial starts, through its real entry point in this process
(``--dry-run`` stops before Ray): the results dir, the tracking store, the lock, the data, and
runs left RUNNING by a dead driver. A real MLflow sqlite store throughout; no Ray here."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from harness import preflight, resources, sweep, tracking

ROOT = Path(__file__).resolve().parent.parent
SMALL = {
    "model": {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 4, "num_frames": 4, "module": "tsm"},
    "data": {"dataset": "synthetic", "num_classes": 4, "train_size": 32, "val_size": 16, "frame_size": 32,
             "input_size": 32},
    "train": {"epochs": 1, "batch_size": 16},
    "measure": {"input_size": 32},
}


@pytest.fixture(autouse=True)
def _own_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def spec_file(tmp_path: Path, name: str = "guard", **over) -> Path:
    content = {"name": name, "base": SMALL, "seeds": [0], **over}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def run(capsys, *argv) -> tuple[int, list[str], str]:
    rc = sweep.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, [line for line in err.splitlines() if line.strip()], out


def refused(capsys, *argv, needles=()) -> str:
    rc, lines, out = run(capsys, *argv)
    assert rc == 2 and len(lines) == 1, (rc, lines, out[-500:])
    assert lines[0].startswith("harness.sweep: error: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# --- the results dir --------------------------------------------------------------------------

def test_results_dir_that_is_a_file_or_cannot_be_made(tmp_path, capsys):
    spec = spec_file(tmp_path)
    (tmp_path / "file").write_text("x")
    refused(capsys, spec, "--results-dir", tmp_path / "file", "--dry-run", needles=["exists and is not a folder"])
    refused(capsys, spec, "--results-dir", tmp_path / "file" / "sub", "--dry-run", needles=["cannot create it"])
    # sysfs is read-only even for root, for whom a chmod'ed folder is still writable
    refused(capsys, spec, "--results-dir", "/sys", "--dry-run", needles=["--results-dir /sys: cannot write in it"])
    refused(capsys, spec, "--results-dir", "/sys/no/such", "--dry-run", needles=["cannot create it"])


@pytest.mark.parametrize("odd", ["a?b", "100%", "x%20y"])
def test_results_dir_chars_a_sqlite_uri_cannot_carry_are_refused(tmp_path, capsys, odd):
    line = refused(capsys, spec_file(tmp_path), "--results-dir", tmp_path / odd, "--dry-run",
                   needles=["sqlite URI cannot carry"])
    assert line.split("holds ")[1].startswith({"a?b": "'?',", "100%": "'%',", "x%20y": "'%',"}[odd]), line
    assert not (tmp_path / odd).exists()


def test_results_dir_with_spaces_keeps_the_store_inside(tmp_path, capsys):
    results = tmp_path / "my results" / "run 1"
    rc, lines, out = run(capsys, spec_file(tmp_path), "--results-dir", results, "--dry-run")
    assert rc == 0, lines
    assert (results / "mlflow.db").is_file() and "1 to run" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guard.yaml", "my results"]


# --- the tracking store -----------------------------------------------------------------------

def test_unreachable_tracking_uri_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    refused(capsys, spec_file(tmp_path), "--results-dir", tmp_path / "r", "--dry-run",
            needles=[f"tracking store http://127.0.0.1:{port} does not answer"])
    assert time.perf_counter() - t0 < 10


def test_tracking_server_that_never_answers_times_out(tmp_path, capsys, monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # accepts connections (the kernel does) but never replies
    monkeypatch.setattr(tracking, "PROBE_TIMEOUT_S", 1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.getsockname()[1]}")
    t0 = time.perf_counter()
    try:
        refused(capsys, spec_file(tmp_path), "--results-dir", tmp_path / "r", "--dry-run",
                needles=["does not answer", "waited up to 1 s"])
    finally:
        server.close()
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("uri", ["foo://bar", "sqlite:////sys/nope/mlflow.db", "mysql://u@127.0.0.1:1/db"])
def test_tracking_uri_mlflow_rejects_is_one_line(tmp_path, capsys, monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    refused(capsys, spec_file(tmp_path), "--results-dir", tmp_path / "r", "--dry-run",
            needles=[f"tracking store {uri}: "])


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
def test_two_drivers_on_a_fresh_store_both_start(tmp_path):
    results = tmp_path / "fresh"
    specs = [spec_file(tmp_path, f"s{i}") for i in range(3)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-m", "harness.sweep", str(s), "--results-dir", str(results),
                               "--dry-run"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for s in specs]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-2000:] for _, e in outs]
    assert all("Traceback" not in e for _, e in outs)


# --- one driver per results dir and spec ------------------------------------------------------

def test_second_driver_names_the_one_holding_the_lock(tmp_path, capsys):
    spec, results = spec_file(tmp_path), tmp_path / "r"
    held = preflight.take_lock(results / "guard" / "sweep.lock")
    try:
        line = refused(capsys, spec, "--results-dir", results, "--dry-run",
                       needles=["another sweep of this spec on this results dir is running",
                                f"pid {os.getpid()} on {socket.gethostname()}", "sweep.lock"])
        assert "started 20" in line
        rc, _, _ = run(capsys, spec_file(tmp_path, "other"), "--results-dir", results, "--dry-run")
        assert rc == 0, "another spec in the same results dir has its own lock"
    finally:
        held.close()
    assert run(capsys, spec, "--results-dir", results, "--dry-run")[0] == 0, "the lock ends with its holder"


# --- runs a dead driver left RUNNING ----------------------------------------------------------

def test_runs_left_running_by_a_dead_driver_are_closed(tmp_path, capsys):
    spec, results = spec_file(tmp_path), (tmp_path / "r").resolve()
    client = MlflowClient(tracking.tracking_uri(results))
    exp = tracking.experiment_id(client, "guard")

    def sweep_run(folder):
        parent = tracking.start_parent(client, "guard", {"results_dir": str(folder)})
        child = client.create_run(exp, tags={"kind": "trial", "mlflow.parentRunId": parent}).info.run_id
        return parent, child

    dead = sweep_run(results)
    other = sweep_run(tmp_path / "elsewhere")  # another results dir: its driver may be alive
    finished_parent, orphan = sweep_run(results)
    client.set_terminated(finished_parent)  # the parent ended, its trial's run did not
    rc, _, out = run(capsys, spec, "--results-dir", results, "--dry-run")
    assert rc == 0 and "closed 3 run(s) left RUNNING" in out, out
    status = {r: client.get_run(r).info.status for r in (*dead, *other, finished_parent, orphan)}
    assert [status[r] for r in dead] == ["KILLED", "KILLED"] and status[orphan] == "KILLED"
    assert [status[r] for r in other] == ["RUNNING", "RUNNING"] and status[finished_parent] == "FINISHED"


# --- the data, once, in the driver ------------------------------------------------------------

def frames_dataset(tmp_path: Path, listed: int = 12, held: int = 12) -> dict:
    root = tmp_path / "ss"
    for i in range(2):
        folder = root / str(i)
        folder.mkdir(parents=True)
        for k in range(held):
            Image.fromarray(np.full((8, 8, 3), 10 * k, np.uint8)).save(folder / f"{k + 1:05d}.jpg")
    (root / "train.txt").write_text(f"0 {listed} 0\n1 {held} 1\n")
    (root / "val.txt").write_text(f"0 {held} 0\n1 {held} 1\n")
    (root / "categories.txt").write_text("a\nb\n")
    return {"dataset": "something-v1", "root": str(root), "train_list": "train.txt", "val_list": "val.txt",
            "categories": "categories.txt"}


def test_data_is_checked_once_in_the_driver_before_any_trial(tmp_path, capsys, monkeypatch):
    from harness import data

    calls = []
    real = data.check_data
    monkeypatch.setattr(data, "check_data", lambda cfg, n: calls.append(n) or real(cfg, n))
    base = {**SMALL, "model": {**SMALL["model"], "num_classes": 2}, "data": frames_dataset(tmp_path, listed=4)}
    variants = [{"name": m, "set": {"model.module": m}} for m in ("tsm", "gsf", "stsm")]
    spec = spec_file(tmp_path, base=base, grid={"variants": variants}, seeds=[0, 1])
    refused(capsys, spec, "--results-dir", tmp_path / "r", needles=[
        str(spec), "data of 'tsm seed=0'", str(tmp_path / "ss" / "0"), "listed with 4 frames",
        "train.txt:1", "holds 12"])
    assert calls == [2], "six trials share one data config: one check"
    assert not (tmp_path / "r" / "ray").exists(), "nothing started"
    (tmp_path / "ss" / "train.txt").write_text("0 12 0\n1 12 1\n")
    calls.clear()
    assert run(capsys, spec, "--results-dir", tmp_path / "r", "--dry-run")[0] == 0 and calls == [2]
    assert run(capsys, spec, "--results-dir", tmp_path / "r", "--dry-run", "--measure-only")[0] == 0
    assert calls == [2], "measuring needs no data"


def test_model_classes_against_the_data_before_any_trial(tmp_path, capsys):
    base = {**SMALL, "model": {**SMALL["model"], "num_classes": 7}}
    refused(capsys, spec_file(tmp_path, base=base), "--results-dir", tmp_path / "r",
            needles=["model.num_classes is 7 but data.num_classes is 4"])
    base = {**SMALL, "data": frames_dataset(tmp_path)}
    refused(capsys, spec_file(tmp_path, base=base), "--results-dir", tmp_path / "r",
            needles=[str(tmp_path / "ss" / "categories.txt"), "2 classes, but model.num_classes is 4"])


def test_ctrl_c_before_the_trials_start_exits_130(tmp_path, capsys, monkeypatch):
    from harness import data

    def interrupted(cfg, n):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "check_data", interrupted)
    rc, lines, _ = run(capsys, spec_file(tmp_path), "--results-dir", tmp_path / "r")
    assert rc == 130 and lines == ["harness.sweep: interrupted before any trial started; nothing ran"]


# --- resource requests ------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--cpus-per-trial", "nan"), ("--cpus-per-trial", "inf"),
                                        ("--cpus-per-trial", "-1"), ("--gpus-per-trial", "nan"),
                                        ("--gpus-per-trial", "-inf")])
def test_resource_flags_must_be_finite(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        sweep.main([str(spec_file(tmp_path)), f"{flag}={value}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert info.value.code == 2 and len(lines) == 1 and flag in lines[0] and value in lines[0]


def test_requests_no_node_can_grant_are_named():
    nodes = [{"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert resources.unschedulable(nodes, 2, 0) is None and resources.unschedulable(nodes, 8, 1) is None
    msg = resources.unschedulable(nodes, 100, 0)
    assert "--cpus-per-trial 100" in msg and "2 CPUs, 0 GPUs; 8 CPUs, 1 GPUs" in msg
    assert "no trial could ever start" in resources.unschedulable(nodes, 4, 2)
    assert "no live node" in resources.unschedulable([], 1, 0)
