"""The official downloads, read: class names in the order the authors' release uses, and every
annotated sample with its label and where its video (or frame folder) is in the download.

Nothing here decodes or writes anything. A malformed annotation file is a ``SourceError`` naming
the file, the line or entry and what was expected; a sample whose file is absent is not an error
here (``Sample.source`` is None): the preparation lists it as a failure and goes on.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


class SourceError(ValueError):
    """A download that is not in the official format: the message names the file and the entry."""


@dataclass(frozen=True)
class Sample:
    id: str  # the output folder (frames) or the listed name (videos)
    split: str  # "train" | "val"
    label: int
    source: Path | None  # the video file or frame folder in the download; None: absent


@dataclass(frozen=True)
class Download:
    dataset: str
    classes: list[str]  # index = label
    samples: list[Sample]
    media: str  # what the download holds: "frames" (SS-V1) or "videos"
    root: Path  # where the samples' files are (linked from the output as frames/ or videos/)


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise SourceError(f"{path}: not found (is --source the folder of the official download?)")
    return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]


def _json(path: Path):
    if not path.is_file():
        raise SourceError(f"{path}: not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not JSON: {e}") from None


def _entries(path: Path, *keys: str):
    """(position, (entry[key] for key in keys)) for each entry of the JSON list in ``path``."""
    entries = _json(path)
    if not isinstance(entries, list):
        raise SourceError(f"{path}: expected a list of {{{', '.join(repr(k) for k in keys)}, ...}}")
    for k, entry in enumerate(entries):
        try:
            yield k, tuple(entry[key] for key in keys)
        except (KeyError, TypeError):
            raise SourceError(f"{path}: entry {k}: expected keys {' and '.join(map(repr, keys))}, got {entry!r}") from None


def _index(classes: list[str], source: Path) -> dict[str, int]:
    seen: dict[str, int] = {}
    for i, name in enumerate(classes):
        if name in seen:
            raise SourceError(f"{source}: class {name!r} is listed twice")
        seen[name] = i
    return seen


def something_v1(source: Path) -> Download:
    """``something-something-v1-labels.csv`` (a class name a line), ``-train.csv`` and
    ``-validation.csv`` (``id;class name`` lines), frames in ``20bn-something-something-v1/<id>/``.
    Classes in sorted order, as the GSF/GSM/TSM releases' ``process_dataset.py`` writes them
    (MMAction2 keeps the CSV's order: the released checkpoints' outputs follow the sorted one)."""
    labels = source / "something-something-v1-labels.csv"
    classes = sorted(name.strip() for name in _lines(labels) if name.strip())
    index = _index(classes, labels)
    frames = source / "20bn-something-something-v1"
    samples = []
    for split, name in (("train", "train"), ("val", "validation")):
        path = source / f"something-something-v1-{name}.csv"
        for lineno, line in enumerate(_lines(path), 1):
            if not line.strip():
                continue
            vid, sep, label = line.partition(";")
            if not sep or not vid.strip() or label.strip() not in index:
                raise SourceError(f"{path}:{lineno}: expected 'id;class name' with a class of {labels}, got {line!r}")
            folder = frames / vid.strip()
            samples.append(Sample(vid.strip(), split, index[label.strip()], folder if folder.is_dir() else None))
    return Download("something-v1", classes, samples, "frames", frames)


def something_v2(source: Path) -> Download:
    """``something-something-v2-labels.json`` ({class name: "index"}), ``-train.json`` and
    ``-validation.json`` (lists of {"id", "template", ...}; the class is the template without its
    square brackets), videos ``20bn-something-something-v2/<id>.webm``. Classes in the labels
    file's index order, as TSM's ``gen_label_sthv2.py`` writes them."""
    labels = source / "something-something-v2-labels.json"
    table = _json(labels)
    try:
        by_index = {int(i): name for name, i in table.items()}
    except (AttributeError, TypeError, ValueError):
        raise SourceError(f"{labels}: expected {{class name: \"index\"}}") from None
    if sorted(by_index) != list(range(len(table))):
        raise SourceError(f"{labels}: the indices are not 0..{len(table) - 1} once each")
    classes = [by_index[i] for i in range(len(table))]
    index = _index(classes, labels)
    videos = source / "20bn-something-something-v2"
    samples = []
    for split, name in (("train", "train"), ("val", "validation")):
        path = source / f"something-something-v2-{name}.json"
        for k, (vid, template) in _entries(path, "id", "template"):
            label = str(template).replace("[", "").replace("]", "")
            if label not in index:
                raise SourceError(f"{path}: entry {k} (id {vid}): class {label!r} is not in {labels}")
            video = videos / f"{vid}.webm"
            samples.append(Sample(str(vid), split, index[label], video if video.is_file() else None))
    return Download("something-v2", classes, samples, "videos", videos)


def _find_videos(source: Path) -> dict[str, Path]:
    """Every video file under ``source`` by its name without the suffix (one directory walk)."""
    found: dict[str, Path] = {}
    for folder, _, files in os.walk(source, followlinks=True):
        for f in files:
            stem, suffix = os.path.splitext(f)
            if suffix.lower() in VIDEO_SUFFIXES:
                found.setdefault(stem, Path(folder) / f)
    return found


def kinetics400(source: Path, train_csv: Path, val_csv: Path) -> Download:
    """Videos anywhere under ``source`` named ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``
    (the official crawler's names); annotation CSVs with a header naming at least ``label``,
    ``youtube_id``, ``time_start``, ``time_end`` (extra columns ignored). Classes sorted."""
    rows = {split: _kinetics_rows(path) for split, path in (("train", train_csv), ("val", val_csv))}
    classes = sorted({label for split in rows.values() for label, _, _ in split})
    index = _index(classes, train_csv)
    videos = _find_videos(source)
    samples = []
    for split, path in (("train", train_csv), ("val", val_csv)):
        for label, stem, where in rows[split]:
            samples.append(Sample(stem, split, index[label], videos.get(stem)))
    return Download("kinetics400", classes, samples, "videos", source)


def _kinetics_rows(path: Path) -> list[tuple[str, str, str]]:
    """(label, file stem, "file:line") per annotated clip."""
    if not path.is_file():
        raise SourceError(f"{path}: annotation file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"label", "youtube_id", "time_start", "time_end"}
        if not need <= set(reader.fieldnames or ()):
            raise SourceError(f"{path}: the header must name {', '.join(sorted(need))} "
                              f"(the official CSV's), got {reader.fieldnames}")
        rows = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            try:
                stem = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}"
            except (TypeError, ValueError):
                raise SourceError(f"{where}: time_start and time_end must be whole seconds, got "
                                  f"{row['time_start']!r}, {row['time_end']!r}") from None
            rows.append((row["label"].strip(), stem, where))
    return rows


def diving48(source: Path, train_json: Path, test_json: Path, vocab: Path | None = None) -> Download:
    """Diving48 V2: ``Diving48_V2_train.json`` / ``_test.json`` (lists of {"vid_name", "label",
    "start_frame", "end_frame"}), videos ``<vid_name>.mp4`` anywhere under ``source`` (``rgb/``
    in the download). Class names from ``Diving48_vocab.json`` (48 lists [takeoff, somersault,
    twist, flight], joined by spaces), else the label numbers."""
    if vocab is not None:
        entries = _json(vocab)
        if not isinstance(entries, list) or not all(isinstance(e, list) for e in entries):
            raise SourceError(f"{vocab}: expected a list of [takeoff, somersault, twist, flight] lists")
        classes = [" ".join(map(str, e)) for e in entries]
    else:
        classes = [str(i) for i in range(48)]
    videos = _find_videos(source)
    samples = []
    for split, path in (("train", train_json), ("val", test_json)):
        for k, (name, label) in _entries(path, "vid_name", "label"):
            name = str(name)
            if not isinstance(label, int) or not 0 <= label < len(classes):
                raise SourceError(f"{path}: entry {k} ({name}): label {label!r} is not in [0, {len(classes)})")
            samples.append(Sample(name, split, label, videos.get(name)))
    return Download("diving48", classes, samples, "videos", source)
