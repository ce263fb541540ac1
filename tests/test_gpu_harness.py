"""The harness's GPU options on CPU stand-ins: ``train.amp`` (bf16 autocast on any device), in
training and evaluation."""
from __future__ import annotations

import pytest
import torch
import yaml

from gsf import build_model
from harness.spec import SpecError, TrialConfig, load_spec
from harness.train import autocast_dtype, fit

CPU = torch.device("cpu")


def _cfg(**train) -> TrialConfig:
    return TrialConfig.model_validate({
        "model": {"backbone": "resnet18", "width_mult": 0.125, "module": "gsf", "num_classes": 4,
                  "num_frames": 4, "shift_ratio": 0.5, "dropout": 0.0},
        "data": {"dataset": "synthetic", "num_classes": 4, "train_size": 16, "val_size": 4, "frame_size": 32},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.05, "warmup_epochs": 0, **train},
    })


def _model(cfg: TrialConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(**cfg.model.model_dump())


def _logit_dtypes(model: torch.nn.Module) -> list[tuple[bool, torch.dtype]]:
    """(training?, dtype) of every classifier output from now on."""
    seen = []
    model.fc.register_forward_hook(lambda m, args, out: seen.append((m.training, out.dtype)))
    return seen


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("auto", torch.float32), (True, torch.float32),
                                       (False, torch.float32)])
def test_amp_applies_to_training_and_evaluation_on_any_device(amp, dtype):
    """bf16 autocast on the CPU stands in for fp16 on a GPU: the trainer and its evaluation both
    run under it ("auto" means fp16 with a GradScaler on CUDA, full precision on CPU)."""
    cfg = _cfg(amp=amp)
    model = _model(cfg)
    seen = _logit_dtypes(model)
    metrics = fit(model, cfg, seed=0, device=CPU)
    assert {mode for mode, _ in seen} == {True, False}, "trained and evaluated"
    assert {d for _, d in seen} == {dtype}
    assert 0 <= metrics["top1"] <= 100 and metrics["train_loss"] > 0


def test_amp_setting_per_device():
    cuda = torch.device("cuda")
    assert autocast_dtype("auto", cuda) == torch.float16 and autocast_dtype("auto", CPU) is None
    assert autocast_dtype("bf16", cuda) == autocast_dtype("bf16", CPU) == torch.bfloat16
    assert autocast_dtype(False, cuda) is None
    assert TrialConfig().train.amp == "auto" and _cfg(amp=True).train.amp == "auto"


@pytest.mark.parametrize("key,value,message", [
    ("amp", "fp16", 'amp must be "auto", "bf16" or false'),
    ("amp", 1, 'amp must be "auto", "bf16" or false'),
])
def test_bad_gpu_options_are_named(tmp_path, key, value, message):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"base": {"train": {key: value}}}))
    with pytest.raises(SpecError, match=f"spec.yaml: base.train.{key}: {message}"):
        load_spec(path)
