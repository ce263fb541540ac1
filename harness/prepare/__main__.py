"""``python -m harness.prepare SOURCE ...``: the official downloads -> lists, class order, frames
(or checked videos) where the ``paper`` profiles read them; ``weights NAME``: ImageNet weights.

Output (``--out``, default ``data/<dataset>``; the source is never written to)::

    category.txt                       class names, one a line; line i is label i
    train_videofolder.txt, val_...     "frames/<id> <num_frames> <label>"   (frames, the default)
    train_videos.txt, val_videos.txt   "videos/<path> <label>"              (--keep-videos)
    frames/<id>/<template>             extracted frames, or a link to SS-V1's frame folders
    videos -> the download's videos    (--keep-videos)
    prepare_failures.txt               samples left out of the lists and why (exit 1)
    prepare.json                       what was prepared, from where, with which command

Exit 0: all prepared; 1: done, but some samples failed (listed); 2: bad command line, download
or disk space, with one line naming the file; 130: interrupted (a re-run resumes).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import CATEGORIES, LISTS, data_command, sources
from .extract import Progress, Size, WriteError, count_complete, extract_frames, folder_bytes, reencode, run_parallel
from .sources import Download, SourceError
from ..data.config import FRAME_TEMPLATES as TEMPLATES

ESTIMATE_SAMPLE = 4  # videos extracted first, to estimate the disk the rest will need


class Refused(Exception):
    """Exit 2 with this one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, no usage dump
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from . import weights

    parser = _Parser(prog="python -m harness.prepare", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="docs/real_data.md has the details.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SOURCE", parser_class=_Parser)
    for name, what in (("something-v1", "Something-Something V1 (frames in the download: lists and links only)"),
                       ("something-v2", "Something-Something V2 (webm -> frames at height 256, or --keep-videos)"),
                       ("kinetics400", "Kinetics-400 (the crawler's mp4s -> frames at --short-side, or --keep-videos)"),
                       ("diving48", "Diving48 V2 (mp4 -> frames at --short-side, or --keep-videos)")):
        p = sub.add_parser(name, help=what, description=what)
        p.add_argument("--source", type=Path, help="the folder of the official download (required unless --check)")
        if name in ("kinetics400", "diving48"):
            p.add_argument("--annotations", type=Path, nargs=2, metavar=("TRAIN", "VAL"),
                           help="the official annotation files: train.csv validate.csv (Kinetics) or "
                                "Diving48_V2_train.json Diving48_V2_test.json")
            p.add_argument("--short-side", type=int, default=256, help="frames' short side in pixels (default 256)")
        if name == "diving48":
            p.add_argument("--vocab", type=Path, help="Diving48_vocab.json: class names (else the label numbers)")
        if name != "something-v1":
            p.add_argument("--keep-videos", action="store_true",
                           help="videos for the video loader instead of frames: each re-encoded once (H.264, the "
                                "frames' size, a keyframe every --gop frames) so that a clip's frames decode fast")
            p.add_argument("--gop", type=int, default=8, help="--keep-videos: a keyframe every N frames (default 8: "
                           "3.8x the original's training clips/s in 4.4x its bytes; 4 is 1.2x faster in 1.45x "
                           "the bytes of 8; docs/data_speed.md)")
            p.add_argument("--quality", type=int, default=90, help="JPEG quality of extracted frames (default 90)")
        p.add_argument("--out", type=Path, default=Path(f"data/{name}"), help=f"output folder (default data/{name})")
        p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                       help="processes (default: every core)")
        p.add_argument("--dry-run", action="store_true", help="say what would be done and the disk it needs; "
                       "write nothing (a few videos are extracted to a temporary folder to estimate the disk)")
        p.add_argument("--check", action="store_true", help="validate an existing --out with the checks a sweep runs")
        p.add_argument("--no-space-check", action="store_true", help="go on when the estimate exceeds the free space")
        p.set_defaults(func=prepare_dataset)
    weights.add_parser(sub)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except (Refused, SourceError, WriteError) as e:
        print(f"harness.prepare: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness.prepare: interrupted; finished samples are kept and a re-run resumes", file=sys.stderr)
        return 130


# --- one dataset ------------------------------------------------------------------------------

