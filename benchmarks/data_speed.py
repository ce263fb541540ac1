"""How many clips per second one CPU core turns into model input, for frames and videos in the
real formats: today's loader, each candidate of a faster one, and the chosen one, side by side.

    python benchmarks/data_speed.py --rounds 5 --clips 16 --gops 250 50 --out results/data_speed
    python benchmarks/data_speed.py --gops   # frame folders only
    python benchmarks/data_speed.py --gops 250 --frame-sizes   # videos only: originals and prepared

It writes, in a temporary folder (or ``--data DIR``, kept):

- frame folders in Something-Something V1's layout, one set per ``--frame-sizes``: 176x100 (SS-V1)
  and 340x256 (the short side 256 of prepared Kinetics / SS-V2-sized frames) JPEGs (PIL, quality
  90), 48 frames per video;
- Kinetics-style mp4: 340x256, 10 s at 25 fps, H.264 (libx264, preset medium, crf 23, 3 B-frames)
  with a keyframe every ``--gops`` frames (250 is FFmpeg's default: one keyframe in a 10 s clip;
  50 is two seconds). Every video is a textured scene panning under moving blocks with sensor
  noise, so the encoder makes I, P and B frames as it does on real footage.

Then, in this one process pinned to one core (one torch thread), round-robin so that machine
noise hits every pipeline alike, the median over rounds of clips/s for:

- ``train``: ``ClipDataset`` training clips (TSN sampling, 8 frames, multi-scale crop, 224 px);
  ``test``: the efficiency protocol (1 clip of 8 frames, short side 256, centre crop 224);
  ``test 2x3``: the accuracy protocol (2 clips x 3 crops);
- frame folders: ``today``, the loader of commit ``--baseline`` (f3a7cf9, before #20), loaded
  from git as it was; ``reference``, the same path kept in this tree (``FrameFolders(fast=False)``);
  each candidate (how JPEGs are decoded x how the clip is resampled); and ``chosen``, the default
  loader; ratios are against ``today``;
- videos with both decoders: ``sequential`` (every frame from the first up to the last one a
  clip needs: the decoder before the seeking one) and ``seeking`` (the default); ``today`` on the
  original file; ``prepared gop G``: the first mp4 set re-encoded as ``harness.prepare
  --keep-videos --gop G`` does (``--prepared-gops``), and at gop 8 with each of its encoding
  choices undone in turn (``ENCODING_CANDIDATES``; ``--no-encoding-candidates`` skips them);
- ``plain decode``: the same frames, decoded and nothing else: PIL open + RGB of the clip's
  JPEGs (and PIL's draft mode at half size, which the transforms cannot use: see the notes
  printed); for video, PyAV decoding from the first frame through the last one the clip needs.

Last, with every core: training clips/s of the chosen path through a ``DataLoader`` (batches of
8, collation included) in process (1 and all torch threads) and with 1, 2 and the machine's
cores in loader workers. Training clips/s per core times the DataLoader workers
(``data.workers``: the trial's CPUs minus one by default) is what a trial can feed its GPU.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness.data import DataConfig, build_datasets  # noqa: E402
from harness.data import transforms as tf  # noqa: E402
from harness.data import datasets  # noqa: E402
from harness.data.datasets import (JPEG_DECODERS, default_jpeg_decoder, prepared_layout, read_jpegs,  # noqa: E402
                                   read_jpegs_reference)

FRAMES = 8
REPO = Path(__file__).resolve().parent.parent
BASELINE = "f3a7cf9"  # the frame loader before #20


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


def write_something(root: Path, videos: int, frames: int = 48, size: tuple[int, int] = (176, 100)) -> dict:
    """SS-V1 layout: frames/<id>/00001.jpg ..., 'folder num_frames label' lists, categories."""
    lines = []
    for v in range(videos):
        folder = root / "frames" / str(v)
        folder.mkdir(parents=True, exist_ok=True)
        rng, texture = np.random.default_rng(v), texture_for(*size, v)
        for k in range(frames):
            Image.fromarray(scene(k, *size, rng, texture)).save(folder / f"{k + 1:05d}.jpg", quality=90)
        lines.append(f"frames/{v} {frames} {v % 2}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "categories.txt").write_text("pushing something left\npushing something right\n")
    return dict(dataset="something-v1", root=str(root), train_list="list.txt", val_list="list.txt",
                categories="categories.txt")


def write_kinetics(root: Path, videos: int, gop: int, seconds: int = 10, fps: int = 25) -> dict:
    """Kinetics layout: videos/<id>.mp4 and 'path label' lists."""
    import av  # here, not at the top: gpu_check.py writes frame folders with this module, without PyAV

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


def plain_jpegs_draft(ds, i: int, positions: np.ndarray) -> None:
    """PIL's draft mode: libjpeg scales by 1/2 while it decodes (the DCT-domain reduce)."""
    folder, count, _ = ds.source.samples[i]
    for k in tf.frame_indices(positions, count):
        with Image.open(folder / ds.source.template.format(int(k) + 1)) as img:
            img.draft("RGB", (img.width // 2, img.height // 2))
            np.asarray(img.convert("RGB"))


def plain_video(ds, i: int, positions: np.ndarray) -> None:
    import av

    path = ds.source.samples[i][0]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        wanted = set(tf.frame_indices(positions, stream.frames).tolist())
        for k, frame in enumerate(container.decode(stream)):
            if k in wanted:
                frame.to_ndarray(format="rgb24")
            if k >= max(wanted):
                break


# --- frame-folder candidates: how the JPEGs are decoded x how the clip is resampled ------------

READERS = {  # folder, count, files -> uint8 (T, 3, H, W): an array (PIL open) or a channels-last tensor
    "PIL open": read_jpegs_reference,  # the loader before #20: PIL reads each file itself
    "PIL from bytes": lambda folder, count, files: read_jpegs(files, JPEG_DECODERS["pil"]),
    "torchvision": lambda folder, count, files: read_jpegs(files, JPEG_DECODERS["torchvision"]),
}
FORMS = {  # what ClipDataset resamples: float (today's transforms) or uint8 in either layout
    "float resize": lambda f: (torch.from_numpy(f) if isinstance(f, np.ndarray) else f).contiguous().float(),
    "uint8 resize NCHW": lambda f: (torch.from_numpy(f) if isinstance(f, np.ndarray) else f).contiguous(),
    "uint8 resize channels-last": lambda f: torch.from_numpy(f) if isinstance(f, np.ndarray) else f,
}
CANDIDATES = [("PIL from bytes", "float resize"), ("torchvision", "float resize"),
              ("PIL open", "uint8 resize channels-last"), ("PIL from bytes", "uint8 resize channels-last"),
              ("torchvision", "uint8 resize NCHW"), ("torchvision", "uint8 resize channels-last")]


class Candidate:
    """A frame-folder source that reads a clip with ``reader`` and hands it on as ``form``."""

    def __init__(self, source, reader: str, form: str):
        self.source, self.samples, self.template = source, source.samples, source.template
        self.reader, self.form = READERS[reader], FORMS[form]

    def label(self, i: int) -> int:
        return self.source.label(i)

    def read(self, i: int, clips: list[np.ndarray]) -> list:
        folder, count, _ = self.samples[i]
        return [self.form(self.reader(folder, count, [folder / self.template.format(int(k) + 1)
                                                      for k in tf.frame_indices(p, count)])) for p in clips]


def with_source(ds, source):
    out = copy.copy(ds)
    out.source = source
    return out


def baseline_data(rev: str):
    """harness.data as commit ``rev`` had it (git show into a temporary package), or None."""
    try:
        names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", rev, "harness/data/"],
                               capture_output=True, text=True, check=True).stdout.split()
        package = Path(tempfile.mkdtemp(prefix="data_speed-baseline-")) / f"data_{rev}"
        package.mkdir()
        for name in names:
            if name.endswith(".py"):
                text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{name}"],
                                      capture_output=True, text=True, check=True).stdout
                (package / Path(name).name).write_text(text)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"today's loader (commit {rev}) not loaded from git ({exc}): ratios are against the in-tree reference")
        return None
    sys.path.insert(0, str(package.parent))
    return importlib.import_module(package.name)


