"""Where a sweep's checkpoints live: Ray Tune's storage (``--storage``: a folder every node sees,
NFS, or ``s3://…``; by default ``RESULTS/ray``), read and written through pyarrow's filesystems
as Ray Tune does, so the driver and every node see the same files.

Layout: ``STORAGE/<spec>/<sweep run>/<trial hash>/checkpoint_NNNNNN/`` (Ray Tune's, with the
trial folders named by hash), each checkpoint holding ``last.pt`` (``harness.train.fit``'s
state) and ``meta.json`` (the trial hash, its MLflow run, the epoch and its history). A trial
retried within a sweep resumes from Tune's own latest checkpoint; a trial of a later sweep from
``latest`` here. ``--fresh`` deletes a spec's trial folders (``forget``) on every node at once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

META = "meta.json"
STATE = "last.pt"
MARKER = "sweep.json"  # in a sweep's own folder: a node that cannot read it cannot see the storage


def resolve(arg: str | None, results_dir: Path) -> str:
    """The storage as a URI or an absolute path (relative paths from the command's directory)."""
    if not arg:
        return str(results_dir / "ray")
    if "://" in arg:
        return arg.rstrip("/")
    return os.path.normpath(Path(arg).expanduser().resolve())


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def write_text(uri: str, text: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(str(PurePosixPath(path).parent), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(uri: str) -> str | None:
    """The file's text, or None when it is not there (or not readable from here)."""
    fs, path = _fs(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def _trial_folders(storage: str, spec: str, hashes: set[str]) -> list[tuple[str, str]]:
    """(hash, path) of every trial folder of ``spec``'s sweeps whose hash is in ``hashes``."""
    fs, root = _fs(join(storage, spec))
    try:
        sweeps = [i for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                  if i.type == pafs.FileType.Directory]
    except FileNotFoundError:
        return []
    out = []
    for sweep in sweeps:
        for info in fs.get_file_info(pafs.FileSelector(sweep.path, allow_not_found=True)):
            if info.type == pafs.FileType.Directory and info.base_name in hashes:
                out.append((info.base_name, info.path))
    return out


def latest(storage: str, spec: str, hashes: set[str]) -> dict[str, str]:
    """hash -> URI of its most advanced complete checkpoint in any earlier sweep of ``spec``.
    A checkpoint counts when its ``meta.json`` names the hash and ``last.pt`` has the size it
    records (a node lost while Ray copied it leaves a partial folder)."""
    fs, _ = _fs(storage)
    best: dict[str, tuple[tuple, str]] = {}
    for h, folder in _trial_folders(storage, spec, hashes):
        for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
                continue
            meta = read_meta(fs, info.path)
            state = fs.get_file_info(f"{info.path}/{STATE}")
            if not meta or meta.get("trial_hash") != h or state.size != meta.get("state_bytes"):
                continue
            rank = (meta.get("epoch", 0), folder, info.base_name)  # sweeps are named by time
            if h not in best or rank > best[h][0]:
                best[h] = (rank, info.path)
    prefix = storage.split("://", 1)[0] + "://" if "://" in storage else ""
    return {h: prefix + path for h, (_, path) in best.items()}


def read_meta(fs: pafs.FileSystem, folder: str) -> dict | None:
    try:
        with fs.open_input_stream(f"{folder}/{META}") as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, ValueError):
        return None


def forget(storage: str, spec: str, hashes: set[str]) -> int:
    """Delete every checkpoint of these trials in ``spec``'s sweeps; returns how many trial folders."""
    fs, _ = _fs(storage)
    folders = _trial_folders(storage, spec, hashes)
    for _, folder in folders:
        fs.delete_dir(folder)
    return len(folders)
