"""The paper path end to end at full size, from the official download: a Something-Something-V1
download in its official layout (real 176x100 JPEGs, the labels/train/validation CSVs, 174
classes) and an ImageNet weights file in the layout the authors' code downloads go through
``python -m harness.prepare``; then the shipped ``paper`` profile, unchanged but for its train
settings, reads them where it expects them (``data/something-v1``, ``model.pretrained: imagenet``)
with its real model (8 frames, 224 px, 174 classes): one training iteration and one evaluation
under bf16 autocast (the CPU stand-in for fp16 on a GPU) through ``harness.trial.run_trial``
with a real MLflow store. ``make test-slow``.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from harness.spec import load_spec
from harness.tracking import open_store
from harness.trial import run_trial

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 174


def something_v1_download(root: Path, videos: int, frames: int = 12) -> None:
    """The official SS-V1 download: ``20bn-something-something-v1/<id>/00001.jpg`` (176x100),
    ``something-something-v1-labels.csv`` (174 names, not in sorted order) and the train and
    validation CSVs (``id;name``)."""
    rng = np.random.default_rng(0)
    names = [f"Doing thing number {(61 * i) % CLASSES}" for i in range(CLASSES)]
    lines = []
    for v in range(videos):
        folder = root / "20bn-something-something-v1" / str(1000 + v)
        folder.mkdir(parents=True)
        for k in range(frames):
            pixels = rng.integers(0, 256, (100, 176, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{k + 1:05d}.jpg", quality=90)
        lines.append(f"{1000 + v};{names[(37 * v) % CLASSES]}")
    (root / "something-something-v1-labels.csv").write_text("\n".join(names) + "\n")
    (root / "something-something-v1-train.csv").write_text("\n".join(lines) + "\n")
    (root / "something-something-v1-validation.csv").write_text("\n".join(lines[:2]) + "\n")


def something_v1(root: Path, videos: int, frames: int = 12) -> dict[str, str]:
    """An official SS-V1 download under ``root/download``, prepared into ``root/something-v1``:
    the ``data`` keys that read it (absolute paths)."""
    something_v1_download(root / "download", videos, frames)
    prepare("something-v1", "--source", root / "download", "--out", root / "something-v1", cwd=root)
    return {"root": str(root / "something-v1"), "train_list": "train_videofolder.txt",
            "val_list": "val_videofolder.txt", "categories": "category.txt"}


def imagenet_file(backbone: str, path: Path) -> None:
    """Random weights in the layout of the file the authors' code downloads: TSN's Caffe-converted
    BN-Inception (BatchNorm tensors (1, C), an ImageNet ``fc``), torchvision's ResNet-50."""
    if backbone == "resnet50":
        import torchvision

        torch.save(torchvision.models.resnet50().state_dict(), path)
        return
    from gsf.backbones.bninception import BNInception, caffe_state_dict

    state = {k: v.unsqueeze(0) if "_bn." in k and v.dim() == 1 else v
             for k, v in caffe_state_dict(BNInception()).items() if not k.endswith("num_batches_tracked")}
    torch.save(state | {"fc.weight": torch.zeros(1000, 1024), "fc.bias": torch.zeros(1000)}, path)


def prepare(*args, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "harness.prepare", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stem,variant,gflops", [("table2_bninception_shift_ratio", "100%", 16.53),
                                                 ("table4_resnet50_shift_ratio", "25%", 33.4)])
def test_paper_profile_trains_and_evaluates_at_full_size(tmp_path, stem, variant, gflops):
    batch = 2
    something_v1_download(tmp_path / "download", videos=batch)
    backbone = "bninception" if "bninception" in stem else "resnet50"
    imagenet_file(backbone, tmp_path / "imagenet.pth")
    # What a user runs, from the folder the sweep will run in: the data and the weights, prepared.
    prepare("something-v1", "--source", tmp_path / "download", cwd=tmp_path)
    prepare("weights", backbone, "--from", tmp_path / "imagenet.pth", cwd=tmp_path)
    spec = load_spec(ROOT / "ablations" / f"{stem}.yaml", profile="paper", cwd=tmp_path)
    trial = next(t for t in spec.trials if t.variant == variant)
    config = dict(trial.config)
    assert config["model"]["module"] == "gsf" and config["model"]["num_frames"] == 8
    assert config["model"]["num_classes"] == CLASSES and config["measure"]["input_size"] == 224
    assert config["model"]["pretrained"] == str(tmp_path / "data" / "weights" / f"{backbone}_imagenet.pth")
    assert config["data"]["normalize"] == ("caffe_bgr" if backbone == "bninception" else "imagenet")
    assert config["train"]["device"] == "cuda", "the paper profile asks for a GPU"
    # Here on the CPU, as --device cpu runs it; bf16 autocast stands in for CUDA's fp16.
    config["train"] = {**config["train"], "amp": "bf16", "batch_size": batch, "epochs": 1,
                       "max_batches_per_epoch": 1, "device": "cpu"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_store(uri)
    job = {"config": config, "hash": trial.hash, "label": trial.label, "spec": spec.name,
           "tracking_uri": uri, "results_dir": str(tmp_path / "results"), "measure_only": False}
    t0 = time.perf_counter()
    checkpoints = []  # what Ray Tune would copy to the sweep's storage after each epoch
    result = run_trial(job, report=lambda metrics, checkpoint_dir=None: checkpoint_dir and checkpoints.append(
        sorted(p.name for p in checkpoint_dir.iterdir())))
    print(f"{stem} {variant}: run_trial {time.perf_counter() - t0:.0f} s")
    assert math.isfinite(result["train_loss"]) and 0 <= result["top1"] <= 100
    assert result["epochs"] == 1 and math.isfinite(result["val_loss"])
    assert result["GFLOPs"] == pytest.approx(gflops, rel=0.015) and result["latency_ms"] > 0
    (run,) = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    shown = run.data.metrics["top1"]  # MLflow shows accuracies to 0.01 (reports.runs.readable)
    assert run.info.status == "FINISHED" and shown == pytest.approx(result["top1"], abs=0.005)
    assert run.data.tags["init"] == f"pretrained {backbone}_imagenet.pth"
    assert checkpoints == [["last.pt", "meta.json"]], checkpoints
