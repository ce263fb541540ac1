"""Print how far ``layout="release"`` + ``convert_state_dict`` is from our statements of the
authors' release, and what converting each released model's state dict does with its keys.

    .venv/bin/python tests/release_diffs.py

The tests (tests/test_release.py) hold the same quantities to tolerances; this prints the numbers.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from release_reference import random_release_weights, release_gsf_forward  # noqa: E402
from release_models import random_release_state, release_video_forward  # noqa: E402
from test_release import BACKBONES, CASES, max_diffs  # noqa: E402

from gsf import GSF, build_model  # noqa: E402
from gsf.release import convert_state_dict, describe, release_names  # noqa: E402


def module_diffs() -> None:
    print("module: max |ours - release| over (C, T, percent) =", ", ".join(map(str, CASES)))
    print(f"{'dtype':8} {'impl':10} {'mode':6} {'output':>9} {'input grad':>11} {'run. stats':>11} {'max |out|':>9}")
    for dtype in (torch.float64, torch.float32):
        for impl in ("reference", "fast"):
            for training in (False, True):
                worst = [0.0, 0.0, 0.0, 0.0]
                for channels, t, ratio in CASES:
                    dy, dg, ds, y_release, *_ = max_diffs(channels, t, ratio, training, impl, dtype)
                    worst = [max(a, b) for a, b in zip(worst, (dy, dg, ds, y_release.abs().max().item()))]
                print(f"{str(dtype).removeprefix('torch.'):8} {impl:10} {'train' if training else 'eval':6} "
                      f"{worst[0]:9.2e} {worst[1]:11.2e} {worst[2]:11.2e} {worst[3]:9.2f}")
    # The contrast: our paper layout on the same weights (C=16, T=4, 100%), as in the issue.
    w = random_release_weights(16, 100, dtype=torch.float64)
    x = torch.randn(8, 16, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    paper = GSF(16, 4, layout="paper").double().eval()
    paper.load_state_dict(convert_state_dict(w))
    y = release_gsf_forward(x, w, 4, 100)
    print(f"paper layout, same weights (float64, eval): max |diff| {(paper(x) - y).abs().max().item():.2f} "
          f"on outputs of max {y.abs().max().item():.2f}")


def model_keys() -> None:
    print("\nwhole released models (random values under every release key, DataParallel 'module.' prefix):")
    print(f"{'backbone':13} {'release keys':>12} {'converted':>9} {'ours':>5} {'left over':>9} {'missing':>7} "
          f"{'GSF':>4} {'ratio':>5} {'max |ours - release| (f64 logits)':>34}")
    for i, backbone in enumerate(BACKBONES):
        state = random_release_state(backbone, seed=i)
        found = describe(state)
        converted = convert_state_dict(state)
        model = build_model(backbone=backbone, num_frames=2, shift_ratio=found.shift_ratio, layout="release")
        ours = model.state_dict()
        result = model.load_state_dict(converted, strict=True)
        used = {f"module.{n}" for n in release_names(model, backbone).values()}
        leftover, missing = set(state) - used, set(ours) - set(converted)
        assert not (leftover or missing or result.missing_keys or result.unexpected_keys)
        size = BACKBONES[backbone][3]
        clips = torch.randn(1, 2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        model = model.double().eval()
        with torch.no_grad():
            diff = (model(clips) - release_video_forward(
                backbone, {k: v.double() if v.is_floating_point() else v for k, v in state.items()}, clips)).abs().max()
        print(f"{backbone:13} {len(state):12} {len(converted):9} {len(ours):5} {len(leftover):9} {len(missing):7} "
              f"{len(found.modules):4} {found.shift_ratio:5} {diff.item():34.2e}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    module_diffs()
    model_keys()
