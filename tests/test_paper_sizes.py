"""The size columns of Tables 1-4, 6, 7 from the shipped specs: params within 0.5%, GFLOPs within 1.5%.

Each row is built from the spec's paper profile exactly as a trial builds it. The default run
checks one row per table (each fvcore trace of a full model at 224 px takes seconds here);
``make test-slow`` (pytest -m slow) checks every row.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gsf import build_model
from harness.measure import count_flops, count_params
from harness.spec import load_spec
from reports.render import paper_values

ROOT = Path(__file__).resolve().parent.parent
TABLES = ["table1_bninception_branch", "table2_bninception_shift_ratio", "table3_resnet50_placement",
          "table4_resnet50_shift_ratio", "table6_bninception_num_gsf", "table7_resnet50_num_gsf"]
FAST = {"table1_bninception_branch": "All branches", "table2_bninception_shift_ratio": "25%",
        "table3_resnet50_placement": "After conv1", "table4_resnet50_shift_ratio": "25%",
        "table6_bninception_num_gsf": "+ 5 GSF", "table7_resnet50_num_gsf": "+ 16 GSF"}


def _rows():
    for stem in TABLES:
        spec = load_spec(ROOT / "ablations" / f"{stem}.yaml", "paper")
        for trial in spec.trials:
            marks = [] if FAST[stem] == trial.variant else [pytest.mark.slow]
            yield pytest.param(spec, trial, id=f"{stem}:{trial.variant}", marks=marks)


@pytest.mark.parametrize("spec,trial", list(_rows()))
def test_size_columns_match_the_paper(spec, trial):
    import pandas as pd

    paper = paper_values(pd.read_csv(spec.paper_table), trial.paper_row)
    assert {"paper_params_M", "paper_GFLOPs"} <= paper.keys(), "every row of these tables has the paper's sizes"
    torch.manual_seed(0)
    model = build_model(**{**trial.config["model"], "pretrained": None})  # sizes do not depend on the weights
    params_m = count_params(model) / 1e6
    gflops = count_flops(model, trial.config["model"]["num_frames"], trial.config["measure"]["input_size"])[0] / 1e9
    assert params_m == pytest.approx(paper["paper_params_M"], rel=0.005), f"params {params_m:.3f}M"
    assert gflops == pytest.approx(paper["paper_GFLOPs"], rel=0.015), f"GFLOPs {gflops:.3f}"
