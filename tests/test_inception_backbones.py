"""BN-Inception and Inception-v3 backbones: shapes, insertion points, pretrained loading, and
parameter/FLOP counts against the paper's Tables 1, 2, 6 and 8.

The default run checks two representative rows; ``-m slow`` checks every row.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from gsf.backbones.bninception import PLACEMENTS, build_bninception, caffe_state_dict
from gsf.backbones.inception_v3 import INPUT_SIZE as V3_INPUT_SIZE
from gsf.backbones.inception_v3 import build_inception_v3
from gsf.modules import GSF

PAPER = Path(__file__).resolve().parents[1] / "reports" / "paper"
PARAMS_TOL, FLOPS_TOL = 0.005, 0.015


slow = pytest.mark.slow  # run only with -m slow (tests/conftest.py): fvcore traces take seconds


def gsf(num_frames: int, shift_ratio: float = 1.0):
    return lambda channels: GSF(channels, num_frames=num_frames, shift_ratio=shift_ratio)


def count_gsf(model: nn.Module) -> int:
    return sum(isinstance(m, GSF) for m in model.modules())


def paper_rows(name: str) -> list[dict]:
    with open(PAPER / name, newline="") as f:
        return list(csv.DictReader(f))


def measure(backbone: nn.Module, size: int = 224, frames: int = 8) -> tuple[float, float]:
    """(params_M, GFLOPs) of backbone + 174-class head, one 8-frame view, fvcore multiply-adds."""
    from fvcore.nn import FlopCountAnalysis, parameter_count

    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, 174)).eval()
    with torch.no_grad():
        flops = (FlopCountAnalysis(model, torch.randn(frames, 3, size, size))
                 .unsupported_ops_warnings(False).uncalled_modules_warnings(False).total())
    return parameter_count(model)[""] / 1e6, flops / 1e9


def assert_matches_paper(backbone: nn.Module, params_m: float, gflops: float, size: int = 224) -> None:
    ours_p, ours_f = measure(backbone, size)
    assert ours_p == pytest.approx(params_m, rel=PARAMS_TOL), f"params {ours_p:.4f} M vs paper {params_m} M"
    assert ours_f == pytest.approx(gflops, rel=FLOPS_TOL), f"GFLOPs {ours_f:.3f} vs paper {gflops}"


# -- shapes and insertion points -------------------------------------------------------------

# Modules per placement: one per block, "all" one per conv-ending branch (4 x 8 + 2 x 2).
EXPECTED_GSF = {"branch1": 10, "branch2": 10, "branch3": 10, "branch4": 10, "all": 36}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_bninception_shapes_per_placement(placement):
    model = build_bninception(gsf(num_frames=4), placement, width_mult=0.25)
    out = model(torch.randn(2 * 4, 3, 64, 64))
    assert out.shape == (8, model.num_features)
    assert count_gsf(model) == EXPECTED_GSF[placement]
    out.sum().backward()  # the modules sit on the gradient path


def test_bninception_num_blocks_and_plain():
    x = torch.randn(8, 3, 64, 64)
    for model in (build_bninception(gsf(4), num_blocks=0, width_mult=0.25),
                  build_bninception(None, width_mult=0.25)):
        assert count_gsf(model) == 0
        assert model(x).shape == (8, model.num_features)
    last3 = build_bninception(gsf(4), num_blocks=3, width_mult=0.25)
    hosts = {name.split(".")[1] for name, m in last3.named_modules() if isinstance(m, GSF)}
    assert hosts == {"4e", "5a", "5b"}


def test_full_width_is_the_standard_network():
    model = build_bninception(None)
    assert model.num_features == 1024
    assert model.blocks[0].branches["1x1"][0].conv.weight.shape == (64, 192, 1, 1)
    assert sum(p.numel() for p in model.parameters()) == 10_448_590 - (1024 * 174 + 174)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="placement"):
        build_bninception(gsf(8), placement="branch5")
    with pytest.raises(ValueError, match="num_blocks"):
        build_bninception(gsf(8), num_blocks=11)
    with pytest.raises(ValueError, match="placement"):
        build_inception_v3(gsf(8), placement="branch1")
    with pytest.raises(ValueError, match="width_mult"):
        build_inception_v3(gsf(8), width_mult=0.5)


def test_inception_v3_shapes_and_num_blocks():
    model = build_inception_v3(gsf(num_frames=2), num_blocks=2).eval()
    assert count_gsf(model) == 2
    with torch.no_grad():
        assert model(torch.randn(4, 3, 96, 96)).shape == (4, 2048)
    assert count_gsf(build_inception_v3(gsf(2))) == 11
    assert count_gsf(build_inception_v3(None)) == 0


# -- pretrained loading ----------------------------------------------------------------------

def test_bninception_loads_cadene_state_dict(tmp_path):
    source = build_bninception(None)
    state = caffe_state_dict(source)
    assert "inception_3a_double_3x3_1_bn.bias" in state and "conv1_7x7_s2_bn.running_mean" in state
    state["conv1_7x7_s2_bn.running_mean"] = torch.randn(64)  # fresh statistics are zeros everywhere
    state["last_linear.weight"], state["last_linear.bias"] = torch.randn(1000, 1024), torch.randn(1000)
    path = tmp_path / "bn_inception.pth"
    torch.save(state, path)

    model = build_bninception(gsf(8), pretrained=path)
    assert count_gsf(model) == 10
    loaded = model.blocks[0].branches["3x3"].get_submodule("3x3_reduce").conv.weight
    assert torch.equal(loaded, state["inception_3a_3x3_reduce.weight"])
    assert torch.equal(model.stem.conv1_7x7_s2.bn.running_mean, state["conv1_7x7_s2_bn.running_mean"])

    del state["inception_5b_pool_proj.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match="inception_5b_pool_proj.weight") as err:
        build_bninception(gsf(8), pretrained=path)
    assert "extra.weight" in str(err.value)


def test_missing_pretrained_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "bn_inception.pth"
    with pytest.raises(FileNotFoundError, match="nope"):
        build_bninception(gsf(8), pretrained=path)
    with pytest.raises(FileNotFoundError, match="nope"):
        build_inception_v3(gsf(8), pretrained=path)


def test_inception_v3_loads_torchvision_state_dict(tmp_path):
    state = build_inception_v3(None).state_dict()
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    path = tmp_path / "inception_v3.pth"
    torch.save(state, path)
    model = build_inception_v3(gsf(8), pretrained=path)
    assert torch.equal(model.Mixed_5b.branch1x1[0].conv.weight, state["Mixed_5b.branch1x1.conv.weight"])
    assert model.transform_input


# -- sizes against the paper -----------------------------------------------------------------

def test_bninception_sizes_representative_rows():
    """TSN baseline and the paper's final GSF model (Table 6 first and last rows)."""
    rows = {int(r["num_gsf"]): r for r in paper_rows("table6_bninception_num_gsf.csv")}
    for n in (0, 10):
        assert_matches_paper(build_bninception(gsf(8), num_blocks=n),
                             float(rows[n]["params_M"]), float(rows[n]["GFLOPs"]))