def pipelines(cfg: dict, videos: int, baseline=None, prepared: dict | None = None) -> dict:
    """name -> function(round) that produces ``videos`` clips (the same clips in every round).
    ``prepared``: gop -> the data section of this video set re-encoded by ``harness.prepare``."""
    train, test = build_datasets(DataConfig(**cfg), num_frames=FRAMES)
    draws = [(i % len(train), 1000 + i) for i in range(videos)]
    rng = np.random.default_rng(0)
    positions = [tf.train_positions(FRAMES, rng) for _ in range(videos)]

    def clips(ds, seek=None, note=True):
        def run():
            if seek is not None:
                ds.source.seek = seek
            if not note:  # the loader as if the file said nothing of its layout: it scans the packets
                datasets.prepared_layout = lambda container, stream: None
            try:
                for index in (draws if ds.train else range(videos)):
                    ds[index if ds.train else index % len(ds)]
            finally:
                datasets.prepared_layout = prepared_layout
        return run

    if cfg["dataset"] != "something-v1":
        out = {"plain decode": lambda: [plain_video(train, i % len(train), p) for i, p in enumerate(positions)],
               "train sequential": clips(train, False), "train seeking": clips(train, True),
               "test sequential": clips(test, False), "test seeking": clips(test, True)}
        if baseline is not None:  # today's loader on this file: seeking decoder, float resampling
            old_train, old_test = baseline.build_datasets(baseline.DataConfig(**cfg), num_frames=FRAMES)
            out |= {f"train: today ({BASELINE})": clips(old_train), f"test: today ({BASELINE})": clips(old_test)}
        out |= {"train: chosen": clips(train, True), "test: chosen": clips(test, True)}
        for name, section in (prepared or {}).items():
            section = dict(section)
            note = section.pop("note")
            p_train, p_test = build_datasets(DataConfig(**section), num_frames=FRAMES)
            out |= {f"train: prepared {name}": clips(p_train, note=note),
                    f"test: prepared {name}": clips(p_test, note=note)}
        return out
    _, accuracy = build_datasets(DataConfig(**cfg, protocol="accuracy"), num_frames=FRAMES)
    reference = {name: copy.copy(ds) for name, ds in (("train", train), ("test", test), ("test 2x3", accuracy))}
    for ds in reference.values():
        ds.source = copy.copy(ds.source)
        ds.source.fast = False
    out = {"plain decode": lambda: [plain_jpegs(train, i % len(train), p) for i, p in enumerate(positions)],
           "plain decode, PIL draft 1/2": lambda: [plain_jpegs_draft(train, i % len(train), p)
                                                  for i, p in enumerate(positions)]}
    today = (dict(zip(("train", "test"), baseline.build_datasets(baseline.DataConfig(**cfg), num_frames=FRAMES)))
             | {"test 2x3": baseline.build_datasets(baseline.DataConfig(**cfg, protocol="accuracy"), FRAMES)[1]}
             if baseline is not None else {})
    for kind in ("train", "test", "test 2x3"):
        if kind in today:
            out[f"{kind}: today ({BASELINE})"] = clips(today[kind])
        out[f"{kind}: reference (fast=False)"] = clips(reference[kind])
        if kind == "train":
            for reader, form in CANDIDATES:
                out[f"train: {reader}, {form}"] = clips(with_source(train, Candidate(train.source, reader, form)))
        out[f"{kind}: chosen"] = clips({"train": train, "test": test, "test 2x3": accuracy}[kind])
    return out


