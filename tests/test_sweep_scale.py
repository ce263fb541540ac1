"""The paper's run at real scale (issue 9), through the real entry point with a real Ray and real
MLflow stores: relative paths in a spec and in MLFLOW_TRACKING_URI, a trial whose MLflow writes
go to another store, --fresh with a storage outside the results dir, and what a run says about
where it ran. The two-node cluster with a node killed mid-epoch is in test_cluster_node_loss.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from cluster import ENV, ROOT, Processes, can_unshare, free_port, in_namespace, mlflow_server, ray_node, wait_for_http

SMALL_MODEL = {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 3, "num_frames": 4, "module": "tsm"}
MEASURE = {"input_size": 32, "latency_runs": 20, "latency_warmup": 1}


def sweep(spec: Path, *args: str, cwd: Path = ROOT, env: dict | None = None, wrap=None, timeout: int = 600):
    command = [sys.executable, "-m", "harness.sweep", str(spec), *args]
    return subprocess.run(wrap(command) if wrap else command, capture_output=True, text=True, cwd=cwd,
                          env=env or ENV, timeout=timeout)


def write_something(root: Path, videos: int = 6, frames: int = 8) -> None:
    """A Something-Something V1 folder of real JPEGs: frames/<id>/00001.jpg..., lists, categories."""
    rng = np.random.default_rng(0)
    lines = []
    for v in range(videos):
        folder = root / "frames" / str(v)
        folder.mkdir(parents=True)
        for k in range(frames):
            Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(folder / f"{k + 1:05d}.jpg")
        lines.append(f"frames/{v} {frames} {v % 3}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("\n".join(lines[:3]) + "\n")
    (root / "categories.txt").write_text("a\nb\nc\n")


def trial_runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], "tags.kind = 'trial'") if exp else []


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
@pytest.mark.timeout(600)
def test_relative_data_root_and_sqlite_uri_are_the_command_directorys(tmp_path):
    """The shipped paper profiles say root: data/something-v1; a Ray trial runs in a folder of
    its own. Both paths resolve in the driver: the trial trains, its run lands in rel.db here.
    The run also says where it ran, which code ran it, and shows progress within an epoch."""
    write_something(tmp_path / "data" / "ss")
    spec = tmp_path / "rel.yaml"
    spec.write_text(yaml.safe_dump({"name": "rel", "base": {
        "model": SMALL_MODEL,
        "data": {"dataset": "something-v1", "root": "data/ss", "train_list": "train.txt", "val_list": "val.txt",
                 "categories": "categories.txt", "input_size": 32, "scale_size": 32},
        "train": {"epochs": 1, "batch_size": 2, "warmup_epochs": 0}, "measure": MEASURE}}))
    proc = sweep(spec, "--results-dir", "results", "--cpus-per-trial", "2", "--progress-every", "0.001",
                 cwd=tmp_path, env={**ENV, "MLFLOW_TRACKING_URI": "sqlite:///rel.db"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "rel.db").is_file(), "the relative sqlite URI is the command directory's"
    (run,) = trial_runs(f"sqlite:///{tmp_path / 'rel.db'}", "rel")
    assert run.info.status == "FINISHED" and 0 <= run.data.metrics["top1"] <= 100
    assert run.data.params["data.root"] == str(tmp_path / "data" / "ss")
    table = pd.read_csv(tmp_path / "results" / "rel" / "table.csv")
    assert list(table["runs"]) == ["1/1"] and table["top1"].notna().all()
    # Where it ran and which code: the copy Ray shipped (runtime_env), not this checkout.
    tags = run.data.tags
    assert tags["host"] and tags["ray_node_id"] not in ("", "none") and tags["attempt"] == "1"
    parent = MlflowClient(f"sqlite:///{tmp_path / 'rel.db'}").get_run(tags["mlflow.parentRunId"])
    assert tags["code_digest"] == parent.data.tags["code_digest"]
    assert not tags["code_path"].startswith(str(ROOT)) and "runtime_resources" in tags["code_path"], tags["code_path"]
    assert tags["data_workers"] == "1", "--cpus-per-trial 2: one DataLoader worker beside the trainer"
    # Progress within the epoch: on the driver's stdout and in MLflow.
    progress = [line for line in proc.stdout.splitlines() if " batch " in line and "clips/s" in line]
    assert progress and "ETA " in progress[0] and "batch 1/3" in progress[0], proc.stdout[-3000:]
    history = MlflowClient(f"sqlite:///{tmp_path / 'rel.db'}").get_metric_history(run.info.run_id,
                                                                                   "progress_clips_per_s")
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_a_cluster_with_a_sqlite_store_is_refused_before_anything_starts(tmp_path):
    spec = tmp_path / "c.yaml"
    spec.write_text(yaml.safe_dump({"name": "c", "base": {"model": SMALL_MODEL}}))
    proc = sweep(spec, "--results-dir", str(tmp_path / "r"), "--address", "10.0.0.1:6379")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "a cluster needs a tracking server" in lines[0] and "MLFLOW_TRACKING_URI=http://HEAD:PORT" in lines[0]
    assert not (tmp_path / "r" / "mlflow.db").exists()


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
@pytest.mark.timeout(600)
@pytest.mark.skipif(not can_unshare(), reason="needs private mount namespaces (unshare -m, as root)")
def test_a_trial_whose_mlflow_writes_go_to_another_store_fails_the_sweep(tmp_path):
    """The worker's name for the tracking server is another server (its own /etc/hosts): before,
    the sweep exited 0 with an empty row. Now: exit 1 naming the trial and the likely cause, and
    its numbers recovered from Ray's results into the driver's store."""
    procs = Processes()
    port, ray_port = free_port(), free_port()
    hosts = {}
    for side, ip in (("driver", "127.0.0.1"), ("worker", "127.0.0.2")):
        hosts[side] = tmp_path / f"hosts-{side}"
        hosts[side].write_text(f"127.0.0.1 localhost\n{ip} mlflow-head\n")
    try:
        servers = {ip: mlflow_server(procs, ip, port, tmp_path / f"server-{ip}", f"mlflow-head:{port},localhost:*")
                   for ip in ("127.0.0.1", "127.0.0.2")}
        ray_node(procs, tmp_path / "head.log", ray_port, head=True, cpus=1,
                 wrap=lambda c: in_namespace(c, hosts=hosts["worker"]))
        for ip, server in servers.items():
            wait_for_http(f"http://{ip}:{port}/health", server)
        spec = tmp_path / "astray.yaml"
        spec.write_text(yaml.safe_dump({"name": "astray", "base": {
            "model": {**SMALL_MODEL, "num_classes": 4}, "data": {"num_classes": 4}, "measure": MEASURE}}))
        uri = f"http://mlflow-head:{port}"
        proc = sweep(spec, "--results-dir", str(tmp_path / "results"), "--measure-only", "--address",
                     f"127.0.0.1:{ray_port}", env={**ENV, "MLFLOW_TRACKING_URI": uri},
                     wrap=lambda c: in_namespace(c, hosts=hosts["driver"]))
    finally:
        procs.stop_all()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "writes to a tracking store that is not the driver's" in proc.stderr, "warned as soon as it reported"
    failure = proc.stderr.split("1 trial(s) failed:")[1]
    assert "seed=0: finished on " in failure and "is not in the driver's store " + uri in failure
    assert "could not reach that tracking store" in failure and "recovered from Ray's results" in failure
    driver_store = MlflowClient(f"sqlite:///{tmp_path / 'server-127.0.0.1' / 'mlflow.db'}")
    worker_store = f"sqlite:///{tmp_path / 'server-127.0.0.2' / 'mlflow.db'}"
    (own,) = trial_runs(worker_store, "astray")
    assert own.info.status == "FINISHED", "the trial wrote its run, to the wrong store"
    exp = driver_store.get_experiment_by_name("astray")
    (recovered,) = driver_store.search_runs([exp.experiment_id], "tags.kind = 'trial'")
    assert recovered.data.tags["recovered_from"].startswith("Ray Tune results")
    for key in ("params_M", "GFLOPs", "latency_ms"):
        assert recovered.data.metrics[key] == pytest.approx(own.data.metrics[key], rel=1e-4), key
    assert recovered.data.tags["trial_hash"] == own.data.tags["trial_hash"]
    table = pd.read_csv(tmp_path / "results" / "astray" / "table.csv")
    assert list(table["runs"]) == ["1/1"] and table["params_M"].notna().all()


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
@pytest.mark.timeout(600)
def test_fresh_retrains_everything_and_deletes_the_checkpoints_in_storage(tmp_path):
    spec = tmp_path / "fresh.yaml"
    spec.write_text(yaml.safe_dump({"name": "fresh", "base": {
        "model": {**SMALL_MODEL, "num_classes": 4},
        "data": {"dataset": "synthetic", "num_classes": 4, "train_size": 32, "val_size": 16, "frame_size": 32,
                 "input_size": 32},
        "train": {"epochs": 2, "batch_size": 16, "warmup_epochs": 0}, "measure": MEASURE}}))
    results, shared = tmp_path / "results", tmp_path / "shared storage"
    args = ("--results-dir", str(results), "--storage", str(shared))
    first = sweep(spec, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    checkpoints = sorted(shared.glob("fresh/sweep-*/*/checkpoint_*/last.pt"))
    assert len(checkpoints) == 1 and not (results / "ray").exists(), "checkpoints go to --storage"
    assert "0 to run" in sweep(spec, *args).stdout
    again = sweep(spec, *args, "--fresh")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "--fresh: deleted the checkpoints of 1 trial folder(s)" in again.stdout
    assert ": epoch 1 " in again.stdout and ": epoch 2 " in again.stdout, "trained from the first epoch"
    assert not any(p.exists() for p in checkpoints)
    runs = trial_runs(f"sqlite:///{results / 'mlflow.db'}", "fresh")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    for run in runs:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]
        assert 0 <= run.data.metrics["top1"] <= 100