def prepare_dataset(args) -> int:
    dataset, out = args.command, args.out
    media = "videos" if getattr(args, "keep_videos", False) else "frames"
    if args.check:
        return check(dataset, out)
    download = read_download(args)
    if _inside(out, args.source):
        raise Refused(f"--out {out} is inside --source {args.source}: preparation never writes into the download; "
                      "give another --out (and data.root in the spec)")
    template = TEMPLATES[dataset]
    started = time.monotonic()
    print(f"{dataset}: {len(download.classes)} classes; "
          + ", ".join(f"{sum(s.split == split for s in download.samples)} {split}" for split in ("train", "val"))
          + f" samples in the annotations; {'frames' if media == 'frames' else 'videos'} -> {out}", flush=True)
    if download.media == "frames":
        counts, failures = link_frames(download, out, args.dry_run)
    else:
        size = Size(height=256) if dataset == "something-v2" else Size(short_side=args.short_side)
        output = Output(media, size, template, args.quality, args.gop)
        counts, failures = extract(download, out, output, args)
    if args.dry_run:
        print(f"dry run: nothing written. {len(counts)} samples would be listed, {len(failures)} left out"
              + "".join(f"\n  left out: {s.split} {s.id}: {why}" for s, why in failures[:20]))
        return 0
    write_lists(download, out, media, counts, failures, args, time.monotonic() - started)
    return 1 if failures else 0


def read_download(args) -> Download:
    if args.source is None:
        raise Refused(f"{args.command}: --source DIR (the official download) is required")
    if not args.source.is_dir():
        raise Refused(f"--source {args.source}: not a folder")
    if args.command == "something-v1":
        return sources.something_v1(args.source)
    if args.command == "something-v2":
        return sources.something_v2(args.source)
    if args.annotations is None:
        raise Refused(f"{args.command}: --annotations TRAIN VAL is required (the official annotation files)")
    if args.command == "kinetics400":
        return sources.kinetics400(args.source, *args.annotations)
    return sources.diving48(args.source, *args.annotations, vocab=args.vocab)


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    path, folder = Path(os.path.abspath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents or Path(os.path.realpath(path)) == folder


def _link(out: Path, name: str, target: Path, dry_run: bool) -> None:
    """``out/name`` -> ``target`` (absolute), replacing an older link; a real folder there is refused."""
    link = out / name
    if link.is_symlink():
        if dry_run or Path(os.readlink(link)) == target.absolute():
            return
        link.unlink()
    elif link.exists():
        raise Refused(f"{link}: exists and is not a link; it would be replaced by a link to {target}")
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target.absolute(), target_is_directory=True)


def link_frames(download: Download, out: Path, dry_run: bool):
    """SS-V1: the download's frame folders, linked as ``out/frames``, each counted by a listing."""
    from harness.data.datasets import count_frames

    _link(out, "frames", download.root, dry_run)
    print("  disk: the lists and one link, well under 1 MB (the frames stay in the download)", flush=True)
    template = TEMPLATES[download.dataset]
    present = [s for s in download.samples if s.source is not None]
    progress, held = Progress(len(present), f"{download.dataset}: counting frames"), {}
    with ThreadPoolExecutor(16) as pool:  # listings wait on the file system, not the CPU
        for s, n in zip(present, pool.map(lambda s: count_frames(s.source, template), present)):
            held[s] = n
            progress.update(len(held))
    counts = {s: n for s, n in held.items() if n > 0}
    failures = _absent(download) + [(s, f"{s.source} holds no {template.format(1)}") for s, n in held.items() if n == 0]
    return counts, failures


def _absent(download: Download) -> list:
    where = {"frames": "frame folder", "videos": "video"}[download.media]
    return [(s, f"{where} not found in the download ({download.root})") for s in download.samples if s.source is None]


