"""``ablations/table8_released.yaml`` and what it needs: evaluation-only trials (``train.epochs: 0``),
the release's input normalisation (``data.normalize``), and the whole spec through a real sweep
(local Ray, a real MLflow store) on a generated Something-Something-V1 folder (real JPEGs, list
and category files) with generated checkpoints in the release's key names and file format.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from release_models import random_release_state, save_release_checkpoint  # noqa: E402
from test_paper_path import something_v1  # noqa: E402

from gsf import build_model  # noqa: E402
from gsf.release import RELEASED  # noqa: E402
from harness.data import DataConfig, build_datasets  # noqa: E402
from harness.data import transforms as tf  # noqa: E402
from harness.spec import SpecError, load_spec  # noqa: E402
from harness.tracking import open_store  # noqa: E402
from harness.trial import run_trial  # noqa: E402
from reports.render import paper_values  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "ablations" / "table8_released.yaml"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("RAY_ADDRESS", None)
# variant -> the paper's Table 8 top-1 on Something-V1 (16 frames)
PAPER = {"BNInception 1x1": 50.63, "BNInception 2x3": 51.51, "InceptionV3 1x1": 53.13, "InceptionV3 2x3": 54.09,
         "ResNet-50 1x1": 51.54, "ResNet-50 2x3": 52.33}


def test_spec_rows_are_the_released_models():
    spec = load_spec(SPEC)
    assert spec.profile == "paper" and [t.variant for t in spec.trials] == list(PAPER)
    paper = pd.read_csv(spec.paper_table)
    for trial in spec.trials:
        model, data = trial.config["model"], trial.config["data"]
        assert model["release_checkpoint"] and model["layout"] == "release" and model["num_frames"] == 16
        assert trial.config["train"]["epochs"] == 0 and data["dataset"] == "something-v1"
        released = RELEASED[model["backbone"]]
        assert data["normalize"] == released.normalize
        assert (data["input_size"] or 224) == trial.config["measure"]["input_size"] == released.input_size
        assert data["protocol"] == ("efficiency" if trial.variant.endswith("1x1") else "accuracy")
        assert paper_values(paper, trial.paper_row)["paper_top1_ssv1"] == PAPER[trial.variant]


def test_released_weights_need_their_normalisation(tmp_path):
    text = SPEC.read_text().replace("data.normalize: caffe_bgr, data.input_size: 229",
                                    "data.normalize: imagenet, data.input_size: 229")
    (tmp_path / "t8.yaml").write_text(text)
    with pytest.raises(SpecError, match="expect 'caffe_bgr' input"):
        load_spec(tmp_path / "t8.yaml")


def test_caffe_bgr_normalisation_of_a_real_jpeg(tmp_path):
    """One solid-colour JPEG frame: "caffe_bgr" gives B - 104, G - 117, R - 128 on the 0-255 scale
    (the release's Stack(roll=True) + GroupNormalize without div), "imagenet" (RGB/255 - mean)/std."""
    folder = tmp_path / "1"
    folder.mkdir()
    rgb = (200, 100, 30)
    for k in range(4):
        Image.fromarray(np.full((100, 176, 3), rgb, dtype=np.uint8)).save(folder / f"{k + 1:05d}.jpg", quality=95)
    (tmp_path / "list.txt").write_text("1 4 0\n")
    (tmp_path / "cat.txt").write_text("a\nb\n")
    views = {}
    for mode in ("caffe_bgr", "imagenet"):
        cfg = DataConfig(dataset="something-v1", root=tmp_path, train_list="list.txt", val_list="list.txt",
                         categories="cat.txt", normalize=mode)
        views[mode] = tf.normalise(build_datasets(cfg, num_frames=2)[1][0][0].float(), mode)  # (V, T, 3, S, S)
    got = views["caffe_bgr"].mean(dim=(0, 1, 3, 4))
    torch.testing.assert_close(got, torch.tensor([30 - 104.0, 100 - 117.0, 200 - 128.0]), atol=2.0, rtol=0)
    expected = (torch.tensor(rgb, dtype=torch.float) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    torch.testing.assert_close(views["imagenet"].mean(dim=(0, 1, 3, 4)), expected, atol=0.04, rtol=0)
    frames = torch.arange(6.0).view(1, 3, 1, 2)  # R = 0 1, G = 2 3, B = 4 5
    assert tf.normalise(frames, "caffe_bgr").flatten().tolist() == [-100, -99, -115, -114, -128, -127]


def test_evaluation_only_trial_evaluates_the_model_as_built(tmp_path):
    """train.epochs 0: no training step, no optimiser, no checkpoint; top-1/top-5 of the model as built."""
    config = {"model": {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 4, "num_frames": 2},
              "data": {"dataset": "synthetic", "num_classes": 4, "train_size": 8, "val_size": 12, "frame_size": 32},
              "train": {"epochs": 0, "batch_size": 4}, "measure": {"input_size": 32, "latency": False}, "seed": 3}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_store(uri)
    job = {"config": config, "hash": "evalonly", "label": "eval", "spec": "evalonly", "tracking_uri": uri,
           "results_dir": str(tmp_path / "results"), "measure_only": False}
    result = run_trial(job)
    assert result["epochs"] == 0 and "train_loss" not in result
    assert not (tmp_path / "results" / "evalonly" / "checkpoints").exists()
    # The same evaluation by hand: the seed's initialisation, the validation views, softmax mean.
    from harness.spec import TrialConfig
    from harness.train import evaluate

    cfg = TrialConfig.model_validate({k: v for k, v in config.items() if k != "seed"})
    torch.manual_seed(3)
    model = build_model(cfg.model)
    _, val = build_datasets(cfg.data, num_frames=2, seed=3)
    loader = torch.utils.data.DataLoader(val, batch_size=4)
    expected = evaluate(model, loader, torch.device("cpu"), False, record_gates=False)
    assert result["top1"] == expected["top1"] and result["top5"] == expected["top5"]
    (run,) = client.search_runs([client.get_experiment_by_name("evalonly").experiment_id])
    shown = run.data.metrics["top1"]  # MLflow shows accuracies to 0.01 (reports.runs.readable)
    assert run.info.status == "FINISHED" and shown == pytest.approx(result["top1"], abs=0.005)
    assert "train_loss" not in run.data.metrics and run.data.metrics["epochs"] == 0


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
@pytest.mark.timeout(900)
def test_table8_spec_runs_through_a_sweep(tmp_path):
    """The shipped spec, pointed at generated files (2 frames per clip instead of 16, no latency
    timing, to keep it short), through ``python -m harness.sweep`` with a local Ray."""
    data = something_v1(tmp_path / "data", videos=2, frames=8)
    checkpoints = {}
    for i, backbone in enumerate(("bninception", "inception_v3", "resnet50")):
        checkpoints[backbone] = tmp_path / f"{backbone}.pth.tar"
        save_release_checkpoint(checkpoints[backbone], backbone, random_release_state(backbone, seed=i))
    spec = yaml.safe_load(SPEC.read_text())
    spec["base"]["data"].update(data)
    spec["base"]["model"]["num_frames"] = 2
    spec["base"]["measure"]["latency"] = False
    for variant in spec["grid"]["variants"]:
        variant["set"]["model.release_checkpoint"] = str(checkpoints[variant["set"]["model.backbone"]])
    path = tmp_path / "table8_released.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    results = tmp_path / "results"
    # Its paper profile asks for CUDA (train.device); on this CPU machine it runs as a user would make it.
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "--results-dir", str(results),
                           "--device", "cpu"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=850)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout)
    assert "6 to run" in proc.stdout and "[6/6]" in proc.stdout

    table = pd.read_csv(results / "table8_released" / "table.csv").set_index("variant")
    assert list(table.index) == list(PAPER)
    assert table["paper_top1_ssv1"].to_dict() == PAPER
    for col in ("top1", "top5", "params_M", "GFLOPs"):
        assert table[col].notna().all(), col
    assert ((table["top1"] >= 0) & (table["top1"] <= table["top5"]) & (table["top5"] <= 100)).all()
    assert table.loc["ResNet-50 1x1", "params_M"] == pytest.approx(23.97, rel=0.01)  # the released network
    assert table.loc["BNInception 1x1", "params_M"] == pytest.approx(10.5, rel=0.01)
    assert table.loc["InceptionV3 1x1", "params_M"] == pytest.approx(22.22, rel=0.01)

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("table8_released").experiment_id], "tags.kind = 'trial'")
    assert len(runs) == 6
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"top1", "top5", "val_loss", "GFLOPs"} <= run.data.metrics.keys()
        assert "train_loss" not in run.data.metrics and run.data.metrics["epochs"] == 0
        assert run.data.params["model.layout"] == "release" and run.data.params["train.epochs"] == "0"
        local = client.download_artifacts(run.info.run_id, "evaluation/predictions.json", str(tmp_path / run.info.run_id))
        predictions = json.loads(Path(local).read_text())
        # The labels of the prepared list: class names in the release's sorted order.
        labels = [int(line.split()[-1]) for line in (Path(data["root"]) / "val_videofolder.txt").read_text().splitlines()]
        assert len(predictions["predictions"]) == 2 and predictions["labels"] == labels == [0, 78]
        assert math.isfinite(run.data.metrics["val_loss"])