# harness.prepare's encoding at the default GOP with one of its choices undone at a time: what each
# is worth. (name, x264 options over extract.X264, whether the loader may take the file's note).
ENCODING_CANDIDATES = [("gop 8, packets scanned (note not used)", {}, False),
                       ("gop 8, B-frames (x264's bf 3)", {"bf": "3"}, True),
                       ("gop 8, CABAC + deblocking (no tune fastdecode)", {"tune": None}, True)]


def prepare_videos(cfg: dict | None, gops: list[int], data: Path, candidates: bool = True) -> dict[str, dict]:
    """The videos of ``cfg`` re-encoded as ``python -m harness.prepare ... --keep-videos --gop G``
    does (``harness.prepare.extract.reencode``, short side 256), and the ``ENCODING_CANDIDATES``:
    name -> their data section (plus ``"note": False`` where the loader must scan the packets)."""
    from harness.prepare import extract

    out = {}
    if cfg is None:
        return out
    root = Path(cfg["root"])
    lines = (root / cfg["train_list"]).read_text().splitlines()
    runs = [(f"gop {gop}", gop, {}, True) for gop in gops]
    runs += [(name, 8, options, note) for name, options, note in ENCODING_CANDIDATES] if candidates else []
    for name, gop, options, note in runs:
        folder = data / ("prepared-" + "".join(c if c.isalnum() else "-" for c in name))
        x264 = {k: v for k, v in {**extract.X264, **options}.items() if v is not None}  # None: the option undone
        listed = []
        for line in lines:
            path, label = line.rsplit(None, 1)
            target = folder / "videos" / Path(path).name
            if not target.is_file():
                extract.reencode(root / path, target, extract.Size(short_side=256), gop=gop, x264=x264)
            listed.append(f"videos/{Path(path).name} {label}\n")
        (folder / "list.txt").write_text("".join(listed))
        (folder / "categories.txt").write_text((root / cfg["categories"]).read_text())
        out[name] = {**cfg, "root": str(folder), "train_list": "list.txt", "val_list": "list.txt", "note": note}
    return out


