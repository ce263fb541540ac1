"""The trainer: resume after an interruption at epoch k, NaN handling, the learning-rate schedule."""
from __future__ import annotations

import math

import pytest
import torch

from gsf import build_model
from harness.spec import TrialConfig
from harness.train import fit, lr_lambda


def _cfg(**train) -> TrialConfig:
    return TrialConfig.model_validate({
        "model": {"backbone": "resnet18", "width_mult": 0.125, "module": "gsf", "num_classes": 4,
                  "num_frames": 4, "shift_ratio": 0.5, "dropout": 0.2},
        "data": {"dataset": "synthetic", "num_classes": 4, "train_size": 32, "val_size": 8, "frame_size": 32},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.05, "warmup_epochs": 1, **train},
    })


def _model(cfg: TrialConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(**cfg.model.model_dump())


class Interrupt(Exception):
    pass


def test_interrupted_trial_resumes_from_its_last_epoch(tmp_path):
    cfg = _cfg()
    reference = _model(cfg)
    ref_epochs = []
    fit(reference, cfg, seed=1, device=torch.device("cpu"), checkpoint_dir=tmp_path / "ref",
        on_epoch=lambda m, e: ref_epochs.append((e, m["train_loss"])))

    def stop_after_first(metrics, epoch):
        if epoch == 1:
            raise Interrupt  # the worker dies right after epoch 1 was checkpointed

    with pytest.raises(Interrupt):
        fit(_model(cfg), cfg, seed=1, device=torch.device("cpu"), checkpoint_dir=tmp_path / "run",
            on_epoch=stop_after_first)
    assert (tmp_path / "run" / "last.pt").is_file()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["epoch"] == 1

    resumed_model, resumed_epochs = _model(cfg), []  # a fresh process: new weights, same folder
    final = fit(resumed_model, cfg, seed=1, device=torch.device("cpu"), checkpoint_dir=tmp_path / "run",
                on_epoch=lambda m, e: resumed_epochs.append((e, m["train_loss"])))
    assert [e for e, _ in resumed_epochs] == [2, 3], "continues after epoch 1, not from scratch"
    assert [l for _, l in resumed_epochs] == pytest.approx([l for _, l in ref_epochs[1:]]), "same losses as uninterrupted"
    for (name, a), b in zip(reference.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert {"top1", "top5", "train_loss"} <= final.keys() and 0 <= final["top1"] <= 100


def test_finished_checkpoint_is_not_trained_again(tmp_path):
    cfg = _cfg(epochs=1)
    fit(_model(cfg), cfg, seed=0, device=torch.device("cpu"), checkpoint_dir=tmp_path)
    calls = []
    final = fit(_model(cfg), cfg, seed=0, device=torch.device("cpu"), checkpoint_dir=tmp_path,
                on_epoch=lambda m, e: calls.append(e))
    assert calls == [] and "top1" in final


def test_nan_loss_fails_with_the_reason():
    cfg = _cfg(epochs=1)
    model = _model(cfg)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, batch 0"):
        fit(model, cfg, seed=0, device=torch.device("cpu"))


def test_class_count_mismatch_is_named():
    cfg = TrialConfig.model_validate({**_cfg().model_dump(mode="json"), "model": {**_cfg().model.model_dump(), "num_classes": 7}})
    with pytest.raises(ValueError, match="num_classes=7.*4 classes"):
        fit(_model(cfg), cfg, seed=0, device=torch.device("cpu"))


def test_warmup_then_cosine():
    f = lr_lambda(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(99) < 0.01
    assert all(f(i) >= f(i + 1) for i in range(10, 99))


def test_an_epochs_clips_do_not_depend_on_the_number_of_workers():
    """data.workers defaults to the trial's CPUs minus one: the same trial on a bigger node must
    see the same clips, in the same order, with the same augmentation."""
    from harness.data import build_datasets
    from harness.train import _loader

    cfg = _cfg()
    train_ds, _ = build_datasets(cfg.data, num_frames=4, seed=3)
    epochs = {}
    for workers in (0, 2):
        batches = list(_loader(train_ds, 8, True, workers, seed=3001))
        epochs[workers] = (torch.cat([c for c, _ in batches]), torch.cat([y for _, y in batches]))
    assert epochs[0][0].shape == (32, 4, 3, 32, 32)
    assert torch.equal(epochs[0][1], epochs[2][1]) and torch.equal(epochs[0][0], epochs[2][0])
    again = torch.cat([c for c, _ in _loader(train_ds, 8, True, 0, seed=3002)])
    assert not torch.equal(again, epochs[0][0]), "another epoch draws other clips"


def test_data_workers_default_to_the_trials_cpus_minus_one():
    from harness.train import loader_workers

    assert _cfg().data.workers is None
    assert [loader_workers(None, c) for c in (1, 2, 8, 0.5)] == [0, 1, 7, 0]
    assert loader_workers(3, 8) == 3 and loader_workers(0, 8) == 0


def test_progress_within_an_epoch(tmp_path):
    cfg = _cfg(epochs=2)
    lines = []
    fit(_model(cfg), cfg, seed=0, device=torch.device("cpu"), on_progress=lines.append, progress_every_s=1e-9)
    assert [(p["epoch"], p["batch"]) for p in lines] == [(e, b) for e in (1, 2) for b in (1, 2, 3, 4)]
    assert all(p["batches"] == 4 and p["clips_per_s"] > 0 and math.isfinite(p["loss"]) for p in lines)
    assert lines[-1]["eta_s"] == 0 and lines[0]["eta_s"] > lines[4]["eta_s"] > 0
