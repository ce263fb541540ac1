"""The trainer: resume after an interruption at epoch k, NaN handling, the learning-rate schedule."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import seeded_model, tiny_trial
from harness.spec import TrialConfig
from harness.train import fit, lr_lambda


_cfg, _model = tiny_trial, seeded_model  # conftest.py


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


# --- the input pipeline (issue 18): same clips as before, shared among workers, uint8 to the device

class _Indices(torch.utils.data.Dataset):
    """What a sampler asks for, as a batch: (sample, augmentation draw)."""

    def __len__(self):
        return 50

    def __getitem__(self, index):
        return torch.tensor(index)


def test_the_persistent_loader_draws_the_clips_the_per_epoch_loader_drew():
    """Before #18 each epoch built a DataLoader whose generator also drew its workers' base seed;
    the persistent loader's sampler draws the same stream, so sweeps see the same clips."""
    from torch.utils.data import DataLoader, Sampler

    from harness.train import _loader

    class Before(Sampler):
        def __init__(self, size, generator):
            self.size, self.generator = size, generator

        def __iter__(self):
            order = torch.randperm(self.size, generator=self.generator).tolist()
            draws = torch.randint(2**62, (self.size,), generator=self.generator).tolist()
            return iter(zip(order, draws))

    loader = _loader(_Indices(), 8, True, 0, seed=0)
    for epoch_seed in (3001, 3002):
        gen = torch.Generator().manual_seed(epoch_seed)
        before = list(DataLoader(_Indices(), batch_size=8, sampler=Before(50, gen), generator=gen, drop_last=True))
        loader.sampler.set_epoch(epoch_seed)
        now = list(loader)
        assert len(now) == len(before) == 6 and all(torch.equal(a, b) for a, b in zip(now, before))


def test_data_parallel_workers_share_each_global_batch():
    from harness.distributed import Group
    from harness.train import _loader

    one = torch.cat(list(_loader(_Indices(), 8, True, 0, seed=7)))
    ranks = [list(_loader(_Indices(), 8, True, 0, seed=7, group=Group(r, 2))) for r in range(2)]
    assert all(b.shape == (4, 2) for rank in ranks for b in rank)
    together = torch.cat([torch.cat([a, b]) for a, b in zip(*ranks)])
    assert torch.equal(together, one), "worker 0 takes the first half of each global batch, worker 1 the second"


def test_frames_leave_the_loader_as_uint8_and_are_normalised_on_the_device():
    """Rounding the resized frames to uint8 (what a resized JPEG holds) moves the model's input
    by at most half a grey level: 0.5 / (255 * 0.224) = 0.0088 in ImageNet units (G's std), 0.5
    on Caffe's 0-255 scale."""
    from harness.data import transforms as tf
    from harness.train import model_input

    x = tf.resize_short(torch.rand(4, 3, 37, 53) * 255, 32)
    frames = tf.to_uint8(x)
    assert frames.dtype == torch.uint8
    for mode, half_grey in (("imagenet", 0.5 / (255 * 0.224)), ("caffe_bgr", 0.5)):
        got = model_input(frames, torch.device("cpu"), mode)
        assert got.dtype == torch.float32
        assert (got - tf.normalise(x.clamp(0, 255), mode)).abs().max() <= half_grey + 1e-5


def test_sharded_scores_gather_to_the_whole_evaluation():
    """Every clip once, in dataset order, whichever worker scored it; gate histograms add up."""
    from harness.gates import GateRecorder, merge
    from harness.train import _summarise

    torch.manual_seed(0)
    scores = {"index": list(range(7)), "top": torch.randint(0, 4, (7, 4)).tolist(),
              "labels": torch.randint(0, 4, (7,)).tolist(), "nll": torch.rand(7).tolist()}
    shards = [{k: v[r::2] for k, v in scores.items()} for r in range(2)]
    assert _summarise(shards, 4) == _summarise([scores], 4)
    assert _summarise(shards, 4)["val_clips"] == 7

    cfg = _cfg()
    model = _model(cfg).eval()
    clips = torch.randn(3, 4, 3, 32, 32)
    with GateRecorder(model) as whole, torch.no_grad():
        model(clips)
    parts = []
    for part in (clips[:1], clips[1:]):
        with GateRecorder(model) as rec, torch.no_grad():
            model(part)
        parts.append(rec.summary())
    merged, expected = merge(parts), whole.summary()
    for a, b in zip(merged["layers"], expected["layers"]):
        assert a["counts"] == b["counts"] and a["values"] == b["values"]
        assert a["mean"] == pytest.approx(b["mean"], abs=1e-6) and a["std"] == pytest.approx(b["std"], abs=1e-5)
        assert a["negative"] == pytest.approx(b["negative"])


def test_each_epoch_logs_its_steps_clips_and_time_waiting_for_data():
    cfg = _cfg(epochs=1)
    epochs = []
    fit(_model(cfg), cfg, seed=0, device=torch.device("cpu"), on_epoch=lambda m, e: epochs.append(m))
    (m,) = epochs
    assert m["train_steps"] == 4 and m["train_clips"] == 32 and m["val_clips"] == 8
    assert 0 < m["data_wait_fraction"] < 1 and math.isfinite(m["loss_first_step"])
