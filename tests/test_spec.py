"""Spec loading: every shipped spec expands to the paper's grid; bad specs exit 2 with one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_shipped_specs_expand(path, profile):
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
    ("table7_resnet50_num_gsf", 4), ("shift_ratio", 5), ("table12_latency", 10),
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
