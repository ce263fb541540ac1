"""How fast ``python -m harness.prepare`` turns a Something-Something-V2-like download into frames.

    python benchmarks/prepare_speed.py --videos 1000 --out results/prepare_speed

Writes ``--videos`` webm videos in the official SS-V2 layout (``tests/official_formats.py``:
VP9, 320x240, 12 fps, ``--seconds`` long, plus the official JSON files), then runs the real
command, ``python -m harness.prepare something-v2``, once per ``--workers`` value into a fresh
output folder, and reports videos/s, videos/s per process, frames/s and the disk the output takes
against the videos (``--keep-videos``: the re-encoded videos instead of frames). A second run
over a finished folder shows what resuming costs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def prepare(source: Path, out: Path, workers: int, keep_videos: bool = False) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.prepare", "something-v2", "--source", str(source),
                           "--out", str(out), "--workers", str(workers)] + ["--keep-videos"] * keep_videos,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise SystemExit(f"harness.prepare failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    import official_formats as official

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=4.0, help="video length (SS-V2 averages ~4 s)")
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, len(os.sched_getaffinity(0))}))
    parser.add_argument("--data", type=Path, help="write the download here and keep it (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("results/prepare_speed"))
    parser.add_argument("--keep-videos", action="store_true", help="time --keep-videos (re-encoding) instead of frames")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prepare-speed-"))
    source = args.data or work / "download"
    t0 = time.perf_counter()
    if not (source / "something-something-v2-labels.json").is_file():
        official.many_videos(source, args.videos, seconds=args.seconds, corrupt=False, absent=False)
    print(f"download: {args.videos} videos written in {time.perf_counter() - t0:.0f} s", flush=True)
    videos = disk(source / "20bn-something-something-v2")
    rows = []
    for workers in args.workers:
        out = work / f"out-{workers}"
        seconds = prepare(source, out, workers, args.keep_videos)
        frames = args.videos * round(args.seconds * 12)  # many_videos: 12 fps
        resume = prepare(source, out, workers, args.keep_videos)
        rows.append({"workers": workers, "seconds": round(seconds, 1), "videos_per_s": round(args.videos / seconds, 2),
                     "videos_per_s_per_process": round(args.videos / seconds / workers, 2),
                     "frames_per_s": round(frames / seconds), "resume_s": round(resume, 1),
                     "output_MB": round(disk(out / ("videos" if args.keep_videos else "frames")) / 1e6, 1)})
        print(rows[-1], flush=True)
    report = {"videos": args.videos, "seconds_each": args.seconds, "videos_MB": round(videos / 1e6, 1),
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "runs": rows,
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    made = "H.264 videos (--keep-videos)" if args.keep_videos else "JPEG frames"
    report["output"] = made
    (args.out / "prepare_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"{args.videos} SS-V2-like videos (VP9 320x240, 12 fps, {args.seconds:g} s; {report['videos_MB']} MB) "
             f"-> {made} at height 256", "",
             "| processes | time (s) | videos/s | per process | frames/s | re-run (s) | output (MB) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['seconds']} | {r['videos_per_s']} | {r['videos_per_s_per_process']} | "
              f"{r['frames_per_s']} | {r['resume_s']} | {r['output_MB']} |" for r in rows]
    (args.out / "prepare_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