def disk_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir()) / 1e6


def worker_scaling(cfg: dict, clips: int, rounds: int, cores: int) -> dict[str, float]:
    """Training clips/s of the chosen path through a DataLoader (batches of 8, collated as a trial's
    loader does), median over ``rounds`` epochs of ``clips`` after one to start the workers."""
    from torch.utils.data import DataLoader

    train, _ = build_datasets(DataConfig(**cfg), num_frames=FRAMES)
    draws = [(i % len(train), 1000 + i) for i in range(clips)]
    out = {}
    for workers, threads in [(0, 1), (0, cores)] + [(w, 1) for w in sorted({1, 2, cores})]:
        torch.set_num_threads(threads)
        extra = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
        loader = DataLoader(train, batch_size=8, sampler=draws, num_workers=workers, **extra)
        rates = []
        for r in range(rounds + 1):
            t = time.perf_counter()
            for _ in loader:
                pass
            if r:
                rates.append(clips / (time.perf_counter() - t))
        del loader
        name = f"{workers} workers" if workers else f"in process, {threads} torch thread{'s' if threads > 1 else ''}"
        out[name] = statistics.median(rates)
    torch.set_num_threads(1)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clips", type=int, default=16, help="clips per pipeline per round")
    p.add_argument("--videos", type=int, default=8, help="videos per dataset")
    p.add_argument("--frame-sizes", nargs="*", default=["176x100", "340x256"],
                   help="WxH of the JPEG frame-folder sets (none: no frame sets)")
    p.add_argument("--gops", type=int, nargs="*", default=[250, 50],
                   help="keyframe intervals of the mp4 sets (none: no video sets)")
    p.add_argument("--no-encoding-candidates", action="store_true",
                   help="time harness.prepare's encoding at --prepared-gops only, not ENCODING_CANDIDATES")
    p.add_argument("--prepared-gops", type=int, nargs="*", default=[16, 8, 4],
                   help="the first mp4 set re-encoded by harness.prepare --keep-videos with these --gop values")
    p.add_argument("--baseline", default=BASELINE, help="commit whose frame loader is 'today' (git show)")
    p.add_argument("--data", type=Path, help="where the generated data goes (default: a temporary folder)")
    p.add_argument("--out", type=Path, help="folder for data_speed.json and data_speed.png")
    args = p.parse_args(argv)

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cores[0]})  # per core: one core, whatever threads start
    data = args.data or Path(tempfile.mkdtemp(prefix="data_speed-"))
    t0 = time.time()
    sets = {}
    for size in args.frame_sizes:
        w, h = map(int, size.split("x"))
        name = "SS-V1 frames 176x100" if (w, h) == (176, 100) else f"frames {w}x{h}"
        sets[name] = write_something(data / f"something-{w}x{h}", args.videos, size=(w, h))
    for gop in args.gops:
        sets[f"mp4 340x256 gop {gop}"] = write_kinetics(data / f"kinetics-gop{gop}", args.videos, gop)
    prepared = prepare_videos(next((cfg for cfg in sets.values() if cfg["dataset"] != "something-v1"), None),
                              args.prepared_gops, data, not args.no_encoding_candidates)
    baseline = baseline_data(args.baseline)
    import av

    print(f"data in {data} ({time.time() - t0:.0f} s to write); {platform.processor() or platform.machine()}, "
          f"1 core, torch {torch.__version__}, PyAV {av.__version__}, Pillow {Image.__version__}; "
          f"today: commit {args.baseline}{'' if baseline else ' (not loaded)'}; "
          f"chosen JPEG decoder: {default_jpeg_decoder()}", flush=True)

    first_video = next((name for name, cfg in sets.items() if cfg["dataset"] != "something-v1"), None)
    runs = {name: pipelines(cfg, args.clips, baseline, prepared if name == first_video else None)
            for name, cfg in sets.items()}
    if prepared:
        print("prepared videos (" + ", ".join(f"{name}: {disk_mb(Path(c['root']) / 'videos'):.2f} MB"
                                               for name, c in prepared.items())
              + f") against the originals' {disk_mb(Path(sets[first_video]['root']) / 'videos'):.2f} MB", flush=True)
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
    print("| data | pipeline | clips/s | ratio |")
    print("|---|---|---:|---:|")
    for s, by in table.items():
        for k, v in by.items():
            if k.endswith("seeking"):
                base, against = by.get(k.replace("seeking", "sequential")), "sequential"
            elif ":" in k:
                kind = k.split(":")[0]
                against = (f"today ({args.baseline})" if f"{kind}: today ({args.baseline})" in by
                           else "reference (fast=False)")
                base = by.get(f"{kind}: {against}")
            else:
                base = None
            print(f"| {s} | {k} | {v:.1f} | {f'{v / base:.2f}x vs {against}' if base else ''} |")

    scaling = {}
    if sets and args.frame_sizes:
        for s, cfg in sets.items():
            if cfg["dataset"] == "something-v1":
                print_agreement(s, cfg, baseline)
        name, cfg = next(iter(sets.items()))
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(cores))
        print(f"\n{name}, chosen path, training clips/s through a DataLoader (batches of 8) on {len(cores)} cores "
              f"(median of {args.rounds} epochs of {8 * args.clips} clips)\n")
        scaling = worker_scaling(cfg, 8 * args.clips, args.rounds, len(cores))
        one = scaling.get("1 workers")
        print("| loader | clips/s | per worker vs 1 worker |")
        print("|---|---:|---:|")
        for k, v in scaling.items():
            n = int(k.split()[0]) if k.endswith("workers") else 0
            print(f"| {k} | {v:.1f} | {f'{v / n / one:.2f}' if n and one else ''} |")
        print("\nPIL draft (libjpeg's DCT-domain 1/2 reduce) would decode only where a frame is at least twice the "
              "side it is resampled to. The training crop's smallest region is 0.66 x the short side (66 px of 100, "
              "168 of 256) resized up to 224; the test view resizes the short side to 256: no frame here qualifies, "
              "so the loaders do not use it (its plain-decode row shows what it would save).")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "data_speed.json").write_text(json.dumps({
            "clips_per_s": table, "rounds": rates, "clips": args.clips, "frames": FRAMES,
            "loader_scaling_clips_per_s": scaling, "baseline": args.baseline}, indent=1))
        plot(table, args.out / "data_speed.png")
        print(f"\nwrote {args.out}/data_speed.json, data_speed.png")


