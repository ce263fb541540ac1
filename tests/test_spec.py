"""Spec loading: every shipped spec expands to the paper's grid; bad specs exit 2 with one line."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "ablations").glob("*.yaml"))
# Specs with no synthetic stand-in, and why.
NO_SMOKE = {"table8_released": "evaluates the authors' checkpoints, which mean something on Something-Something only"}


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_shipped_specs_expand(path, profile):
    if profile == "smoke" and path.stem in NO_SMOKE:
        with pytest.raises(SpecError, match="profile 'smoke' is not defined"):
            load_spec(path, profile)
        return
    spec = load_spec(path, profile)
    assert spec.profile == profile
    assert spec.trials, "a spec expands to at least one trial"
    assert len({t.hash for t in spec.trials}) == len(spec.trials)
    if profile == "paper":
        assert all(t.config["data"]["dataset"] != "synthetic" for t in spec.trials) or "latency" in path.stem
    else:
        assert all(t.config["data"]["dataset"] == "synthetic" for t in spec.trials) or "latency" in path.stem


@pytest.mark.parametrize("stem,rows", [
    ("table1_bninception_branch", 5), ("table2_bninception_shift_ratio", 5), ("table3_resnet50_placement", 4),
    ("table4_resnet50_shift_ratio", 5), ("table5_components", 5), ("table6_bninception_num_gsf", 4),
    ("table7_resnet50_num_gsf", 4), ("shift_ratio", 5), ("table12_latency", 20), ("table8_released", 6),
])
def test_paper_grids_have_the_papers_rows(stem, rows):
    spec = load_spec(ROOT / "ablations" / f"{stem}.yaml", "paper")
    points = {(t.variant, tuple(t.axes.items())) for t in spec.trials}
    assert len(points) == rows


def test_table4_grid_values():
    spec = load_spec(ROOT / "ablations" / "table4_resnet50_shift_ratio.yaml", "paper")
    assert [t.config["model"]["shift_ratio"] for t in spec.trials] == [0.125, 0.25, 0.5, 0.75, 1.0]
    assert {t.config["model"]["placement"] for t in spec.trials} == {"conv3"}
    assert [t.paper_row for t in spec.trials][1] == {"shift_percent": 25}


def test_profile_overrides_base_and_hash_is_stable(tmp_path):
    path = _write(tmp_path, {
        "base": {"model": {"backbone": "resnet18", "num_classes": 10}},
        "grid": {"axes": {"model.num_frames": [4, 8]}},
        "seeds": [0, 1],
        "profiles": {"smoke": {"model": {"width_mult": 0.25}}},
    })
    a, b = load_spec(path, "smoke"), load_spec(path, "smoke")
    assert len(a.trials) == 4
    assert [t.hash for t in a.trials] == [t.hash for t in b.trials]
    assert all(t.config["model"]["width_mult"] == 0.25 for t in a.trials)
    assert all(t.config["model"]["num_classes"] == 10 for t in a.trials)
    assert sorted({t.config["model"]["num_frames"] for t in a.trials}) == [4, 8]


def _write(tmp_path: Path, content: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


BAD = [
    ({"base": {"model": {"shift_raito": 0.5}}}, ["model.shift_raito", "unknown key", "shift_ratio"]),
    ({"base": {"model": {"num_frames": "eight"}}}, ["model.num_frames", "integer"]),
    ({"base": {"model": {"backbone": "vgg16"}}}, ["model.backbone", "unknown backbone", "resnet50"]),
    ({"base": {"model": {"shift_ratio": 1.5}}}, ["model.shift_ratio", "(0, 1]"]),
    ({"base": {"model": {"shift_ratio": 0}}}, ["model.shift_ratio", "(0, 1]"]),
    ({"base": {"model": {"fusion": "concat"}}}, ["model.fusion", "learned", "sum"]),
    ({"base": {"model": {"backbone": "resnet18", "placement": "conv3"}}}, ["placement", "conv3", "resnet18"]),
    ({"base": {"trian": {}}}, ["base.trian", "unknown key", "train"]),
    ({"grid": {"variants": [{"name": "a", "set": {"model.shift_ratio": 2.0}}]}}, ["grid.variants[0] (a)", "shift_ratio"]),
    ({"grid": {"variants": [{"name": "a", "set": {"shift_ratio": 0.5}}]}}, ["grid.variants[0] (a).set", "SECTION.KEY"]),
    ({"grid": {"axes": {"model.shift_ratio": [0.5, 1.7]}}}, ["shift_ratio", "(0, 1]"]),
    ({"profiles": {"smoke": {"model": {"module": "lstm"}}}}, ["profiles.smoke", "model.module", "unknown module"]),
    ({"grdi": {}}, ["grdi", "unknown key", "grid"]),
]


@pytest.mark.parametrize("content,needles", BAD, ids=[n[0] for _, n in BAD])
def test_bad_spec_names_file_key_and_allowed(tmp_path, content, needles):
    path = _write(tmp_path, content)
    with pytest.raises(SpecError) as info:
        load_spec(path, "smoke" if "profiles" in content else None)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_unknown_profile_lists_the_defined_ones(tmp_path):
    path = _write(tmp_path, {"profiles": {"paper": {}, "smoke": {}}})
    with pytest.raises(SpecError, match="profile 'gpu' is not defined.*paper, smoke"):
        load_spec(path, "gpu")


@pytest.mark.parametrize("content,needle", [
    ({"base": {"model": {"backbone": "vgg16"}}}, "unknown backbone"),
    ({"base": {"model": {"shift_ratio": 1.5}}}, "(0, 1]"),
    ({"base": {"wat": 1}}, "unknown key"),
])
def test_cli_exit_2_one_line_no_traceback(tmp_path, content, needle):
    path = _write(tmp_path, content)
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "--results-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and str(path) in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "r").exists(), "nothing is started for a bad spec"


def test_cli_missing_file_and_bad_flag(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr and "not found" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", str(SPECS[0]), "--cpus-per-trial", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "--cpus-per-trial" in proc.stderr and "Traceback" not in proc.stderr


# --- reading the file: one line for every way a YAML file can be bad --------------------------

def _raw(tmp_path: Path, data: bytes | str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _refused(path: Path, *needles: str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_duplicate_key_names_both_lines(tmp_path):
    path = _raw(tmp_path, "base:\n  train:\n    epochs: 2\n    lr: 0.1\n    epochs: 3\n")
    _refused(path, ":5:", "duplicate key 'epochs'", "first on line 3")


def test_merge_keys_may_be_overridden(tmp_path):
    path = _raw(tmp_path, "x: &t {epochs: 2, lr: 0.1}\n")
    _refused(path, "x", "unknown key")  # merging itself works; a stray top-level key is still refused
    path = _raw(tmp_path, "base:\n  train: &t {epochs: 2, lr: 0.1}\n"
                          "profiles:\n  smoke:\n    train: {<<: *t, epochs: 1}\n")
    assert {t.config["train"]["epochs"] for t in load_spec(path, "smoke").trials} == {1}


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path):
    _refused(_raw(tmp_path, "base: " + "[" * 5000 + "]" * 5000 + "\n"), ":1:", "nested deeper than 50")
    _refused(_raw(tmp_path, "base:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200))), "nested deeper")


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]"
              for i in range(1, 10)]
    path = _raw(tmp_path, "base:\n  model:\n    module_options:\n" + "".join(f"      {l}\n" for l in lines))
    assert path.stat().st_size < 1000  # 9**10 scalars once expanded
    t0 = time.perf_counter()
    _refused(path, "aliases expand this node past 100000 nodes")
    assert time.perf_counter() - t0 < 5


def test_recursive_alias_is_refused(tmp_path):
    _refused(_raw(tmp_path, "base: &b {model: {module_options: {again: *b}}}\n"), "alias refers to a node that contains it")


def test_small_aliases_are_fine(tmp_path):
    path = _raw(tmp_path, "base:\n  model: &m {backbone: resnet18, num_classes: 10}\n"
                          "profiles:\n  smoke: {model: *m}\n")
    assert load_spec(path, "smoke").trials[0].config["model"]["backbone"] == "resnet18"


@pytest.mark.parametrize("data,needle", [
    ("name: x\n".encode("utf-16"), "UTF-16"),
    ("name: x\n".encode("utf-16-be"), "NUL byte"),
    ("name: x\n".encode("utf-32"), "UTF-16/32"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", "NUL byte"),
    (b"name: x\ndescription: caf\xe9\n", ":2: not UTF-8 text (byte 0xe9)"),
    (b"name: x\ndescription: \x07bell\n", ":2: not valid YAML"),
    (b"base: {model: [}\n", ":1:"),
])
def test_undecodable_spec_is_one_line(tmp_path, data, needle):
    _refused(_raw(tmp_path, data), needle)


def test_utf8_bom_and_yaml12_floats_are_accepted(tmp_path):
    path = _raw(tmp_path, b"\xef\xbb\xbfbase:\n  train: {lr: 1e-4, weight_decay: 5E-5}\n")
    config = load_spec(path).trials[0].config["train"]
    assert config["lr"] == 1e-4 and config["weight_decay"] == 5e-5


# --- strict types and bounds ------------------------------------------------------------------

@pytest.mark.parametrize("content,needles", [
    ({"seeds": ["0"]}, ["seeds.0", "valid integer", "'0'"]),
    ({"base": {"train": {"epochs": True}}}, ["base.train.epochs", "valid integer", "True"]),
    ({"base": {"model": {"num_frames": 8.0}}}, ["base.model.num_frames", "valid integer"]),
    ({"base": {"model": {"channel_shuffle": True}}}, ["base.model", "channel_shuffle was removed", "layout: release"]),
    ({"base": {"model": {"layout": "authors"}}}, ["base.model.layout", "'paper' or 'release'"]),
    ({"base": {"train": {"epochs": -1}}}, ["base.train.epochs", "greater than or equal to 0"]),
    ({"base": {"data": {"train_size": "64"}}}, ["base.data.train_size", "valid integer"]),
    ({"base": {"model": {"gating": True}}}, ["base.model.gating", "Input should be 'learned' or a valid number (got True)"]),
    ({"base": {"measure": {"latency_runs": 1e9}}}, ["base.measure.latency_runs", "valid integer"]),
    ({"base": {"measure": {"latency_runs": 10**9}}}, ["base.measure.latency_runs", "less than or equal to 100000"]),
    ({"base": {"data": {"train_size": 10**12}}}, ["base.data.train_size", "less than or equal to 10000000"]),
    ({"base": {"model": {"num_frames": 10**9}}}, ["base.model.num_frames", "less than or equal to 256"]),
    ({"base": {"measure": {"input_size": 10**9}}}, ["base.measure.input_size", "less than or equal to 1024"]),
    ({"base": {"data": {"input_size": 10**9}}}, ["base.data.input_size", "less than or equal to 1024"]),
    ({"base": {"model": {"width_mult": 1e-9}}}, ["base.model.width_mult", "greater than or equal to 0.015625"]),
    ({"base": {"model": {"gating": 3.0}}}, ["base.model.gating", "'learned' or less than or equal to 1 (got 3.0)"]),
    ({"base": {"data": {"seed": -1}}}, ["base.data.seed", "greater than or equal to 0"]),
    ({"seeds": []}, ["seeds", "at least 1 item"]),
])
def test_strict_types_and_bounds(tmp_path, content, needles):
    _refused(_write(tmp_path, content), *needles)


def test_every_bounded_field_is_described():
    from harness.data import DataConfig
    from harness.spec import MeasureConfig, ModelConfig, TrainConfig

    for model in (ModelConfig, TrainConfig, MeasureConfig, DataConfig):
        for name, info in model.model_fields.items():
            bounded = [m for m in info.metadata if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")]
            upper = [m for m in info.metadata if type(m).__name__ in ("Le", "Lt")]
            if bounded and info.annotation in (int, int | None) and name not in ("momentum", "dropout"):
                assert upper, f"{model.__name__}.{name} is a count without an upper bound"
            if upper and name not in ("momentum", "dropout", "occlusion", "noise", "jitter"):
                assert info.description, f"{model.__name__}.{name} is bounded but has no description"


# --- names, paper rows, seeds and grid points -------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "a b", ".hidden", "", "x" * 101, "tab\tname"])
def test_unsafe_spec_names_are_refused(tmp_path, name):
    _refused(_write(tmp_path, {"name": name}), "name:", "letters, digits")


def test_file_stem_is_checked_when_no_name_is_given(tmp_path):
    path = tmp_path / "my spec.yaml"
    path.write_text("description: x\n")
    with pytest.raises(SpecError, match="the file name, as the spec sets none"):
        load_spec(path)


def test_paper_row_keys_are_checked_at_load(tmp_path):
    content = {"paper_table": "table5_components.csv",
               "grid": {"variants": [{"name": "GSF", "paper_row": {"modle": "GSF"}}]}}
    _refused(_write(tmp_path, content), "grid.variants[0] (GSF).paper_row", "'modle' is not a column",
             "table5_components.csv", "allowed: gating, fusion, model")
    content = {"grid": {"variants": [{"name": "GSF", "paper_row": {"model": "GSF"}}]}}
    _refused(_write(tmp_path, content), "paper_row", "needs a paper_table")
    _refused(_write(tmp_path, {"paper_table": "nope.csv"}), "paper_table", "'nope.csv' not found")


def test_repeated_seeds_and_axis_values_name_the_key(tmp_path):
    _refused(_write(tmp_path, {"seeds": [0, 1, 0]}), "seeds: 0 is listed twice")
    _refused(_write(tmp_path, {"grid": {"axes": {"model.num_frames": [8, 4, 8]}}}),
             "grid.axes.model.num_frames: 8 is listed twice")


def test_colliding_grid_points_are_named_with_the_key(tmp_path):
    content = {"base": {"model": {"fusion": "sum"}},
               "grid": {"variants": [{"name": "GSM", "set": {"model.fusion": "sum"}}, {"name": "plain"}],
                        "axes": {"model.num_frames": [4, 8]}}}
    _refused(_write(tmp_path, content), "'GSM num_frames=4 seed=0' and 'plain num_frames=4 seed=0'",
             "model.fusion: 'sum' vs 'unset', both 'sum'")


def test_relative_data_and_weight_paths_resolve_against_the_command_directory(tmp_path, monkeypatch):
    """A Ray trial runs in a folder of its own: the driver makes the paths absolute (issue 9)."""
    spec = load_spec(ROOT / "ablations" / "table5_components.yaml", "paper", cwd=tmp_path)
    assert {t.config["data"]["root"] for t in spec.trials} == {str(tmp_path / "data" / "something-v1")}
    assert spec.trials[0].config["data"]["train_list"] == "train_videofolder.txt"  # relative to root, as documented
    monkeypatch.chdir(tmp_path)
    assert load_spec(ROOT / "ablations" / "table5_components.yaml", "paper").trials[0].config == spec.trials[0].config
    other = load_spec(ROOT / "ablations" / "table5_components.yaml", "paper", cwd=tmp_path / "elsewhere")
    assert other.trials[0].hash != spec.trials[0].hash, "another folder's data is another trial"
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"base": {"model": {"pretrained": "../weights/r50.pth"},
                                             "data": {"dataset": "kinetics400", "root": "/abs/k400", "train_list": "t",
                                                      "val_list": "v", "categories": "c"}}}))
    config = load_spec(path, cwd=tmp_path / "run").trials[0].config
    assert config["model"]["pretrained"] == str(tmp_path / "weights" / "r50.pth")
    assert config["data"]["root"] == "/abs/k400"
