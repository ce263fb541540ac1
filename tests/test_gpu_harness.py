"""The harness's GPU options on CPU stand-ins: ``train.amp`` (bf16 autocast on any device),
``train.compile``, ``train.channels_last`` and ``measure.compile``, in training and evaluation."""
from __future__ import annotations

import pytest
import torch
import yaml

from harness.measure import measure, relative_cost
from harness.spec import MeasureConfig, SpecError, TrialConfig, load_spec
from harness.train import autocast_dtype, fit

from conftest import seeded_model, tiny_trial

CPU = torch.device("cpu")


def _cfg(**train) -> TrialConfig:
    """conftest's tiny trial, one epoch of 16 clips, no dropout or warm-up."""
    return tiny_trial({"dropout": 0.0}, {"train_size": 16, "val_size": 4}, **{"epochs": 1, "warmup_epochs": 0, **train})


_model = seeded_model


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
    # top1 is the percentage of the 4 validation clips classified right: one of these five values
    assert metrics["top1"] in (0.0, 25.0, 50.0, 75.0, 100.0) and metrics["train_loss"] > 0


def test_amp_setting_per_device():
    cuda = torch.device("cuda")
    assert autocast_dtype("auto", cuda) == torch.float16 and autocast_dtype("auto", CPU) is None
    assert autocast_dtype("bf16", cuda) == autocast_dtype("bf16", CPU) == torch.bfloat16
    assert autocast_dtype(False, cuda) is None
    assert TrialConfig().train.amp == "auto" and _cfg(amp=True).train.amp == "auto"


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
def test_compiled_channels_last_training_matches_eager(tmp_path):
    """train.compile (here the aot_eager backend: Dynamo + AOTAutograd, no C++ build) and
    train.channels_last: the same losses, accuracy and gate histograms as eager, and a checkpoint
    of the model itself (no torch.compile key prefix)."""
    import torch._dynamo

    torch._dynamo.reset()
    eager_cfg, cfg = _cfg(epochs=2), _cfg(epochs=2, compile="aot_eager", channels_last=True)
    history, gates = {}, {}
    for name, c in (("eager", eager_cfg), ("compiled", cfg)):
        torch._dynamo.utils.counters.clear()
        model = _model(c)
        history[name] = []
        fit(model, c, seed=0, device=CPU, checkpoint_dir=tmp_path / name,
            on_epoch=lambda m, e, h=history[name]: h.append(m),
            on_evaluate=lambda details, e, name=name: gates.__setitem__(name, details["gates"]))
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) == (name == "compiled")
    conv = model.backbone.conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(history["eager"], history["compiled"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)
    assert [g["name"] for g in gates["compiled"]["layers"]] == [g["name"] for g in gates["eager"]["layers"]]
    for a, b in zip(gates["eager"]["layers"], gates["compiled"]["layers"]):
        assert b["values"] == a["values"] > 0 and b["mean"] == pytest.approx(a["mean"], abs=1e-3)
    state = torch.load(tmp_path / "compiled" / "last.pt", weights_only=False)["model"]
    assert state.keys() == model.state_dict().keys()
    torch._dynamo.reset()


@pytest.mark.parametrize("key,value,message", [
    ("amp", "fp16", 'amp must be "auto", "bf16" or false'),
    ("amp", 1, 'amp must be "auto", "bf16" or false'),
    ("compile", "fastest", "compile must be true, false or a torch.compile backend"),
])
def test_bad_gpu_options_are_named(tmp_path, key, value, message):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"base": {"train": {key: value}}}))
    with pytest.raises(SpecError, match=f"spec.yaml: base.train.{key}: {message}"):
        load_spec(path)


class Frames(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())

    def forward(self, x):
        return self.net(x.flatten(0, 1)).mean(dim=(1, 2, 3))


def test_measure_compiled_reports_compile_time_separately():
    import torch._dynamo

    torch.manual_seed(0)
    cfg = MeasureConfig(input_size=16, flops=False, latency_runs=20, latency_warmup=2, train_step=True,
                        compile="aot_eager")
    model, baseline = Frames(), Frames()
    ratios = relative_cost(model, baseline, num_frames=2, cfg=cfg)
    assert {"latency_x", "train_step_x"} <= ratios.keys()
    out = measure(model, num_frames=2, cfg=cfg)
    assert out["compiled"] == "aot_eager"
    assert out["compile_s"] > 0 and out["train_step_compile_s"] > 0
    # The first call compiles (Dynamo tracing + AOTAutograd): far longer than a timed run.
    assert out["compile_s"] * 1e3 > 5 * out["latency_ms"]
    assert "compile_s" not in measure(model, num_frames=2, cfg=cfg.model_copy(update={"compile": False}))
    torch._dynamo.reset()
