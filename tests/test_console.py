"""What a sweep says on its console, and how it says bad input: a quiet console (no Ray banner,
no INFO lines, no `top1 nan`), one line for a trial that fails on bad data (its traceback kept in
the trial's folder and MLflow run), a grid too large refused at once, an audio-only video named as
such, and a spec whose file name cannot name a folder run under a name derived from it."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from harness import raytrials, sweep
from harness.data import DataConfig, DataError, build_datasets
from harness.data.datasets import decode_seeking, decode_sequential

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("RAY_ADDRESS", None)


@pytest.fixture(autouse=True)
def _own_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def frames(root: Path, broken: bool = False) -> dict:
    """A two-clip Something-style frame-folder set; ``broken``: one frame is not a JPEG."""
    for i in range(2):
        folder = root / str(i)
        folder.mkdir(parents=True)
        for k in range(8):
            Image.fromarray(np.full((40, 40, 3), 20 * k + 60 * i, np.uint8)).save(folder / f"{k + 1:05d}.jpg")
    if broken:
        (root / "1" / "00003.jpg").write_bytes(b"not a jpeg")
    for split in ("train", "val"):
        (root / f"{split}.txt").write_text("0 8 0\n1 8 1\n")
    (root / "categories.txt").write_text("a\nb\n")
    return {"dataset": "something-v1", "root": str(root), "train_list": "train.txt", "val_list": "val.txt",
            "categories": "categories.txt", "input_size": 32, "workers": 0}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quiet_console_one_line_per_failure_and_a_derived_name(tmp_path):
    good, bad = frames(tmp_path / "good"), frames(tmp_path / "bad", broken=True)
    spec = {
        "base": {
            "model": {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 2, "num_frames": 4,
                      "module": "tsm", "pretrained": "none"},
            "data": good,
            # two epochs, evaluated after the second only: the first has no top1 to print
            "train": {"epochs": 2, "batch_size": 2, "warmup_epochs": 0, "eval_every": 2},
            "measure": {"input_size": 32, "latency_runs": 20, "latency_warmup": 1},
        },
        "grid": {"variants": [{"name": "good"}, {"name": "bad", "set": {"data.root": bad["root"]}}]},
        "seeds": [0],
    }
    path = tmp_path / "my Tabelle Größe.yaml"  # no name: in the spec, and the file's cannot name a folder
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "--results-dir", str(results)],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 1, console[-3000:]

    # quiet: no Ray banner, hint, INFO line or traceback; no top1 for the epoch not evaluated
    for noise in ("Configuration for experiment", "TensorBoard", "tensorboard", " INFO ", "Traceback",
                  "View detailed results", "Trial task failed", "ray "):
        assert noise not in console, (noise, console)
    trial_lines = [line for line in proc.stdout.splitlines() if line.startswith(("[", "    "))]
    assert len(trial_lines) == 4 and not any("nan" in line for line in trial_lines), trial_lines  # 2 epochs, 2 ends
    assert "    good seed=0: epoch 1 loss " in proc.stdout
    epoch1 = next(line for line in proc.stdout.splitlines() if "good seed=0: epoch 1 " in line)
    epoch2 = next(line for line in proc.stdout.splitlines() if "good seed=0: epoch 2 " in line)
    assert "top1" not in epoch1 and " top1 " in epoch2
    # the table's rounding rule (reports.render.cell) on every line: top1 to 0.1, as in table.md
    done = next(line for line in proc.stdout.splitlines() if " done good seed=0: " in line)
    top1 = pd.read_csv(results / "my_Tabelle_Gro_e" / "table.csv").set_index("variant").loc["good", "top1"]
    assert f"top1 {top1:.1f}, " in done and f"top1 {top1:.1f}" in epoch2, (done, epoch2, top1)

    # the derived name, said once, names the results folder and the MLflow experiment
    said = [line for line in proc.stdout.splitlines() if "cannot name a results folder" in line]
    assert len(said) == 1 and "'my_Tabelle_Gro_e'" in said[0], proc.stdout
    assert (results / "my_Tabelle_Gro_e" / "table.csv").is_file()

    # the failed trial: one line naming it and the file; its traceback in the trial's folder and run
    broken = str(tmp_path / "bad" / "1" / "00003.jpg")
    failed = [line for line in proc.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith("[") and " FAILED bad seed=0: " in failed[0], proc.stdout
    assert f"DataError: {broken}: cannot read frame" in failed[0]
    error_txt = Path(failed[0].split("traceback in ")[1].split(" (")[0])
    kept = error_txt.read_text()  # Ray's: the worker's frames down to the reader that raised
    assert "in read_jpegs_reference" in kept and f"DataError: {broken}" in kept
    assert "1 trial(s) failed:" in proc.stderr and f"bad seed=0: harness.data.config.DataError: {broken}" in proc.stderr

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("my_Tabelle_Gro_e")
    runs = {r.data.tags["variant"]: r for r in client.search_runs([exp.experiment_id], "tags.kind = 'trial'")}
    assert runs["good"].info.status == "FINISHED" and runs["bad"].info.status == "FAILED"
    assert runs["bad"].data.tags["error"].startswith(f"DataError: {broken}")
    text = Path(client.download_artifacts(runs["bad"].info.run_id, "traceback.txt", str(tmp_path))).read_text()
    assert text.startswith("Traceback") and f"DataError: {broken}: cannot read frame" in text


def test_ray_log_records_are_one_line_each_and_no_info():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("ray %(levelname)s: %(message)s"))
    handler.addFilter(raytrials.OneLine())
    log = logging.getLogger("ray.tune.test_console")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("Started a local Ray instance.")
        try:
            raise RuntimeError("the GCS went away\n  at some address")
        except RuntimeError:
            log.exception("Could not reach the cluster\nmore detail")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("Trial task failed for trial tune_trainable_00000")  # the sweep prints its own
        log.warning("Tune detects GPUs, but no trials are using GPUs.")
    finally:
        log.removeHandler(handler)
    assert out.getvalue().splitlines() == [
        "ray ERROR: Could not reach the cluster: at some address",
        "ray WARNING: Tune detects GPUs, but no trials are using GPUs."]


def test_a_huge_grid_is_refused_at_once_with_its_count(tmp_path, capsys):
    spec = {"name": "huge", "base": {
        "model": {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 4, "num_frames": 4, "module": "tsm"},
        "data": {"dataset": "synthetic", "num_classes": 4, "train_size": 32, "val_size": 16, "frame_size": 32,
                 "input_size": 32},
        "train": {"epochs": 1, "batch_size": 16}, "measure": {"input_size": 32}},
        "grid": {"variants": [{"name": "a"}, {"name": "b", "set": {"train.epochs": 2}}],
                 "axes": {"train.lr": [round(0.001 * (i + 1), 3) for i in range(400)],
                          "train.weight_decay": [i * 1e-6 for i in range(400)]}},
        "seeds": [0]}
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(spec))
    t0 = time.time()
    rc = sweep.main([str(path), "--results-dir", str(tmp_path / "r"), "--dry-run"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert time.time() - t0 < 10
    assert rc == 2 and len(err) == 1, err
    assert "320,000 trials (2 variants x 400 train.lr x 400 train.weight_decay x 1 seeds)" in err[0]
    assert "limit of 10,000" in err[0] and "--max-trials 320000" in err[0]
    assert not (tmp_path / "r" / "huge").exists()
    # the limit is a flag, in --help; a grid under it runs as before
    with pytest.raises(SystemExit):
        sweep.parse_args(["--help"])
    assert "--max-trials" in capsys.readouterr().out
    spec["grid"]["axes"] = {"train.lr": [0.01, 0.02]}
    path.write_text(yaml.safe_dump(spec))
    assert sweep.main([str(path), "--results-dir", str(tmp_path / "r"), "--dry-run", "--max-trials", "4"]) == 0
    assert sweep.main([str(path), "--results-dir", str(tmp_path / "r"), "--dry-run", "--max-trials", "3"]) == 2
    assert "4 trials" in capsys.readouterr().err


def write_audio(path: Path) -> None:
    """A real audio-only file: one second of a tone in AAC, no video stream."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        tone = (0.2 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)[None]
        for start in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(tone[:, start:start + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("suffix", ["mp4", "m4a"])
def test_an_audio_only_file_says_it_has_no_video_stream(tmp_path, suffix):
    root = tmp_path / "kinetics400"
    (root / "videos").mkdir(parents=True)
    audio = root / "videos" / f"talk.{suffix}"
    write_audio(audio)
    with av.open(str(audio)) as probe:
        assert not probe.streams.video and probe.streams.audio
    (root / "train.txt").write_text(f"videos/talk.{suffix} 0\n")
    (root / "val.txt").write_text(f"videos/talk.{suffix} 0\n")
    (root / "categories.txt").write_text("talking\n")
    cfg = DataConfig(dataset="kinetics400", root=str(root), train_list="train.txt", val_list="val.txt",
                     categories="categories.txt")
    clips = [np.linspace(0, 1, 4, endpoint=False)]
    assert decode_seeking(audio, clips) is None  # anything irregular goes to the sequential decoder
    with pytest.raises(DataError) as caught:
        decode_sequential(audio, clips)
    assert str(caught.value) == f"{audio}: no video stream (only audio)"
    train, val = build_datasets(cfg, 4)
    for dataset in (train, val):
        with pytest.raises(DataError, match="no video stream"):
            dataset[0]
