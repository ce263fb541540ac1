"""One config object per trial: ``ModelConfig`` fills in the backbone's defaults once, when it is
validated, so the trial's config, hash and MLflow params hold what the model used; ``build_model``
takes it as it is; and a re-run names the finished runs recorded before the defaults were filled in."""
from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from gsf import ModelConfig, build_model
from gsf.model import NO_MODULE
from harness import preflight, tracking
from harness.spec import TrialConfig, load_spec
from harness.trial import run_trial


@pytest.mark.parametrize("model,filled,expected", [
    ({"backbone": "resnet18", "module": "gsf"}, ("shift_ratio", "placement"), {"shift_ratio": 0.25, "placement": "conv2"}),
    ({"backbone": "bninception", "module": "gsm"}, ("shift_ratio", "placement"), {"shift_ratio": 1.0, "placement": "branch4"}),
    ({"backbone": "resnet18", "module": "gsf", "shift_ratio": 0.5}, ("placement",), {"shift_ratio": 0.5, "placement": "conv2"}),
    ({"backbone": "resnet18", "module": "tsm"}, ("placement",), {"placement": "conv2"}),  # TSM takes no shift_ratio
    ({"backbone": "resnet18", "module": NO_MODULE}, (), {"placement": None}),  # TSN: the placement places nothing
])
def test_validation_fills_in_the_backbones_defaults_once(model, filled, expected):
    cfg = ModelConfig.model_validate(model)
    dump = cfg.model_dump()
    assert cfg.defaulted == filled and {k: dump.get(k, "absent") for k in expected} == expected
    assert "shift_ratio" in dump or model["module"] in ("tsm", NO_MODULE)
    again = ModelConfig.model_validate(dump)
    assert again.model_dump() == dump and again.defaulted == (), "a dump validates to itself, nothing filled twice"


def test_a_partial_config_and_a_release_checkpoint_are_left_unset(tmp_path):
    partial = ModelConfig.model_validate({"backbone": "resnet18"}, context={"partial": True})
    assert partial.shift_ratio is None and partial.placement is None
    released = ModelConfig.model_validate({"backbone": "bninception", "release_checkpoint": str(tmp_path / "x.pth.tar")})
    assert released.shift_ratio is None and released.placement is None, "the checkpoint's file decides them"


def test_build_model_takes_the_config_as_validated(monkeypatch):
    cfg = ModelConfig(backbone="resnet18", width_mult=0.125, num_classes=3, num_frames=4)

    def validated_again(*a, **k):
        raise AssertionError("build_model(cfg) validated the config again")

    monkeypatch.setattr(ModelConfig, "model_validate", validated_again)
    model = build_model(cfg)
    gsf = [m for m in model.modules() if type(m).__name__ == "GSF"]
    assert len(gsf) == 8 and {m.shift_ratio for m in gsf} == {0.25}
    with pytest.raises(TypeError, match="a ModelConfig or keyword options, not both \\(got num_frames\\)"):
        build_model(cfg, num_frames=8)


def test_a_trial_validates_its_config_once_and_mlflow_records_the_values_used(tmp_path, monkeypatch):
    config = TrialConfig.model_validate({
        "model": {"backbone": "resnet18", "width_mult": 0.125, "module": "gsf", "num_classes": 4, "num_frames": 4},
        "data": {"dataset": "synthetic", "num_classes": 4},
        "measure": {"input_size": 32, "flops": False, "latency": False}}).model_dump(mode="json")
    job = {"config": {**config, "seed": 0}, "hash": "h", "label": "t seed=0", "spec": "once", "measure_only": True,
           "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", "results_dir": str(tmp_path)}
    calls = []
    validate = TrialConfig.model_validate.__func__
    monkeypatch.setattr(TrialConfig, "model_validate", classmethod(lambda cls, *a, **k: calls.append(1) or validate(cls, *a, **k)))
    monkeypatch.setattr(ModelConfig, "model_validate", classmethod(lambda cls, *a, **k: calls.append("model")))
    run_trial(job)
    assert calls == [1], "one TrialConfig validation; no ModelConfig validated on its own"
    client = MlflowClient(job["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("once").experiment_id])
    assert run.data.params["model.shift_ratio"] == "0.25" and run.data.params["model.placement"] == "conv2"


def _spec(tmp_path):
    spec = {"name": "filled",
            "base": {"model": {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 4, "num_frames": 4},
                     "data": {"dataset": "synthetic", "num_classes": 4}},
            "grid": {"variants": [{"name": "TSN", "set": {"model.module": "none"}},
                                  {"name": "GSF", "baseline": "TSN"},
                                  {"name": "GSF 50%", "set": {"model.shift_ratio": 0.5, "model.placement": "conv2"},
                                   "baseline": "TSN"}]}}
    path = tmp_path / "filled.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path, cwd=tmp_path)


# The config_key of each row as the code before 2026-12-07 wrote it (bb5e4cc, the same spec): GSF's
# config then held shift_ratio and placement as None.
BEFORE = {"TSN": "262e1ff76e88", "GSF": "c414d11d7235", "GSF 50%": "da09f5cec5dc"}


def test_a_rerun_names_the_finished_runs_recorded_before_the_defaults_were_filled_in(tmp_path):
    spec = _spec(tmp_path)
    by_variant = {t.variant: t for t in spec.trials}
    assert {v: t.key_before_defaults for v, t in by_variant.items()} == BEFORE
    assert by_variant["GSF"].config_key != BEFORE["GSF"], "GSF's identity changed: its config now holds 0.25, conv2"
    assert [by_variant[v].config_key for v in ("TSN", "GSF 50%")] == [BEFORE["TSN"], BEFORE["GSF 50%"]]

    client = tracking.open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("filled")
    run_of = {}
    for variant, key in BEFORE.items():  # finished runs of every row, written by the old code
        run = client.create_run(exp, tags={"kind": "trial", "config_key": key, "measure_only": "False"})
        client.set_terminated(run.info.run_id, "FINISHED")
        run_of[variant] = run.info.run_id
    by_config = tracking.finished_trials(client, "filled", "config_key")
    line = preflight.defaults_filled(spec.trials, by_config, measure_only=False)
    assert line == ("1 trial re-run: their configs now record the backbone's default shift_ratio/placement, which "
                    "their finished runs left unset (README: changes, 2026-12-07), so these runs no longer match: "
                    f"GSF seed=0 (run {run_of['GSF'][:8]})")
    assert preflight.defaults_filled([by_variant["TSN"]], by_config, measure_only=False) == ""
