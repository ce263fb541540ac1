"""Tests marked ``slow`` (the full paper-size sets) run only when asked: ``pytest -m slow``.
Shared scaffolding: the ``one_thread`` fixture; ``tiny_trial`` and ``seeded_model`` (``from conftest
import tiny_trial, seeded_model``), the thin GSF ResNet-18 trial the trainer's tests run."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="full paper set: run with -m slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    their tensors and models are tiny, and a second OpenMP thread only adds synchronisation; on a
    busy 2-core machine a thin model's train step took 2-5 s instead of 0.06 s (threads spinning
    at barriers while the other is descheduled)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_trial(model: dict | None = None, data: dict | None = None, **train):
    """A ``TrialConfig`` of GSF on a 1/8-width ResNet-18, 4 frames of 32 px, 4 synthetic classes
    (32 training clips, 8 validation clips), 3 epochs of batch 8; ``model``/``data`` update
    their sections, keywords update ``train``."""
    from harness.spec import TrialConfig

    return TrialConfig.model_validate({
        "model": {"backbone": "resnet18", "width_mult": 0.125, "module": "gsf", "num_classes": 4,
                  "num_frames": 4, "shift_ratio": 0.5, "dropout": 0.2, **(model or {})},
        "data": {"dataset": "synthetic", "num_classes": 4, "train_size": 32, "val_size": 8, "frame_size": 32,
                 **(data or {})},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.05, "warmup_epochs": 1, **train},
    })


def seeded_model(cfg) -> torch.nn.Module:
    """The model of ``cfg``'s model section, its weights drawn after ``torch.manual_seed(0)``."""
    from gsf import build_model

    torch.manual_seed(0)
    return build_model(cfg.model)
