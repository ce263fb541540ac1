"""A trial re-run after its driver died between the last checkpoint and closing its run: the
checkpoint already holds every epoch, and the new run must still carry the result (real MLflow)."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from harness.spec import TrialConfig
from harness.trial import run_trial

CONFIG = {
    "model": {"backbone": "resnet18", "width_mult": 0.125, "module": "tsm", "num_classes": 4, "num_frames": 4,
              "shift_ratio": 0.5},
    "data": {"dataset": "synthetic", "num_classes": 4, "train_size": 16, "val_size": 8, "frame_size": 32,
             "input_size": 32},
    "train": {"epochs": 2, "batch_size": 8, "warmup_epochs": 0},
    "measure": {"input_size": 32, "flops": False, "latency": False},
}


def test_rerun_of_a_trial_whose_checkpoint_is_complete_logs_its_result(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {**TrialConfig.model_validate(CONFIG).model_dump(mode="json"), "seed": 0}
    job = {"config": config, "hash": "h", "label": "t seed=0", "spec": "rerun", "tracking_uri": uri,
           "results_dir": str(tmp_path), "measure_only": False}
    first = run_trial(job)
    again = run_trial(job)  # the same checkpoint folder: nothing left to train
    assert again["top1"] == first["top1"]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("rerun").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    for run in runs:
        assert run.data.metrics["top1"] == first["top1"], run.data.metrics
