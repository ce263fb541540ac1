"""A trial started from a checkpoint: a retry after its node was lost, or a later sweep after its
driver died between the last checkpoint and closing its run. The run it continues, or a new one
in another store, ends with every epoch and the result (real MLflow, real Ray Tune checkpoints)."""
from __future__ import annotations

import shutil

import pytest
from mlflow.tracking import MlflowClient
from ray.tune import Checkpoint

from harness.spec import TrialConfig
from harness.trial import run_trial

CONFIG = {
    "model": {"backbone": "resnet18", "width_mult": 0.125, "module": "tsm", "num_classes": 4, "num_frames": 4},
    "data": {"dataset": "synthetic", "num_classes": 4, "train_size": 16, "val_size": 8, "frame_size": 32,
             "input_size": 32},
    "train": {"epochs": 2, "batch_size": 8, "warmup_epochs": 0},
    "measure": {"input_size": 32, "flops": False, "latency": False},
}


def _job(tmp_path, store: str) -> dict:
    config = {**TrialConfig.model_validate(CONFIG).model_dump(mode="json"), "seed": 0}
    return {"config": config, "hash": "h", "label": "t seed=0", "spec": "rerun", "measure_only": False,
            "tracking_uri": f"sqlite:///{tmp_path / store}", "results_dir": str(tmp_path)}


def _keeping_checkpoints(folder):
    """A ``report`` that keeps each epoch's checkpoint folder, as Ray Tune copies it to storage."""
    kept = []

    def report(metrics, checkpoint_dir=None):
        if checkpoint_dir is not None:
            kept.append(shutil.copytree(checkpoint_dir, folder / f"checkpoint_{metrics['epoch']:06d}"))
    return report, kept


def _trial_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("rerun").experiment_id])


def test_a_complete_checkpoint_gives_the_result_and_every_epoch_in_a_new_store(tmp_path):
    job = _job(tmp_path, "a.db")
    report, kept = _keeping_checkpoints(tmp_path)
    first = run_trial(job, report=report)
    assert [c.name for c in kept] == ["checkpoint_000001", "checkpoint_000002"]
    # The same trial against another store, from its last checkpoint: nothing is left to train.
    other = _job(tmp_path, "b.db")
    again = run_trial(other, checkpoint=Checkpoint.from_directory(str(kept[-1])))
    assert again["top1"] == first["top1"]
    (run,) = _trial_runs(other["tracking_uri"])
    assert run.info.status == "FINISHED" and run.data.metrics["top1"] == first["top1"]
    client = MlflowClient(other["tracking_uri"])
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]


class NodeLost(Exception):
    pass


@pytest.mark.parametrize("found_by", ["this sweep's parent run", "the checkpoint's run id"])
def test_a_trial_lost_mid_run_continues_its_own_run(tmp_path, found_by):
    """Lost while reporting epoch 2 (before Ray kept its checkpoint): the retry resumes after epoch
    1 and continues the same run, which ends with each epoch once."""
    job = _job(tmp_path, "a.db")
    client = MlflowClient(job["tracking_uri"])
    if found_by == "this sweep's parent run":
        exp = client.create_experiment("rerun")
        job["parent_run_id"] = client.create_run(exp, tags={"kind": "sweep"}).info.run_id
    report, kept = _keeping_checkpoints(tmp_path)

    def lost_at_epoch_2(metrics, checkpoint_dir=None):
        if metrics.get("epoch") == 2:
            raise NodeLost
        report(metrics, checkpoint_dir)

    with pytest.raises(NodeLost):
        run_trial(job, report=lost_at_epoch_2)
    (first,) = [r for r in _trial_runs(job["tracking_uri"]) if r.data.tags.get("kind") == "trial"]
    if found_by == "the checkpoint's run id":
        client.set_terminated(first.info.run_id, "KILLED")  # as the next driver closes a dead driver's runs
    again = run_trial(job, checkpoint=Checkpoint.from_directory(str(kept[-1])))
    runs = [r for r in _trial_runs(job["tracking_uri"]) if r.data.tags.get("kind") == "trial"]
    assert [r.info.run_id for r in runs] == [first.info.run_id], "the same run, not a new one beside it"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.metrics["top1"] == again["top1"]
    assert "error" not in run.data.tags, "the first attempt's error is gone once the trial finished"
    assert run.data.tags["attempt"] == "2" and " from epoch 2" in run.data.tags["attempts"].split("; ")[1]
    assert {"host", "ray_node_id", "code_digest"} <= run.data.tags.keys()
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]
    uninterrupted = run_trial(_job(tmp_path, "c.db"))
    assert again["top1"] == uninterrupted["top1"] and again["train_loss"] == uninterrupted["train_loss"]


def test_a_trial_killed_before_its_first_checkpoint_continues_its_own_run(tmp_path):
    """A driver killed (SIGKILL) before a trial's first checkpoint leaves its run RUNNING, and the
    next driver closes it as KILLED: the re-run, under a new sweep and without a checkpoint,
    continues that run, so the trial has one run (a FAILED one too). A run with epochs it cannot
    resume is left alone."""
    job = _job(tmp_path, "a.db")
    client = MlflowClient(job["tracking_uri"])
    exp = client.create_experiment("rerun")

    def killed_at_epoch_1(metrics, checkpoint_dir=None):
        if metrics.get("epoch") == 1:
            raise NodeLost
    job["parent_run_id"] = client.create_run(exp, tags={"kind": "sweep"}).info.run_id
    with pytest.raises(NodeLost):
        run_trial(job, report=killed_at_epoch_1)
    (first,) = [r for r in _trial_runs(job["tracking_uri"]) if r.data.tags.get("kind") == "trial"]
    client.set_terminated(first.info.run_id, "KILLED")
    job["parent_run_id"] = client.create_run(exp, tags={"kind": "sweep"}).info.run_id  # the next driver's sweep
    again = run_trial(job)
    runs = [r for r in _trial_runs(job["tracking_uri"]) if r.data.tags.get("kind") == "trial"]
    assert [r.info.run_id for r in runs] == [first.info.run_id], "the same run, not a new one beside it"
    assert runs[0].info.status == "FINISHED" and runs[0].data.metrics["top1"] == again["top1"]
    assert runs[0].data.tags["attempt"] == "2" and runs[0].data.tags["mlflow.parentRunId"] == job["parent_run_id"]
    assert sorted(m.step for m in client.get_metric_history(first.info.run_id, "train_loss")) == [1, 2]

    # Its epochs are in the run but no checkpoint holds them: a new run, not a second epoch 1.
    client.set_terminated(first.info.run_id, "KILLED")
    job["parent_run_id"] = client.create_run(exp, tags={"kind": "sweep"}).info.run_id
    run_trial(job)
    assert len([r for r in _trial_runs(job["tracking_uri"]) if r.data.tags.get("kind") == "trial"]) == 2