TABLE1_PLACEMENT = {"Branch 1": "branch1", "Branch 2": "branch2", "Branch 3": "branch3",
                    "Branch 4": "branch4", "All branches": "all"}


@slow
@pytest.mark.parametrize("row", paper_rows("table1_bninception_branch.csv"), ids=lambda r: r["branch"])
def test_table1_branch(row):
    model = build_bninception(gsf(8), TABLE1_PLACEMENT[row["branch"]])
    assert_matches_paper(model, float(row["params_M"]), float(row["GFLOPs"]))


@slow
@pytest.mark.parametrize("row", paper_rows("table2_bninception_shift_ratio.csv"), ids=lambda r: r["shift_percent"])
def test_table2_shift_ratio(row):
    model = build_bninception(gsf(8, shift_ratio=float(row["shift_percent"]) / 100), "branch4")
    assert_matches_paper(model, float(row["params_M"]), float(row["GFLOPs"]))


@slow
@pytest.mark.parametrize("row", paper_rows("table6_bninception_num_gsf.csv"), ids=lambda r: r["num_gsf"])
def test_table6_num_gsf(row):
    model = build_bninception(gsf(8), "branch4", num_blocks=int(row["num_gsf"]))
    assert_matches_paper(model, float(row["params_M"]), float(row["GFLOPs"]))


@slow
def test_table8_inception_v3():
    row = next(r for r in paper_rows("table8_gsf_rows.csv")
               if r["backbone"] == "InceptionV3" and (r["frames"], r["clips"], r["crops"]) == ("8", "1", "1"))
    assert_matches_paper(build_inception_v3(gsf(8)), float(row["params_M"]), float(row["GFLOPs_per_view"]),
                         size=V3_INPUT_SIZE)

