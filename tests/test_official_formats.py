"""The official-format writers (tests/official_formats.py) write what their ``Download`` says.

Each file is read back the way the official formats are read (csv, json, PyAV, PIL), never
through the writers' own helpers, so a writer that drifts from its format or from its
``Download`` fails here before it can mislead a test of ``harness.prepare``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import sys

import av
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from official_formats import (CORRUPT_SOURCE_FRAMES, MAX_FRAMES, Download, diving48, frame_image,  # noqa: E402
                              frame_index, kinetics400, many_videos, something_v1, something_v2)


# ------------------------------------------------------------------------------------------------
# Reading back
# ------------------------------------------------------------------------------------------------

def resize_jpeg(rgb: np.ndarray, height: int = 256, quality: int = 90) -> np.ndarray:
    """What a frame-extracting prepare does: resize to a height, store as JPEG."""
    image = Image.fromarray(rgb)
    image = image.resize((round(image.width * height / image.height), height), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def decode(path) -> tuple[list[np.ndarray], av.video.stream.VideoStream, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream, container.format.name


def is_corrupt(path, encoded: int = CORRUPT_SOURCE_FRAMES) -> bool:
    """The documented check: PyAV raises, or decodes fewer than half the frames encoded."""
    try:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0)) < encoded / 2
    except av.FFmpegError:
        return True


def check_video(path, dl: Download, sample: str, codec: str, fps: int) -> None:
    frames, stream, _ = decode(path)
    assert stream.codec_context.name == codec
    assert stream.average_rate == fps
    assert (stream.width, stream.height) == dl.size[sample]
    assert len(frames) == dl.frames[sample]
    assert [frame_index(f) for f in frames] == list(range(len(frames)))
    assert [frame_index(resize_jpeg(f)) for f in frames] == list(range(len(frames)))


def check_split_bookkeeping(dl: Download) -> None:
    good = set(dl.train) | set(dl.val)
    assert not set(dl.train) & set(dl.val)
    assert set(dl.frames) == set(dl.size) == good
    assert not good & set(dl.corrupt) and not good & set(dl.absent)
    assert set(dl.train.values()) | set(dl.val.values()) <= set(dl.classes)
    assert len(set(dl.classes)) == len(dl.classes)
    assert all(0 < n <= MAX_FRAMES for n in dl.frames.values())
    assert all(p.is_file() for p in dl.annotations.values())


# ------------------------------------------------------------------------------------------------
# One copy of each download for the module (writing is well under a second each)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    return something_v1(tmp_path_factory.mktemp("v1"))


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    return something_v2(tmp_path_factory.mktemp("v2"))


@pytest.fixture(scope="module")
def k400(tmp_path_factory):
    return kinetics400(tmp_path_factory.mktemp("k400"))


@pytest.fixture(scope="module")
def d48(tmp_path_factory):
    return diving48(tmp_path_factory.mktemp("d48"))


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    return many_videos(tmp_path_factory.mktemp("many"), 7, seconds=1.5, workers=2)


# ------------------------------------------------------------------------------------------------
# frame_index
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(176, 100), (134, 100), (427, 240), (256, 340)])
def test_frame_index_recovers_every_k_after_resize_jpeg_and_centre_crop(size):
    width, height = size
    short = min(size)
    for k in range(MAX_FRAMES):
        rgb = frame_image(k, width, height)
        assert rgb.shape == (height, width, 3)
        assert frame_index(rgb) == k
        assert frame_index(resize_jpeg(rgb)) == k
        assert frame_index(resize_jpeg(rgb, height=64, quality=50)) == k
        top, left = (height - short) // 2, (width - short) // 2
        assert frame_index(resize_jpeg(rgb[top:top + short, left:left + short], height=224)) == k


def test_frame_index_refuses_foreign_frames_and_sees_channel_swaps():
    with pytest.raises(ValueError):
        frame_index(np.zeros((100, 100, 3), np.uint8))          # grey 0 is no level
    with pytest.raises(ValueError):
        frame_index(np.full((100, 100, 3), 25, np.uint8))       # between two levels
    with pytest.raises(ValueError):
        frame_index(np.full((100, 100, 3), 30, np.uint8))       # a level, but no marker
    with pytest.raises(ValueError):
        frame_index(np.zeros((100, 100), np.uint8))             # not RGB
    with pytest.raises(ValueError):
        frame_image(MAX_FRAMES, 64, 64)
    # A prepare that writes BGR must not pass a frame-order check.
    assert frame_index(frame_image(3, 176, 100)[..., ::-1]) != 3


# ------------------------------------------------------------------------------------------------
# Something-Something V1
# ------------------------------------------------------------------------------------------------

def test_something_v1_frames_and_csvs(v1):
    check_split_bookkeeping(v1)
    root = v1.root
    assert v1.annotations["labels"] == root / "something-something-v1-labels.csv"
    labels = v1.annotations["labels"].read_text(encoding="utf-8").splitlines()
    assert labels == v1.classes and labels != sorted(labels)

    def rows(path):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert all(re.fullmatch(r"\d+;[^;]+", line) for line in lines)  # no header, id;class
        return dict(line.split(";", 1) for line in lines)

    train = rows(root / "something-something-v1-train.csv")
    val = rows(root / "something-something-v1-validation.csv")
    assert train == {**v1.train, **{i: train[i] for i in v1.corrupt}} and set(v1.corrupt) <= set(train)
    assert val == {**v1.val, **{i: val[i] for i in v1.absent}} and set(v1.absent) <= set(val)
    assert set(train.values()) | set(val.values()) <= set(labels)

    folder = root / "20bn-something-something-v1"
    for sample, n in v1.frames.items():
        files = sorted(p.name for p in (folder / sample).iterdir())
        assert files == [f"{k:05d}.jpg" for k in range(1, n + 1)]
        for k in range(n):
            image = Image.open(folder / sample / files[k])
            assert image.format == "JPEG" and image.size == v1.size[sample] and image.height == 100
            rgb = np.asarray(image.convert("RGB"))
            assert frame_index(rgb) == k and frame_index(resize_jpeg(rgb)) == k
    assert v1.corrupt and all(list((folder / i).iterdir()) == [] for i in v1.corrupt)
    assert v1.absent and not any((folder / i).exists() for i in v1.absent)
    assert len(set(v1.frames.values())) == len(v1.frames)


# ------------------------------------------------------------------------------------------------
# Something-Something V2 (and many_videos, which writes the same format)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["v2", "many"])
def test_something_v2_videos_and_jsons(name, request):
    dl: Download = request.getfixturevalue(name)
    check_split_bookkeeping(dl)
    root = dl.root
    labels = json.loads((root / "something-something-v2-labels.json").read_text(encoding="utf-8"))
    assert all(isinstance(v, str) and v.isdigit() for v in labels.values())
    assert sorted(int(v) for v in labels.values()) == list(range(len(labels)))
    assert [name for name, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))] == dl.classes
    assert dl.classes != sorted(dl.classes) and list(labels) != dl.classes

    def samples(file):
        entries = json.loads((root / file).read_text(encoding="utf-8"))
        for e in entries:
            assert set(e) == {"id", "label", "template", "placeholders"} and e["id"].isdigit()
            assert e["template"].count("[") == len(e["placeholders"])
        return {e["id"]: e["template"].replace("[", "").replace("]", "") for e in entries}

    train, val = samples("something-something-v2-train.json"), samples("something-something-v2-validation.json")
    assert set(train.values()) | set(val.values()) <= set(labels)
    assert train == {**dl.train, **{i: train[i] for i in dl.corrupt}} and set(dl.corrupt) <= set(train)
    assert val == {**dl.val, **{i: val[i] for i in dl.absent}} and set(dl.absent) <= set(val)

    videos = root / "20bn-something-something-v2"
    for sample in list(dl.frames)[:5]:
        check_video(videos / f"{sample}.webm", dl, sample, "vp9", 12)
        assert dl.size[sample][1] == 240 and decode(videos / f"{sample}.webm")[2] == "matroska,webm"
    for entry in json.loads((root / "something-something-v2-test.json").read_text(encoding="utf-8")):
        assert set(entry) == {"id"} and len(decode(videos / f"{entry['id']}.webm")[0]) > 0
    assert dl.corrupt and all(is_corrupt(videos / f"{i}.webm") for i in dl.corrupt)
    assert dl.absent and not any((videos / f"{i}.webm").exists() for i in dl.absent)
    written = {p.stem for p in videos.iterdir()}
    assert set(dl.frames) | set(dl.corrupt) <= written and not written & set(dl.absent)


def test_something_v2_labels_fill_the_template(v2):
    entries = json.loads(v2.annotations["train"].read_text(encoding="utf-8"))
    by_id = {e["id"]: e for e in entries}
    assert by_id["78687"]["label"] == "holding potato next to vicks vaporub bottle"
    assert v2.train["42326"] == "Stacking number of something"
    assert v2.train["145274"] == "Something falling like a feather or paper"


def test_many_videos_counts(many):
    assert len(many.train) + len(many.val) == 7 and len(many.val) == 1
    assert set(many.frames.values()) == {18}  # 1.5 s at 12 fps


# ------------------------------------------------------------------------------------------------
# Kinetics-400
# ------------------------------------------------------------------------------------------------

def test_kinetics400_clips_and_csvs(k400):
    check_split_bookkeeping(k400)
    header = "label,youtube_id,time_start,time_end,split,is_cc"
    rows = {}
    for name, split in (("train", "train"), ("validate", "val")):
        text = (k400.root / "annotations" / f"{name}.csv").read_text(encoding="utf-8")
        assert text.splitlines()[0] == header
        for line in text.splitlines()[1:]:  # labels with spaces are quoted, one-word ones bare
            assert line.startswith('"') == (" " in next(csv.reader([line]))[0])
        for row in csv.DictReader(io.StringIO(text)):
            assert row["split"] == split and row["is_cc"] == "0"
            assert int(row["time_end"]) - int(row["time_start"]) == 10
            rows[row["youtube_id"]] = row
    assert {i: r["label"] for i, r in rows.items() if r["split"] == "train"} == \
        {**k400.train, **{i: rows[i]["label"] for i in k400.corrupt}}
    assert {i: r["label"] for i, r in rows.items() if r["split"] == "val"} == \
        {**k400.val, **{i: rows[i]["label"] for i in k400.absent}}
    assert k400.classes == sorted({r["label"] for r in rows.values()})
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{11}", i) for i in rows)
    assert any(i.startswith("-") for i in k400.frames) and any("_" in i for i in k400.frames)
    assert any(" " in c and "(" in c for c in k400.classes)

    clips = {p.name: p for p in k400.root.rglob("*.mp4")}
    name = {i: f"{i}_{int(r['time_start']):06d}_{int(r['time_end']):06d}.mp4" for i, r in rows.items()}
    for sample in k400.frames:
        check_video(clips[name[sample]], k400, sample, "h264", 25)
    assert {p.parent.name for p in clips.values()} > {"val"}  # class folders and a flat one
    assert any(w < h for w, h in k400.size.values()) and any(w > h for w, h in k400.size.values())
    assert k400.corrupt and all(is_corrupt(clips[name[i]]) for i in k400.corrupt)
    assert k400.absent and not any(name[i] in clips for i in k400.absent)
    assert len(clips) == len(k400.frames) + len(k400.corrupt)


# ------------------------------------------------------------------------------------------------
# Diving48
# ------------------------------------------------------------------------------------------------

def test_diving48_videos_and_jsons(d48):
    check_split_bookkeeping(d48)
    vocab = json.loads((d48.root / "Diving48_vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 48 and all(len(e) == 4 and all(isinstance(s, str) for s in e) for e in vocab)
    assert len({tuple(e) for e in vocab}) == 48 and vocab != sorted(vocab)
    assert d48.classes == [" ".join(e) for e in vocab]

    def samples(file):
        entries = json.loads((d48.root / file).read_text(encoding="utf-8"))
        for e in entries:
            assert set(e) == {"vid_name", "label", "start_frame", "end_frame"}
            assert isinstance(e["label"], int) and 0 <= e["label"] < 48
            if e["vid_name"] in d48.frames:
                assert e["end_frame"] - e["start_frame"] == d48.frames[e["vid_name"]]
        return {e["vid_name"]: d48.classes[e["label"]] for e in entries}

    train, test = samples("Diving48_V2_train.json"), samples("Diving48_V2_test.json")
    assert train == {**d48.train, **{i: train[i] for i in d48.corrupt}} and set(d48.corrupt) <= set(train)
    assert test == {**d48.val, **{i: test[i] for i in d48.absent}} and set(d48.absent) <= set(test)
    rgb = d48.root / "rgb"
    for sample in d48.frames:
        check_video(rgb / f"{sample}.mp4", d48, sample, "h264", 30)
    assert d48.corrupt and all(is_corrupt(rgb / f"{i}.mp4") for i in d48.corrupt)
    assert d48.absent and not any((rgb / f"{i}.mp4").exists() for i in d48.absent)


# ------------------------------------------------------------------------------------------------
# Failure samples: real bytes that fail, and switches that drop them
# ------------------------------------------------------------------------------------------------

def test_corrupt_videos_are_truncated_real_videos(v2, k400, d48):
    corrupt = [(v2.root / "20bn-something-something-v2" / f"{v2.corrupt[0]}.webm", 0, b"\x1aE\xdf\xa3"),
               (next(k400.root.rglob(f"{k400.corrupt[0]}_*.mp4")), 4, b"ftyp"),
               (d48.root / "rgb" / f"{d48.corrupt[0]}.mp4", 4, b"ftyp")]
    for path, at, magic in corrupt:
        data = path.read_bytes()
        assert data[at:at + 4] == magic and len(data) > 1000  # a real file of its kind, cut
        assert is_corrupt(path)
    for dl, path in ((v2, v2.root / "20bn-something-something-v2" / "78687.webm"),
                     (d48, d48.root / "rgb" / "2x00lRzlTVQ_00000.mp4")):  # the check can pass
        assert not is_corrupt(path, dl.frames[path.stem])


def listed_ids(dl: Download) -> set[str]:
    """Sample ids in the train and validation annotations, read as each format is read."""
    ids = set()
    for key in ("train", "val"):
        path = dl.annotations[key]
        if path.parent.name == "annotations":  # Kinetics
            ids |= {row["youtube_id"] for row in csv.DictReader(path.open(encoding="utf-8"))}
        elif path.suffix == ".csv":  # SS-V1
            ids |= {line.split(";", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()}
        else:
            ids |= {e.get("id", e.get("vid_name")) for e in json.loads(path.read_text(encoding="utf-8"))}
    return ids


def samples_on_disk(dl: Download) -> int:
    videos = [p for p in dl.root.rglob("*") if p.suffix in (".mp4", ".webm")]
    folders = [p for p in (dl.root / "20bn-something-something-v1").glob("*")]
    return len(videos) + len(folders)


@pytest.mark.parametrize("writer, name", [(something_v1, "v1"), (something_v2, "v2"),
                                          (kinetics400, "k400"), (diving48, "d48")])
def test_failure_samples_only_when_asked(writer, name, request, tmp_path):
    full: Download = request.getfixturevalue(name)
    clean = writer(tmp_path, corrupt=False, absent=False)
    assert len(full.corrupt) == len(full.absent) == 1 and clean.corrupt == clean.absent == []
    assert listed_ids(full) == set(full.train) | set(full.val) | set(full.corrupt) | set(full.absent)
    assert listed_ids(clean) == set(clean.train) | set(clean.val) == set(full.train) | set(full.val)
    assert samples_on_disk(full) == samples_on_disk(clean) + 1  # the corrupt one; the absent is nowhere


def test_many_videos_writes_only_something_v2(tmp_path):
    with pytest.raises(ValueError):
        many_videos(tmp_path, 2, kind="kinetics400")
    with pytest.raises(ValueError):  # 12 s at 12 fps is more frames than frame_index can tell apart
        many_videos(tmp_path, 2, seconds=12.0, workers=1)
