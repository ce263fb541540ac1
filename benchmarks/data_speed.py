"""How many clips per second one CPU core turns into model input, for frames and videos in the
real formats, side by side with a plain decode of the same frames.

    python benchmarks/data_speed.py --rounds 5 --clips 16 --gops 250 50 --out results/data_speed

It writes, in a temporary folder (or ``--data DIR``, kept):

- Something-Something V1 frame folders: 176x100 JPEGs (PIL, quality 90), 48 frames per video;
- Kinetics-style mp4: 340x256, 10 s at 25 fps, H.264 (libx264, preset medium, crf 23, 3 B-frames)
  with a keyframe every ``--gops`` frames (250 is FFmpeg's default: one keyframe in a 10 s clip;
  50 is two seconds). Every video is a textured scene panning under moving blocks with sensor
  noise, so the encoder makes I, P and B frames as it does on real footage.

Then, in this one process pinned to one core (one torch thread), round-robin so that machine
noise hits every pipeline alike, the median over rounds of clips/s for:

- ``train``: ``ClipDataset`` training clips (TSN sampling, 8 frames, multi-scale crop, 224 px);
- ``test``: the efficiency protocol (1 clip of 8 frames, short side 256, centre crop 224);
- videos with both decoders: ``sequential`` (every frame from the first up to the last one a
  clip needs: the decoder before the seeking one) and ``seeking`` (the default);
- ``plain decode``: the same frames, decoded and nothing else: PIL open + RGB of the clip's
  JPEGs; for video, PyAV decoding from the first frame through the last one the clip needs.

Training clips/s per core times the DataLoader workers (``data.workers``: the trial's CPUs minus
one by default) is what a trial can feed its GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness.data import DataConfig, build_datasets  # noqa: E402
from harness.data import transforms as tf  # noqa: E402

FRAMES = 8


def scene(k: int, width: int, height: int, rng: np.random.Generator, texture: np.ndarray) -> np.ndarray:
    """Frame k of a panning textured scene with two moving blocks and noise, uint8 (H, W, 3)."""
    dx, dy = int(24 + 20 * np.sin(k / 23)), int(12 + 10 * np.cos(k / 31))
    img = texture[dy:dy + height, dx:dx + width].copy()
    for speed, row, colour in ((3, height // 3, (240, 60, 20)), (-2, 2 * height // 3, (30, 200, 90))):
        x = (speed * k) % (width - width // 8)
        img[row - height // 12:row + height // 12, x:x + width // 8] = colour
    noise = rng.integers(-5, 6, img.shape, dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def texture_for(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, ((height + 64) // 8, (width + 64) // 8, 3), dtype=np.uint8)
    return np.kron(cells, np.ones((8, 8, 1), np.uint8))


def write_something(root: Path, videos: int, frames: int = 48) -> dict:
    """SS-V1 layout: frames/<id>/00001.jpg ..., 'folder num_frames label' lists, categories."""
    lines = []
    for v in range(videos):
        folder = root / "frames" / str(v)
        folder.mkdir(parents=True, exist_ok=True)
        rng, texture = np.random.default_rng(v), texture_for(176, 100, v)
        for k in range(frames):
            Image.fromarray(scene(k, 176, 100, rng, texture)).save(folder / f"{k + 1:05d}.jpg", quality=90)
        lines.append(f"frames/{v} {frames} {v % 2}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "categories.txt").write_text("pushing something left\npushing something right\n")
    return dict(dataset="something-v1", root=str(root), train_list="list.txt", val_list="list.txt",
                categories="categories.txt")


def write_kinetics(root: Path, videos: int, gop: int, seconds: int = 10, fps: int = 25) -> dict:
    """Kinetics layout: videos/<id>.mp4 and 'path label' lists."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for v in range(videos):
        path = root / "videos" / f"{v}.mp4"
        rng, texture = np.random.default_rng(v), texture_for(340, 256, v)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = 340, 256, "yuv420p"
            stream.options = {"preset": "medium", "crf": "23", "g": str(gop), "bf": "3"}
            for k in range(seconds * fps):
                frame = av.VideoFrame.from_ndarray(scene(k, 340, 256, rng, texture), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        lines.append(f"videos/{v}.mp4 {v % 2}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "categories.txt").write_text("abseiling\nair drumming\n")
    return dict(dataset="kinetics400", root=str(root), train_list="list.txt", val_list="list.txt",
                categories="categories.txt")


def plain_jpegs(ds, i: int, positions: np.ndarray) -> None:
    folder, count, _ = ds.source.samples[i]
    for k in tf.frame_indices(positions, count):
        with Image.open(folder / ds.source.template.format(int(k) + 1)) as img:
            np.asarray(img.convert("RGB"))


def plain_video(ds, i: int, positions: np.ndarray) -> None:
    path = ds.source.samples[i][0]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        wanted = set(tf.frame_indices(positions, stream.frames).tolist())
        for k, frame in enumerate(container.decode(stream)):
            if k in wanted:
                frame.to_ndarray(format="rgb24")
            if k >= max(wanted):
                break


def pipelines(cfg: dict, videos: int) -> dict:
    """name -> function(round) that produces ``videos`` clips (the same clips in every round)."""
    train, test = build_datasets(DataConfig(**cfg), num_frames=FRAMES)
    draws = [(i % len(train), 1000 + i) for i in range(videos)]
    rng = np.random.default_rng(0)
    positions = [tf.train_positions(FRAMES, rng) for _ in range(videos)]

    def clips(ds, seek=None):
        def run():
            if seek is not None:
                ds.source.seek = seek
            for index in (draws if ds.train else range(videos)):
                ds[index if ds.train else index % len(ds)]
        return run

    plain = plain_jpegs if cfg["dataset"] == "something-v1" else plain_video
    out = {"plain decode": lambda: [plain(train, i % len(train), p) for i, p in enumerate(positions)]}
    if cfg["dataset"] == "something-v1":
        out |= {"train": clips(train), "test": clips(test)}
    else:
        out |= {"train sequential": clips(train, False), "train seeking": clips(train, True),
                "test sequential": clips(test, False), "test seeking": clips(test, True)}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clips", type=int, default=16, help="clips per pipeline per round")
    p.add_argument("--videos", type=int, default=8, help="videos per dataset")
    p.add_argument("--gops", type=int, nargs="+", default=[250, 50], help="keyframe intervals of the mp4 sets")
    p.add_argument("--data", type=Path, help="where the generated data goes (default: a temporary folder)")
    p.add_argument("--out", type=Path, help="folder for data_speed.json and data_speed.png")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # per core: one core, whatever threads start
    data = args.data or Path(tempfile.mkdtemp(prefix="data_speed-"))
    t0 = time.time()
    sets = {"SS-V1 frames 176x100": write_something(data / "something", args.videos)}
    for gop in args.gops:
        sets[f"mp4 340x256 gop {gop}"] = write_kinetics(data / f"kinetics-gop{gop}", args.videos, gop)
    print(f"data in {data} ({time.time() - t0:.0f} s to write); {platform.processor() or platform.machine()}, "
          f"1 core, torch {torch.__version__}, PyAV {av.__version__}", flush=True)

    runs = {name: pipelines(cfg, args.clips) for name, cfg in sets.items()}
    for fns in runs.values():  # warm-up: imports, caches, first file opens
        for fn in fns.values():
            fn()
    rates: dict[str, dict[str, list[float]]] = {s: {k: [] for k in fns} for s, fns in runs.items()}
    for r in range(args.rounds):
        for s, fns in runs.items():
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                rates[s][k].append(args.clips / (time.perf_counter() - t))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    table = {s: {k: statistics.median(v) for k, v in by.items()} for s, by in rates.items()}
    print(f"\nclips/s per core (median of {args.rounds} rounds of {args.clips} clips, {FRAMES} frames, 224 px)\n")
    print("| data | pipeline | clips/s | vs sequential |")
    print("|---|---|---:|---:|")
    for s, by in table.items():
        for k, v in by.items():
            base = by.get(k.replace("seeking", "sequential")) if k.endswith("seeking") else None
            print(f"| {s} | {k} | {v:.1f} | {f'{v / base:.2f}x' if base else ''} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "data_speed.json").write_text(json.dumps({"clips_per_s": table, "rounds": rates,
                                                               "clips": args.clips, "frames": FRAMES}, indent=1))
        plot(table, args.out / "data_speed.png")
        print(f"\nwrote {args.out}/data_speed.json, data_speed.png")


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(4.2 * len(table), 3.6), squeeze=False)
    for ax, (name, by) in zip(axes[0], table.items()):
        colours = ["#bbbbbb" if "plain" in k else "#d08c60" if "sequential" in k else "#4c78a8" for k in by]
        ax.barh(list(by), list(by.values()), color=colours)
        for y, v in enumerate(by.values()):
            ax.text(v, y, f" {v:.0f}", va="center", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("clips/s on one core")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