def print_agreement(name: str, cfg: dict, baseline) -> None:
    """How far the chosen path's pixels are from today's on the benchmark's clips."""
    diffs = []
    for protocol in ("efficiency", "accuracy"):
        train, test = build_datasets(DataConfig(**cfg, protocol=protocol), num_frames=FRAMES)
        if baseline is not None:
            old_train, old_test = baseline.build_datasets(baseline.DataConfig(**cfg, protocol=protocol), FRAMES)
        else:
            old_train, old_test = (with_source(ds, copy.copy(ds.source)) for ds in (train, test))
            old_train.source.fast = old_test.source.fast = False
        for i in range(len(train)):
            for new, old, index in ((train, old_train, (i, 7)), (test, old_test, i)):
                diffs.append((new[index][0].int() - old[index][0].int()).abs())
    mean = float(torch.cat([d.flatten() for d in diffs]).float().mean())
    print(f"{name}: chosen path vs today, uint8 pixels over {len(diffs)} clips: max |diff| "
          f"{max(int(d.max()) for d in diffs)}, mean |diff| {mean:.3f}")


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tall = max(len(by) for by in table.values())
    fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 1.2 + 0.3 * tall), squeeze=False)
    for ax, (name, by) in zip(axes[0], table.items()):
        colours = ["#bbbbbb" if "plain" in k else "#d08c60" if "sequential" in k or "today" in k or "reference" in k
                   else "#4c78a8" for k in by]
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
