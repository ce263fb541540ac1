"""Tiny copies of the official dataset downloads, for tests of ``python -m harness.prepare``.

Each writer lays out a few samples exactly as a user finds them after unpacking the official
download, and returns a :class:`Download` that says what it wrote, so a test can check what a
preparation command made of it. The formats, as written here:

=============  ==============================================================================
SS-V1          ``20bn-something-something-v1/<id>/00001.jpg ...`` (JPEG frames, 1-based, 5 digits,
               height 100); ``something-something-v1-labels.csv`` (one class per line, the line
               number is the class index); ``something-something-v1-{train,validation}.csv``
               (``id;class name`` lines, no header). Ids are integers written as strings.
SS-V2          ``20bn-something-something-v2/<id>.webm`` (VP9, 12 fps, height 240);
               ``something-something-v2-labels.json`` (``{"class name": "index as a string"}``);
               ``something-something-v2-{train,validation}.json`` (a list of ``{"id", "label",
               "template", "placeholders"}``; the class is the template without its square
               brackets); ``something-something-v2-test.json`` (a list of ``{"id"}``).
Kinetics-400   ``*.mp4`` anywhere under the root, named ``{youtube_id}_{start:06d}_{end:06d}.mp4``
               (H.264, 25 fps); ``annotations/{train,validate}.csv`` with the header
               ``label,youtube_id,time_start,time_end,split,is_cc``.
Diving48       ``rgb/<vid_name>.mp4`` (H.264, 30 fps); ``Diving48_V2_{train,test}.json`` (a list
               of ``{"vid_name", "label": int, "start_frame", "end_frame"}``);
               ``Diving48_vocab.json`` (48 lists of 4 strings: takeoff, somersault, twist, flight).
=============  ==============================================================================

Every frame carries its own index (see :func:`frame_image` and :func:`frame_index`), so a test
can check that a prepared clip holds the right frames in the right order after any resize and
any lossy codec.

Failure samples, added unless asked not to: ``corrupt`` (the file exists but does not decode: a
video truncated to 40 % of its bytes and garbled in the middle, or an SS-V1 frame folder with
no frame), always listed in the *train* annotations; ``absent`` (listed in the *validation*
annotations, no file or folder at all).
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import random
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

# ------------------------------------------------------------------------------------------------
# Frames that carry their index
# ------------------------------------------------------------------------------------------------

# Grey level 20 + 10 * (k % 22) fills the frame; a centred square marker's colour is k // 22.
# Steps of 10 grey levels survive JPEG, H.264, VP9 and the limited-range YUV round trip (measured
# error <= 2); saturated primaries are far apart in RGB even after 4:2:0 chroma subsampling.
_GREY_LEVELS = 22
_PALETTE = np.array([
    (210, 40, 40),    # red: k in [0, 22); a BGR/RGB swap turns it blue, so a swap is caught
    (40, 190, 40),    # green
    (40, 40, 210),    # blue
    (210, 210, 40),   # yellow
    (210, 40, 210),   # magenta
    (40, 210, 210),   # cyan
], dtype=np.float64)
MAX_FRAMES = _GREY_LEVELS * len(_PALETTE)  # 132 distinct frames: 11 s at 12 fps
# The marker is 40 % of the short side and the grey is read from the outer 8 %: a centre crop to
# the short side (the usual prepare/eval crop) keeps both.
_MARKER = 0.4
_BORDER = 0.08


def frame_image(k: int, width: int, height: int) -> np.ndarray:
    """Frame ``k`` (0-based) of every fixture video, as an ``(height, width, 3)`` uint8 RGB array."""
    if not 0 <= k < MAX_FRAMES:
        raise ValueError(f"frame {k} outside [0, {MAX_FRAMES}): the index code has no room for it")
    image = np.full((height, width, 3), 20 + 10 * (k % _GREY_LEVELS), np.uint8)
    side = round(_MARKER * min(width, height))
    top, left = (height - side) // 2, (width - side) // 2
    image[top:top + side, left:left + side] = _PALETTE[k // _GREY_LEVELS]
    return image


def frame_index(rgb) -> int:
    """Recover ``k`` from a decoded frame of a fixture (any size, any crop that keeps the centre).

    ``rgb``: an ``(H, W, 3)`` RGB array (uint8 or float in 0..255) or a PIL image. Raises
    ``ValueError`` when the frame is not a fixture frame (grey not within 4 levels of a step,
    border not grey, or the marker far from every palette colour), so a garbled frame is never
    silently read as some index.
    """
    a = np.asarray(rgb, dtype=np.float64)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {a.shape}")
    h, w = a.shape[:2]
    short = min(h, w)
    band = max(1, int(_BORDER * short))
    border = np.concatenate([a[:band].reshape(-1, 3), a[-band:].reshape(-1, 3),
                             a[:, :band].reshape(-1, 3), a[:, -band:].reshape(-1, 3)])
    grey_rgb = np.median(border, axis=0)
    if np.ptp(grey_rgb) > 12:
        raise ValueError(f"border is not grey: {grey_rgb}")
    step = (grey_rgb.mean() - 20) / 10
    grey = round(step)
    if not 0 <= grey < _GREY_LEVELS or abs(step - grey) > 0.4:
        raise ValueError(f"border grey {grey_rgb.mean():.1f} is not a fixture level")
    half = max(1, int(0.05 * short))
    patch = a[h // 2 - half:h // 2 + half, w // 2 - half:w // 2 + half].reshape(-1, 3)
    distance = np.linalg.norm(_PALETTE - np.median(patch, axis=0), axis=1)
    colour = int(distance.argmin())
    if distance[colour] > 70:
        raise ValueError(f"centre colour {np.median(patch, axis=0)} is no marker colour")
    return colour * _GREY_LEVELS + grey


# ------------------------------------------------------------------------------------------------
# What a writer returns
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Download:
    """What a writer put under ``root``.

    ``train``/``val``: id -> class name of the GOOD samples of each split (Diving48's ``test``
    split is ``val``). ``frames``/``size``: id -> frames encoded / (width, height) of the source
    frames, for every good sample. ``classes``: class names in index order (index = position).
    ``corrupt``: ids listed in the train annotations whose file exists but does not decode.
    ``absent``: ids listed in the validation annotations with no file. ``annotations``: name ->
    path, keys ``"train"``, ``"val"``, and where the dataset has them ``"labels"`` (SS-V1/V2 label
    file, Diving48 vocab) and ``"test"`` (SS-V2). Sample ids: SS-V1/V2 ``id``, Kinetics
    ``youtube_id``, Diving48 ``vid_name``.
    """
    root: Path
    train: dict[str, str]
    val: dict[str, str]
    frames: dict[str, int]
    size: dict[str, tuple[int, int]]
    classes: list[str]
    corrupt: list[str]
    absent: list[str]
    annotations: dict[str, Path]


# ------------------------------------------------------------------------------------------------
# Media
# ------------------------------------------------------------------------------------------------

# Speed and determinism over size: one thread per encoder (a pool gives the parallelism), the
# fastest VP9 mode; quality high enough that frame_index stays exact.
_ENCODERS = {
    ".webm": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b:v": "0"}),
    ".mp4": ("libx264", {"preset": "veryfast", "crf": "18"}),
}
# A corrupt video is cut from a video of this many frames: a test can tell "far fewer frames".
CORRUPT_SOURCE_FRAMES = 40


def write_video(path: Path, frames: int, size: tuple[int, int], fps: int) -> None:
    """Encode ``frames`` fixture frames; the codec follows the suffix (.webm VP9, .mp4 H.264)."""
    codec, options = _ENCODERS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        for k in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame_image(k, *size), format="rgb24")))
        out.mux(stream.encode())


def _write_corrupt_video(path: Path, size: tuple[int, int], fps: int) -> None:
    """A real video cut to its first 40 % of bytes, then the middle fifth of that overwritten.

    MP4: the cut loses the ``moov`` index (muxed at the end), so opening raises
    ``av.InvalidDataError``. WebM: the cut keeps the header (whose duration still says 40
    frames) and the first clusters, so PyAV either raises on the garbled cluster or silently
    decodes the first 7 of 40 frames (over 100 garbling seeds at 320x240 and 427x240: 13 raised,
    87 gave 7 frames; the SS-V2 fixture's ``3.webm`` gives 7 frames, no error). Hence the reliable
    check is "raises ``av.FFmpegError`` or decodes fewer than half of ``CORRUPT_SOURCE_FRAMES``";
    a prepare must compare decoded frames with the container's duration to catch the WebM case.
    """
    write_video(path, CORRUPT_SOURCE_FRAMES, size, fps)
    data = bytearray(path.read_bytes())
    data = data[:int(0.4 * len(data))]
    rng = random.Random(zlib.crc32(path.name.encode()))  # the same garbage on every run
    for i in range(int(0.4 * len(data)), int(0.6 * len(data))):
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))


def _write_jpeg_frames(folder: Path, frames: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        Image.fromarray(frame_image(k, *size)).save(folder / f"{k + 1:05d}.jpg", quality=90)


def _write_videos(jobs: list[tuple[Path, int, tuple[int, int], int]], workers: int = 1) -> None:
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            write_video(*job)
        return
    # fork: the children need only this module's functions; spawn would re-run a caller's
    # unguarded script.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        list(pool.map(write_video, *zip(*jobs), chunksize=max(1, len(jobs) // (8 * workers))))


def _frame_counts(ids, low: int, high: int) -> dict[str, int]:
    """Distinct, spread counts in [low, high], so no two samples can be swapped unnoticed."""
    n = len(ids)
    return {i: low + (high - low) * j // max(1, n - 1) for j, i in enumerate(ids)}


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Something-Something V1
# ------------------------------------------------------------------------------------------------

# File order is the class index; it is deliberately not sorted, so sorting is caught.
_V1_CLASSES = ["Pushing something from left to right", "Closing something",
               "Pushing something from right to left", "Moving something up"]


def something_v1(root: Path, *, corrupt: bool = True, absent: bool = True) -> Download:
    """Something-Something V1 as unpacked from the 20BN download::

        root/20bn-something-something-v1/<id>/00001.jpg, 00002.jpg, ...   JPEG, 1-based, 5 digits
        root/something-something-v1-labels.csv       "Closing something"    one class a line
        root/something-something-v1-train.csv        "17;Closing something" id;class, no header
        root/something-something-v1-validation.csv   same

    Frames are 176x100 or 134x100 (the real ones are 100 px high, width varies). Good samples:
    train 1, 17, 203; validation 56, 1004 (8..20 frames). Corrupt: 7 (empty folder, train).
    Absent: 88 (validation).
    """
    root = Path(root)
    train = {"1": _V1_CLASSES[1], "17": _V1_CLASSES[0], "203": _V1_CLASSES[3]}
    val = {"56": _V1_CLASSES[2], "1004": _V1_CLASSES[0]}
    frames = _frame_counts([*train, *val], 8, 20)
    size = {i: (134, 100) if i == "17" else (176, 100) for i in frames}
    train_rows, val_rows = dict(train), dict(val)
    bad, missing = (["7"] if corrupt else []), (["88"] if absent else [])
    train_rows.update({i: _V1_CLASSES[1] for i in bad})
    val_rows.update({i: _V1_CLASSES[3] for i in missing})

    frames_dir = root / "20bn-something-something-v1"
    for i, n in frames.items():
        _write_jpeg_frames(frames_dir / i, n, size[i])
    for i in bad:
        (frames_dir / i).mkdir(parents=True)
    labels = root / "something-something-v1-labels.csv"
    labels.write_text("".join(f"{c}\n" for c in _V1_CLASSES), encoding="utf-8")
    annotations = {"labels": labels, "train": root / "something-something-v1-train.csv",
                   "val": root / "something-something-v1-validation.csv"}
    for split, rows in (("train", train_rows), ("val", val_rows)):
        annotations[split].write_text("".join(f"{i};{c}\n" for i, c in rows.items()), encoding="utf-8")
    return Download(root, train, val, frames, size, list(_V1_CLASSES), bad, missing, annotations)


# ------------------------------------------------------------------------------------------------
# Something-Something V2
# ------------------------------------------------------------------------------------------------

# Templates by class index. The index order is not alphabetical, and the labels JSON lists its
# keys alphabetically (as the real file does), so neither sorting nor file order gives the index.
_V2_TEMPLATES = [
    ("Spinning [something] that quickly stops spinning", ["cube"]),
    ("Approaching [something] with your camera", ["a mug"]),
    ("Stacking [number of] [something]", ["3", "coins"]),
    ("Holding [something] next to [something]", ["potato", "vicks vaporub bottle"]),
    ("[Something] falling like a feather or paper", ["plastic"]),
    ("Moving [something] up", ["glass"]),
]
_V2_FPS = 12


def _v2_class(template: str) -> str:
    return template.replace("[", "").replace("]", "")


_V2_CLASSES = [_v2_class(t) for t, _ in _V2_TEMPLATES]


def _v2_entry(sample_id: str, class_index: int) -> dict:
    template, placeholders = _V2_TEMPLATES[class_index]
    label = template
    for word in placeholders:  # the annotator's words replace the brackets, in order
        label = label[:label.index("[")] + word + label[label.index("]") + 1:]
    return {"id": sample_id, "label": label.lower(), "template": template, "placeholders": placeholders}


def _write_something_v2(root: Path, train: dict[str, int], val: dict[str, int], frames: dict[str, int],
                        size: dict[str, tuple[int, int]], test: dict[str, int], corrupt: bool,
                        absent: bool, workers: int = 1) -> Download:
    """Write SS-V2 from id -> class index maps; ``test`` (id -> frames) gets videos, no labels."""
    videos = root / "20bn-something-something-v2"
    bad, missing = (["3"] if corrupt else []), (["220000"] if absent else [])
    jobs = [(videos / f"{i}.webm", n, size.get(i, (320, 240)), _V2_FPS) for i, n in {**frames, **test}.items()]
    _write_videos(jobs, workers)
    for i in bad:
        _write_corrupt_video(videos / f"{i}.webm", (320, 240), _V2_FPS)

    annotations = {name: root / f"something-something-v2-{file}.json" for name, file in
                   (("labels", "labels"), ("train", "train"), ("val", "validation"), ("test", "test"))}
    _write_json(annotations["labels"], {c: str(_V2_CLASSES.index(c)) for c in sorted(_V2_CLASSES)})
    _write_json(annotations["train"], [_v2_entry(i, c) for i, c in {**train, **dict.fromkeys(bad, 1)}.items()])
    _write_json(annotations["val"], [_v2_entry(i, c) for i, c in {**val, **dict.fromkeys(missing, 5)}.items()])
    _write_json(annotations["test"], [{"id": i} for i in test])
    return Download(root, {i: _V2_CLASSES[c] for i, c in train.items()},
                    {i: _V2_CLASSES[c] for i, c in val.items()}, frames, size, list(_V2_CLASSES),
                    bad, missing, annotations)


def something_v2(root: Path, *, corrupt: bool = True, absent: bool = True) -> Download:
    """Something-Something V2 as unpacked from the 20BN/Qualcomm download::

        root/20bn-something-something-v2/<id>.webm   VP9 in WebM, 12 fps, 240 px high
        root/something-something-v2-labels.json      {"Moving something up": "5", ...}
        root/something-something-v2-train.json       [{"id": "78687",
                                                       "label": "holding potato next to vicks vaporub bottle",
                                                       "template": "Holding [something] next to [something]",
                                                       "placeholders": ["potato", "vicks vaporub bottle"]}, ...]
        root/something-something-v2-validation.json  same
        root/something-something-v2-test.json        [{"id": "1420"}, ...]   no labels

    The class of a sample is its template without the square brackets ("Stacking [number of]
    [something]" -> "Stacking number of something"), a key of the labels JSON, whose value is the
    class index as a string. Here the indices are not alphabetical and the keys are listed
    alphabetically, so only reading the values gives ``classes``. Videos are 320x240 or 427x240.
    Good samples: train 78687, 42326, 145274; validation 74225, 116154 (10..30 frames); one
    unlabelled test video 1420. Corrupt: 3 (train). Absent: 220000 (validation).
    """
    root = Path(root)
    train = {"78687": 3, "42326": 2, "145274": 4}
    val = {"74225": 0, "116154": 3}
    frames = _frame_counts([*train, *val], 10, 30)
    size = {i: (427, 240) if i in ("42326", "116154") else (320, 240) for i in frames}
    return _write_something_v2(root, train, val, frames, size, {"1420": 12}, corrupt, absent)


def many_videos(root: Path, n: int, kind: str = "something-v2", seconds: float = 4.0, workers: int = 2,
                *, corrupt: bool = True, absent: bool = True) -> Download:
    """``n`` good videos in the SS-V2 layout of :func:`something_v2` (the same file names and
    formats, classes and failure samples), 320x240 at 12 fps, ``seconds`` long, encoded by
    ``workers`` processes: for speed benchmarks of preparation. Ids ``"100000"``, ``"100001"``, ...;
    every fifth is in the validation split, the class index is the id modulo the class count.
    """
    if kind != "something-v2":
        raise ValueError(f"many_videos writes only kind='something-v2', not {kind!r}")
    count = round(seconds * _V2_FPS)
    if not 0 < count <= MAX_FRAMES:
        raise ValueError(f"{seconds} s is {count} frames; frame_index tells apart 1..{MAX_FRAMES}")
    ids = [str(100000 + j) for j in range(n)]
    labels = {i: j % len(_V2_CLASSES) for j, i in enumerate(ids)}
    train = {i: c for j, (i, c) in enumerate(labels.items()) if j % 5 != 4}
    val = {i: c for j, (i, c) in enumerate(labels.items()) if j % 5 == 4}
    return _write_something_v2(Path(root), train, val, dict.fromkeys(ids, count),
                               dict.fromkeys(ids, (320, 240)), {}, corrupt, absent, workers)


# ------------------------------------------------------------------------------------------------
# Kinetics-400
# ------------------------------------------------------------------------------------------------

_K400_FPS = 25
_K400_HEADER = "label,youtube_id,time_start,time_end,split,is_cc"


def _k400_line(label: str, youtube_id: str, start: int, split: str) -> str:
    # The official CSVs quote exactly the labels that contain a space ("air drumming") and leave
    # one-word labels bare (abseiling); time_end is time_start + 10 (the clips are 10 s windows).
    quoted = f'"{label}"' if " " in label else label
    return f"{quoted},{youtube_id},{start},{start + 10},{split},0\n"


def kinetics400(root: Path, *, corrupt: bool = True, absent: bool = True) -> Download:
    """Kinetics-400 as downloaded (CVDF tarballs or a YouTube crawler): clips anywhere under root::

        root/train/<class name>/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4   H.264, 25 fps
        root/val/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4                (flat, no class)
        root/annotations/train.csv      label,youtube_id,time_start,time_end,split,is_cc
        root/annotations/validate.csv   "air drumming",kX-4pHr9s2Q,40,50,val,0

    The ``split`` column says ``train`` / ``val``. A clip is found by its file name, wherever it is:
    train clips sit in class folders (names with spaces and parentheses), val clips flat. Kinetics
    ships no label file: ``classes`` is the sorted set of labels, the usual index order. YouTube
    ids are 11 characters of [A-Za-z0-9_-] (one starts with '-', so naive CLI parsing trips).
    Sizes 340x256, one portrait 256x340; clips hold 20..50 frames (not 10 s: the file name, not
    the duration, carries the window). Corrupt: qT4v8Xc1bYe (train). Absent: nOtHeRe4k1A (val).
    """
    root = Path(root)
    rows = {  # youtube_id: (label, time_start, split)
        "-abc123_xyz": ("tying knot (not on a tie eg) bowtie", 14, "train"),
        "Zq9vB2x0LcA": ("abseiling", 0, "train"),
        "0wT6kEw_mUo": ("passing American football (in game)", 231, "train"),
        "kX-4pHr9s2Q": ("air drumming", 40, "val"),
        "_f3GhJk9LmN": ("tying knot (not on a tie eg) bowtie", 5, "val"),
    }
    train = {i: r[0] for i, r in rows.items() if r[2] == "train"}
    val = {i: r[0] for i, r in rows.items() if r[2] == "val"}
    frames = _frame_counts(list(rows), 20, 50)
    size = {i: (256, 340) if i == "0wT6kEw_mUo" else (340, 256) for i in rows}
    bad, missing = (["qT4v8Xc1bYe"] if corrupt else []), (["nOtHeRe4k1A"] if absent else [])
    rows.update({i: ("abseiling", 30, "train") for i in bad})
    rows.update({i: ("air drumming", 7, "val") for i in missing})

    def clip(i: str) -> Path:
        label, start, split = rows[i]
        folder = root / "train" / label if split == "train" else root / "val"
        return folder / f"{i}_{start:06d}_{start + 10:06d}.mp4"

    _write_videos([(clip(i), n, size[i], _K400_FPS) for i, n in frames.items()])
    for i in bad:
        _write_corrupt_video(clip(i), (340, 256), _K400_FPS)
    annotations = {"train": root / "annotations" / "train.csv", "val": root / "annotations" / "validate.csv"}
    annotations["train"].parent.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", "train"), ("val", "val")):
        lines = [_k400_line(label, i, start, s) for i, (label, start, s) in rows.items() if s == split]
        annotations[name].write_text(_K400_HEADER + "\n" + "".join(lines), encoding="utf-8")
    return Download(root, train, val, frames, size, sorted(set(train.values()) | set(val.values())),
                    bad, missing, annotations)


# ------------------------------------------------------------------------------------------------
# Diving48
# ------------------------------------------------------------------------------------------------

_D48_FPS = 30


def _d48_vocab() -> list[list[str]]:
    """48 distinct [takeoff, somersault, twist, flight] entries in a fixed, unsorted order."""
    entries = [[t, s, w, f] for t in ("Back", "Forward", "Inward", "Reverse")
               for s, w in (("15som", "NoTwis"), ("25som", "05Twis"), ("35som", "15Twis"))
               for f in ("PIKE", "TUCK", "FREE", "STR")]
    random.Random(48).shuffle(entries)
    return entries


def diving48(root: Path, *, corrupt: bool = True, absent: bool = True) -> Download:
    """Diving48 (V2 annotations) as unpacked from Diving48_rgb.tar.gz plus the label files::

        root/rgb/<vid_name>.mp4          H.264, 30 fps
        root/Diving48_V2_train.json      [{"vid_name": "-mmq0PT-u8k_00155", "label": 12,
                                           "start_frame": 0, "end_frame": 82}, ...]
        root/Diving48_V2_test.json       same (the test split is the one everybody evaluates on)
        root/Diving48_vocab.json         [["Back", "15som", "05Twis", "FREE"], ...]   48 entries

    ``label`` is an int, the index into the vocab. A class name here is the vocab entry joined by
    spaces ("Back 15som 05Twis FREE"). ``start_frame`` 0 and ``end_frame`` = frames in the clip.
    Videos are 320x180, 20..40 frames. Corrupt: Zx0CoRRuPt1_00003 (train). Absent:
    Ab5eNt00k9q_00021 (test).
    """
    root = Path(root)
    vocab = _d48_vocab()
    classes = [" ".join(entry) for entry in vocab]
    train_labels = {"-mmq0PT-u8k_00155": 12, "2x00lRzlTVQ_00000": 0, "a_B3cD4eF5g_00017": 47}
    val_labels = {"9kLm_Qw-rTy_00002": 30, "zzYxW8v7u6T_00140": 12}
    frames = _frame_counts([*train_labels, *val_labels], 20, 40)
    size = dict.fromkeys(frames, (320, 180))
    bad, missing = (["Zx0CoRRuPt1_00003"] if corrupt else []), (["Ab5eNt00k9q_00021"] if absent else [])

    _write_videos([(root / "rgb" / f"{i}.mp4", n, size[i], _D48_FPS) for i, n in frames.items()])
    for i in bad:
        _write_corrupt_video(root / "rgb" / f"{i}.mp4", (320, 180), _D48_FPS)

    def entries(labels: dict[str, int]) -> list[dict]:
        return [{"vid_name": i, "label": c, "start_frame": 0, "end_frame": frames.get(i, CORRUPT_SOURCE_FRAMES)}
                for i, c in labels.items()]

    annotations = {"train": root / "Diving48_V2_train.json", "val": root / "Diving48_V2_test.json",
                   "labels": root / "Diving48_vocab.json"}
    _write_json(annotations["train"], entries({**train_labels, **dict.fromkeys(bad, 5)}))
    _write_json(annotations["val"], entries({**val_labels, **dict.fromkeys(missing, 7)}))
    _write_json(annotations["labels"], vocab)
    return Download(root, {i: classes[c] for i, c in train_labels.items()},
                    {i: classes[c] for i, c in val_labels.items()}, frames, size, classes, bad, missing,
                    annotations)
