"""benchmarks/data_speed.py end to end at a tiny size (make test-slow): it runs, prints every
pipeline it promises with a ratio against today's loader, and its JSON holds the same numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_data_speed_prints_every_pipeline_and_writes_its_json(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "benchmarks/data_speed.py", "--rounds", "1", "--clips", "2", "--videos", "2",
                           "--gops", "250", "--frame-sizes", "176x100", "--prepared-gops", "8", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = json.loads((out / "data_speed.json").read_text())["clips_per_s"]
    frames, video = table["SS-V1 frames 176x100"], table["mp4 340x256 gop 250"]
    assert {"train: today (f3a7cf9)", "train: reference (fast=False)", "train: chosen", "test 2x3: chosen"} <= set(frames)
    assert {"train: today (f3a7cf9)", "train: chosen", "train: prepared gop 8",
            "train: prepared gop 8, packets scanned (note not used)", "train: prepared gop 8, B-frames (x264's bf 3)",
            "train: prepared gop 8, CABAC + deblocking (no tune fastdecode)"} <= set(video)
    for name, by in table.items():
        today = by.get("train: today (f3a7cf9)")
        for k, v in by.items():
            assert v > 0
            if k.startswith("train: ") and "today" not in k and "reference" not in k:
                # every printed ratio is this row's clips/s over today's, to the printed digits
                assert f"| {name} | {k} | {v:.1f} | {v / today:.2f}x vs today (f3a7cf9) |" in proc.stdout
    assert "max |diff| 1" in proc.stdout or "max |diff| 0" in proc.stdout
    assert "1 workers" in proc.stdout and (out / "data_speed.png").stat().st_size > 0