@dataclass(frozen=True)
class Output:
    """What each video becomes: a folder of JPEG frames, or (``--keep-videos``) an H.264 video
    re-encoded with a keyframe every ``gop`` frames, which the seeking decoder reaches quickly."""

    kind: str  # "frames" | "videos"
    size: Size
    template: str = ""
    quality: int = 90
    gop: int = 8

    def path(self, base: Path, sample) -> Path:
        return base / sample.id if self.kind == "frames" else base / f"{sample.id}.mp4"

    def make(self):
        """The picklable work: ``make(video, destination) -> frame count``."""
        if self.kind == "frames":
            return partial(extract_frames, template=self.template, size=self.size, quality=self.quality)
        return partial(reencode, size=self.size, gop=self.gop)

    def complete(self, path: Path, count: int) -> bool:
        return count_complete(path, self.template) == count if self.kind == "frames" else path.is_file()

    def bytes(self, path: Path) -> int:
        return folder_bytes(path) if self.kind == "frames" else path.stat().st_size


def extract(download: Download, out: Path, output: Output, args):
    """Every video not already done, made into ``output`` in parallel; the disk it needs, estimated first."""
    base = out / output.kind
    present = [s for s in download.samples if s.source is not None]
    record = Record(out / f".{output.kind}_done.tsv", args.dry_run)
    if not args.dry_run and base.is_dir():
        for stopped in base.glob("*.partial*"):  # a stopped run's; its video is redone
            shutil.rmtree(stopped) if stopped.is_dir() else stopped.unlink()
    done = {s: n for s in present if (n := record.get(s.id)) and output.complete(output.path(base, s), n)}
    todo = [s for s in present if s not in done]
    verb = "extract" if output.kind == "frames" else "re-encode"
    print(f"  {len(done)} already done (kept), {len(todo)} to {verb} on {args.workers} process(es)", flush=True)
    counts, errors, make = dict(done), {}, output.make()
    sample = todo[:: max(1, len(todo) // ESTIMATE_SAMPLE)][:ESTIMATE_SAMPLE]
    where = Path(tempfile.mkdtemp(prefix="prepare-estimate-")) if args.dry_run else base
    try:
        t0 = time.monotonic()
        for s in sample:
            try:
                counts[s] = record.add(s.id, make(s.source, output.path(where, s)))
            except ValueError as e:
                errors[s] = str(e)
        made = {s: output.bytes(output.path(where, s)) for s in sample if s in counts}
        estimate_disk(out, todo, made, time.monotonic() - t0, args, output.kind)
    finally:
        if args.dry_run:
            shutil.rmtree(where, ignore_errors=True)
    if args.dry_run:
        return counts | {s: 0 for s in todo if s not in sample}, _absent(download)
    rest = [s for s in todo if s not in sample]
    tasks = [(s.source, output.path(base, s)) for s in rest]
    results, failed = run_parallel(make, tasks, args.workers, f"{download.dataset}: {verb} videos",
                                   done=lambda i, n: record.add(rest[i].id, n))
    counts.update({rest[i]: n for i, n in results.items()})
    errors.update({rest[i]: why for i, why in failed.items()})
    return counts, _absent(download) + list(errors.items())


class Record:
    """The frame count of every video extracted so far, one ``id<TAB>count`` line appended as each
    finishes: a re-run keeps a folder only if it holds exactly that many frames (a folder whose
    last frames are gone would otherwise look complete)."""

    def __init__(self, path: Path, dry_run: bool):
        self.path, self.dry_run = path, dry_run
        lines = path.read_text().splitlines() if path.is_file() else []
        self.counts = {vid: int(n) for vid, _, n in (line.rpartition("\t") for line in lines) if n.isdigit()}

    def get(self, vid: str) -> int | None:
        return self.counts.get(vid)

    def add(self, vid: str, count: int) -> int:
        self.counts[vid] = count
        if not self.dry_run:
            with open(self.path, "a") as f:
                f.write(f"{vid}\t{count}\n")
        return count


def estimate_disk(out: Path, todo, made: dict, seconds: float, args, kind: str) -> None:
    """Print (and hold against the free space) the disk the remaining videos will need, scaled
    from what the sample (``made``: sample -> bytes written) took over its videos' size."""
    if not made:
        return
    ratio = sum(made.values()) / max(1, sum(s.source.stat().st_size for s in made))
    left = [s for s in todo if s not in made]
    need = ratio * sum(s.source.stat().st_size for s in left)
    probe = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    rate = len(made) / seconds if seconds > 0 else 0
    print(f"  estimate: ~{_gb(need)} more for {len(left)} videos (the output is {ratio:.2f}x the videos' size in "
          f"a sample of {len(made)}); {_gb(free)} free at {probe}; ~{_hours(len(left) / max(rate * args.workers, 1e-9))} "
          f"at {rate:.2f} videos/s per process", flush=True)
    if need > free and not args.no_space_check:
        smaller = ", keep videos instead of frames (--keep-videos)" if kind == "frames" else ""
        raise Refused(f"{out}: the {kind} need ~{_gb(need)} and {probe} has {_gb(free)} free: free some space, "
                      f"write elsewhere (--out){smaller}, or --no-space-check")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def write_lists(download: Download, out: Path, media: str, counts: dict, failures: list, args, seconds: float) -> None:
    """category.txt, the two lists, prepare_failures.txt and prepare.json, each written whole."""
    out.mkdir(parents=True, exist_ok=True)
    _write(out / CATEGORIES, "".join(f"{name}\n" for name in download.classes))
    for split, name in zip(("train", "val"), LISTS[media]):
        if media == "frames":
            lines = [f"frames/{s.id} {counts[s]} {s.label}\n" for s in download.samples if s.split == split and s in counts]
        else:
            lines = [f"videos/{s.id}.mp4 {s.label}\n" for s in download.samples if s.split == split and s in counts]
        _write(out / name, "".join(lines))
    failed = out / "prepare_failures.txt"
    if failures:
        _write(failed, "# split\tid\twhy it is left out of the lists\n"
               + "".join(f"{s.split}\t{s.id}\t{why}\n" for s, why in failures))
    elif failed.exists():
        failed.unlink()
    listed = {split: sum(s.split == split for s in counts) for split in ("train", "val")}
    record = {"dataset": download.dataset, "source": str(Path(os.path.abspath(args.source))), "media": media,
              "template": TEMPLATES[download.dataset] if media == "frames" else None,
              "classes": len(download.classes), "listed": listed, "failed": len(failures),
              "command": shlex.join(["python", "-m", "harness.prepare"] + sys.argv[1:]),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(seconds, 1)}
    _write(out / "prepare.json", json.dumps(record, indent=2) + "\n")
    per_core = len(counts) / seconds / max(1, args.workers) if seconds > 0 else 0
    print(f"prepared {download.dataset} in {out}: {listed['train']} train + {listed['val']} val samples listed, "
          f"{len(download.classes)} classes, {_hours(seconds)} ({per_core:.2f} samples/s per process)")
    if failures:
        print(f"{len(failures)} sample(s) left out, listed in {failed}:", file=sys.stderr)
        for s, why in failures[:20]:
            print(f"  - {s.split} {s.id}: {why}", file=sys.stderr)
        if len(failures) > 20:
            print(f"  ... and {len(failures) - 20} more", file=sys.stderr)
    section = {"dataset": download.dataset, "root": str(out)} | (
        {"media": media} if media != ("frames" if download.dataset.startswith("something") else "videos") else {})
    print("in a spec:  data: {" + ", ".join(f"{k}: {v}" for k, v in section.items())
          + f", train_list: {LISTS[media][0]}, val_list: {LISTS[media][1]}, categories: {CATEGORIES}}}")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check(dataset: str, out: Path) -> int:
    """``--check``: the prepared folder through the sweep's own data check."""
    from harness.data import DataConfig, DataError, check_data

    media = next((m for m, (train, _) in LISTS.items() if (out / train).is_file()), None)
    if media is None:
        print(f"harness.prepare: error: {out}: no {LISTS['frames'][0]} or {LISTS['videos'][0]}; prepare it with: "
              f"{data_command(dataset, out)}", file=sys.stderr)
        return 2
    cfg = DataConfig(dataset=dataset, root=out, train_list=LISTS[media][0], val_list=LISTS[media][1],
                     categories=CATEGORIES, media=media)
    try:
        check_data(cfg)
    except DataError as e:
        print(f"harness.prepare: error: {e}", file=sys.stderr)
        return 2
    lines = [sum(1 for line in (out / name).read_text().splitlines() if line.strip()) for name in LISTS[media]]
    print(f"{out}: OK: {lines[0]} train + {lines[1]} val {media} with {len((out / CATEGORIES).read_text().splitlines())} "
          "classes; every listed folder/video is there" + (" with its frame count" if media == "frames" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
