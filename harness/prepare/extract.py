"""Frames out of videos, in parallel, resumably, with progress: the work of ``harness.prepare``.

One video is one task: decoded with PyAV (as the loader decodes), resized in the same pass as the
colour conversion (swscale, bicubic, as ``ffmpeg -vf scale`` does by default), written as JPEGs
into ``<folder>.partial`` and renamed to ``<folder>`` only when every frame is out. So a folder
with the final name is complete, and anything else (a ``.partial`` left by a stopped run, a
folder whose numbering has a gap) is redone on the next run.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from harness.data.datasets import PREPARED_NOTE

JPEG_QUALITY = 90  # ~20 KB per 256-px frame; the loader's resize and crop dominate what is lost


@dataclass(frozen=True)
class Size:
    """The frame size rule: ``height`` N (Something-Something-V2's frames, at 256) or
    ``short_side`` N (Kinetics, Diving48); the other side keeps the aspect ratio."""

    height: int | None = None
    short_side: int | None = None

    def __call__(self, width: int, height: int) -> tuple[int, int]:
        if self.height is not None:
            return max(1, round(width * self.height / height)), self.height
        n = self.short_side
        return (n, max(1, round(height * n / width))) if width <= height else (max(1, round(width * n / height)), n)


def count_complete(folder: Path, template: str) -> int:
    """Frames 1..n in ``folder`` when they are all the folder holds (a finished extraction), else 0."""
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    n = len(names)
    return n if n and all(template.format(k) in names for k in (1, n)) and _contiguous(names, template, n) else 0


def _contiguous(names: list[str], template: str, n: int) -> bool:
    return set(names) == {template.format(k) for k in range(1, n + 1)}


class WriteError(RuntimeError):
    """Writing the output failed (a full disk, permissions): the whole run stops, unlike a bad video."""


def decode_all(video: Path, each=None) -> int:
    """Decode every frame of ``video``, calling ``each(frame, k)`` (k from 1) on each; returns
    the count. A video that is absent, damaged (FFmpeg's own concealment off, as in the loader)
    or shorter than its container claims is a ``ValueError`` saying so."""
    import av

    n = 0
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            stream.codec_context.options = {"err_detect": "explode"}
            claimed = _claimed_frames(stream)
            for frame in container.decode(stream):
                n += 1
                if each is not None:
                    each(frame, n)
        if n == 0:
            raise ValueError("no video frames could be decoded")
        if claimed and n < claimed - max(2, claimed // 20):
            raise ValueError(f"decoded {n} frames but the container claims ~{claimed}: the file is truncated")
    except (av.FFmpegError, IndexError, ValueError) as e:  # IndexError: no video stream
        what = str(e) or type(e).__name__
        raise ValueError(f"cannot decode: {what}" + (f" (after {n} frames)" if n else "")) from None
    return n


def extract_frames(video: Path, folder: Path, template: str, size: Size, quality: int = JPEG_QUALITY) -> int:
    """Decode ``video`` into ``folder/<template>`` JPEGs (1-based); returns the frame count.
    A bad video is a ``ValueError`` and leaves nothing at ``folder``."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    def write(frame, k: int) -> None:
        width, height = size(frame.width, frame.height)
        image = frame.reformat(width=width, height=height, format="rgb24", interpolation="BICUBIC").to_image()
        try:
            image.save(partial / template.format(k), quality=quality)
        except OSError as e:
            raise WriteError(f"{partial / template.format(k)}: {e}") from None

    try:
        n = decode_all(video, write)
    except ValueError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return n


# x264's default quality (crf 23), ``tune fastdecode`` (no CABAC, no deblocking filter, no
# weighted prediction: the loader decodes it ~2x faster for ~1.25x the bytes) and no B-frames
# (``bf 0``: a frame is never shown before one decoded after it, so the decoder holds nothing back
# after a seek; ~1.2x the clips/s for ~1.1x the bytes). Measured in docs/data_speed.md.
X264 = {"crf": "23", "preset": "fast", "tune": "fastdecode", "bf": "0"}


def reencode(video: Path, path: Path, size: Size, gop: int = 8, x264: dict[str, str] | None = None) -> int:
    """Re-encode ``video`` as ``path`` (H.264 in MP4, ``size``, a keyframe every ``gop`` frames,
    every frame kept at the source's average rate, ``x264``'s options, by default ``X264``);
    returns the frame count. Why: a clip's 8
    frames spread over a video with one keyframe (FFmpeg's default, what the Kinetics crawler
    writes) can only be reached by decoding nearly every frame before the last; with a keyframe
    every ``gop`` frames, the seeking decoder decodes at most ``gop`` frames per clip frame.
    A bad video is a ``ValueError`` and leaves nothing at ``path``."""
    import av

    partial = path.with_name(path.name + ".partial.mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(video)) as probe:
            rate = probe.streams.video[0].average_rate or probe.streams.video[0].guessed_rate or 25
    except (av.FFmpegError, IndexError) as e:
        raise ValueError(f"cannot decode: {e or type(e).__name__}") from None
    try:
        with av.open(str(partial), "w") as out:
            stream = None

            def write(frame, k: int) -> None:
                nonlocal stream
                try:
                    if stream is None:
                        width, height = size(frame.width, frame.height)
                        stream = out.add_stream("libx264", rate=rate)
                        stream.width, stream.height = width + width % 2, height + height % 2  # 4:2:0: even sides
                        stream.pix_fmt = "yuv420p"
                        # A keyframe every gop frames exactly (none at scene cuts), which the
                        # file's note tells the loader, so it need not scan the packets for them.
                        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                                          **(X264 if x264 is None else x264)}
                        out.metadata["comment"] = PREPARED_NOTE.format(gop)
                        stream.codec_context.thread_count = 1  # one process per core already
                    image = frame.reformat(width=stream.width, height=stream.height, format="yuv420p",
                                           interpolation="BICUBIC")
                    image.pts, image.time_base = k - 1, 1 / rate
                    image.pict_type = av.video.frame.PictureType.NONE  # else a source keyframe forces one here
                    for packet in stream.encode(image):
                        out.mux(packet)
                except av.FFmpegError as e:  # the encoder or the disk, not the video: stop the run
                    raise WriteError(f"{partial}: {e}") from None

            n = decode_all(video, write)
            for packet in stream.encode():
                out.mux(packet)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return n


def _claimed_frames(stream) -> int:
    """The frame count the container states: its own count (MP4), else duration x rate (WebM's
    header holds the duration, so a truncated file still claims the whole video)."""
    rate = stream.average_rate or stream.guessed_rate
    if stream.frames > 0:
        return stream.frames
    if stream.duration and stream.time_base and rate:
        return int(float(stream.duration * stream.time_base) * float(rate))
    if stream.container.duration and rate:
        return int(stream.container.duration / 1_000_000 * float(rate))
    return 0


class Progress:
    """One line of progress with rate and ETA on stderr: redrawn on a terminal, else a line
    every 5% (or minute), so a log file stays readable."""

    def __init__(self, total: int, what: str, stream=sys.stderr):
        self.total, self.what, self.stream = total, what, stream
        self.start = self.last = time.monotonic()
        self.shown = -1
        self.tty = stream.isatty()

    def update(self, done: int, failed: int = 0) -> None:
        now = time.monotonic()
        step = max(1, self.total // 20)
        if not (done == self.total or (self.tty and now - self.last > 0.5)
                or (not self.tty and (done // step > self.shown // step or now - self.last > 60))):
            return
        self.last, self.shown = now, done
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        line = (f"{self.what}: {done}/{self.total} ({100 * done / max(self.total, 1):.0f}%), {rate:.1f}/s"
                + (f", {failed} failed" if failed else "") + (f", ETA {_clock(eta)}" if done < self.total else
                                                               f", {_clock(now - self.start)}"))
        print(("\r" + line + " " * 8) if self.tty else line, end="\n" if not self.tty or done == self.total else "",
              file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_parallel(fn, tasks: list[tuple], workers: int, what: str, done=None) -> tuple[dict, dict]:
    """``fn(*task)`` for every task on ``workers`` processes: ({index: result}, {index: error}).
    ``done(index, result)`` is called here, in this process, as each task succeeds."""
    results, errors = {}, {}
    progress = Progress(len(tasks), what)

    def outcomes():  # (index, a call that returns the task's result or raises its error)
        if workers <= 1 or len(tasks) <= 1:
            yield from ((i, lambda task=task: fn(*task)) for i, task in enumerate(tasks))
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
            yield from ((futures[future], future.result) for future in as_completed(futures))

    for i, result in outcomes():
        try:
            results[i] = result()
            if done is not None:
                done(i, results[i])
        except ValueError as e:  # a bad video; anything else (a full disk) stops the run
            errors[i] = str(e)
        progress.update(len(results) + len(errors), len(errors))
    return results, errors


def folder_bytes(folder: Path) -> int:
    return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())
