"""``python -m harness.prepare`` on tiny copies of the official downloads (``official_formats``):
lists in the release's class order, frames that are the video's frames in order at the stated
size, failures listed (exit 1) and left out, resume, dry run, refusals, ``--check``; and what a
sweep says when a paper profile's files are not prepared."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import official_formats as official
from harness.data import DataConfig, build_datasets, check_data
from harness.data.datasets import prepared_layout
from harness.prepare.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}


def prepare(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.prepare", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=300)


def listed(path: Path) -> list[list[str]]:
    return [line.rsplit(None, 2) if "videofolder" in path.name else line.rsplit(None, 1)
            for line in path.read_text().splitlines()]


def failures(out: Path) -> dict[str, str]:
    lines = (out / "prepare_failures.txt").read_text().splitlines()[1:]
    return {line.split("\t")[1]: line.split("\t")[2] for line in lines}


def frame_indices(folder: Path, template: str, count: int) -> list[int]:
    return [official.frame_index(Image.open(folder / template.format(k))) for k in range(1, count + 1)]


def test_something_v1_lists_in_sorted_class_order_with_links_and_failures(tmp_path):
    download = official.something_v1(tmp_path / "download")
    out = tmp_path / "ssv1"
    done = prepare("something-v1", "--source", download.root, "--out", out)
    assert done.returncode == 1, done.stderr  # one corrupt (empty) folder, one absent: listed, the rest prepared
    classes = (out / "category.txt").read_text().splitlines()
    assert classes == sorted(download.classes) and classes != download.classes  # the release's order, not the CSV's
    assert (out / "frames").is_symlink() and (out / "frames").resolve() == (download.root / "20bn-something-something-v1").resolve()
    for split, name in (("train", "train_videofolder.txt"), ("val", "val_videofolder.txt")):
        rows = listed(out / name)
        assert {folder.removeprefix("frames/") for folder, _, _ in rows} == set(getattr(download, split))
        for folder, count, label in rows:
            vid = folder.removeprefix("frames/")
            assert int(count) == download.frames[vid] and classes[int(label)] == getattr(download, split)[vid]
    assert set(failures(out)) == set(download.corrupt) | set(download.absent)
    assert "prepare_failures.txt" in done.stderr and all(v in done.stderr for v in download.corrupt + download.absent)
    check = prepare("something-v1", "--check", "--out", out)
    assert check.returncode == 0 and "OK" in check.stdout, check.stderr
    # Nothing was written into the download.
    assert sorted(p.name for p in download.root.iterdir()) == sorted(
        ["20bn-something-something-v1", "something-something-v1-labels.csv", "something-something-v1-train.csv",
         "something-something-v1-validation.csv"])


def test_something_v2_frames_are_the_videos_frames_at_height_256_and_resume(tmp_path, capsys):
    download = official.something_v2(tmp_path / "download")
    out = tmp_path / "ssv2"
    assert main(["something-v2", "--source", str(download.root), "--out", str(out), "--workers", "2"]) == 1
    classes = (out / "category.txt").read_text().splitlines()
    assert classes == download.classes  # the labels file's index order
    rows = {f.removeprefix("frames/"): (int(n), int(label)) for f, n, label in listed(out / "train_videofolder.txt")}
    rows |= {f.removeprefix("frames/"): (int(n), int(label)) for f, n, label in listed(out / "val_videofolder.txt")}
    assert set(rows) == set(download.train) | set(download.val)
    for vid, (count, label) in rows.items():
        assert count == download.frames[vid] and classes[label] == {**download.train, **download.val}[vid]
        folder = out / "frames" / vid
        assert sorted(os.listdir(folder)) == [f"{k:06d}.jpg" for k in range(1, count + 1)]
        width, height = Image.open(folder / "000001.jpg").size
        source_w, source_h = download.size[vid]
        assert height == 256 and width == round(source_w * 256 / source_h)
        assert frame_indices(folder, "{:06d}.jpg", count) == list(range(count))
    assert set(failures(out)) == set(download.corrupt) | set(download.absent)
    assert "truncated" in failures(out)[download.corrupt[0]] or "decode" in failures(out)[download.corrupt[0]]

    # Resume: complete folders are kept; one with a frame missing and a stopped run's .partial are redone.
    vids = sorted(rows)
    kept, broken = out / "frames" / vids[0], out / "frames" / vids[1]
    stamp = (kept / "000001.jpg").stat().st_mtime_ns
    (broken / f"{rows[vids[1]][0]:06d}.jpg").unlink()  # the last frame: 1..n-1 still look whole
    (out / "frames" / f"{vids[2]}.partial").mkdir()
    capsys.readouterr()
    assert main(["something-v2", "--source", str(download.root), "--out", str(out), "--workers", "1"]) == 1
    said = capsys.readouterr().out
    # The corrupt video is tried again too: a failure is never remembered as done.
    assert f"{len(rows) - 1} already done (kept), {1 + len(download.corrupt)} to extract" in said, said
    assert (kept / "000001.jpg").stat().st_mtime_ns == stamp
    assert len(os.listdir(broken)) == rows[vids[1]][0] and not (out / "frames" / f"{vids[2]}.partial").exists()
    # The prepared folder passes the sweep's own data check and loads as the paper profile reads it.
    cfg = DataConfig(dataset="something-v2", root=out, train_list="train_videofolder.txt",
                     val_list="val_videofolder.txt", categories="category.txt", input_size=224)
    check_data(cfg, len(classes))
    train, val = build_datasets(cfg, num_frames=4)
    clip, label = train[0]
    assert clip.shape == (4, 3, 224, 224) and 0 <= label < len(classes)


def test_kinetics_frames_at_short_side_from_nested_videos_and_keep_videos(tmp_path):
    download = official.kinetics400(tmp_path / "download")
    notes = download.annotations
    out = tmp_path / "k400"
    done = prepare("kinetics400", "--source", download.root, "--annotations", notes["train"], notes["val"],
                   "--short-side", 128, "--out", out)
    assert done.returncode == 1, done.stderr
    classes = (out / "category.txt").read_text().splitlines()
    assert classes == sorted(classes) and set(classes) == set(download.train.values()) | set(download.val.values())
    rows = listed(out / "train_videofolder.txt") + listed(out / "val_videofolder.txt")
    truth = {**download.train, **download.val}
    assert len(rows) == len(truth)
    for folder, count, label in rows:
        stem = folder.removeprefix("frames/")
        youtube_id = stem[:-14]  # {youtube_id}_{start:06d}_{end:06d}
        assert classes[int(label)] == truth[youtube_id] and int(count) == download.frames[youtube_id]
        width, height = Image.open(out / folder / "img_00001.jpg").size
        assert min(width, height) == 128
        source_w, source_h = download.size[youtube_id]
        assert (width > height) == (source_w > source_h)
        assert frame_indices(out / folder, "img_{:05d}.jpg", int(count)) == list(range(int(count)))
    assert {stem[:-14] for stem in failures(out)} == set(download.corrupt) | set(download.absent)
    assert "data: {dataset: kinetics400" in done.stdout and "media: frames" in done.stdout
    cfg = DataConfig(dataset="kinetics400", media="frames", root=out, train_list="train_videofolder.txt",
                     val_list="val_videofolder.txt", categories="category.txt", input_size=112)
    check_data(cfg, len(classes))
    assert build_datasets(cfg, num_frames=3)[1][0][0].shape == (1, 3, 3, 112, 112)

    # --keep-videos: each video re-encoded once (short side, a keyframe every --gop frames), listed
    # for the video loader; every frame kept, in order.
    videos = tmp_path / "k400-videos"
    done = prepare("kinetics400", "--source", download.root, "--annotations", notes["train"], notes["val"],
                   "--keep-videos", "--short-side", 128, "--gop", 8, "--out", videos)
    assert done.returncode == 1, done.stderr
    rows = listed(videos / "train_videos.txt") + listed(videos / "val_videos.txt")
    assert len(rows) == len(truth)
    for path, label in rows:
        youtube_id = Path(path).stem[:-14]
        assert classes[int(label)] == truth[youtube_id]
        with av.open(str(videos / path)) as container:
            stream = container.streams.video[0]
            packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
            keys = sorted(pts for pts, key in packets if key)
            container.seek(0)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            # Read while the file is open: PyAV's stream fields are not valid after it closes.
            claimed, noted = stream.frames, prepared_layout(container, stream)
        assert claimed == len(frames) == download.frames[youtube_id]
        assert min(frames[0].shape[:2]) == 128
        assert [official.frame_index(f) for f in frames] == list(range(len(frames)))
        # A keyframe every 8 frames exactly (none forced by the source's keyframes or scene cuts),
        # as the file's note says: the loader takes this layout from the note, without the scan.
        times = sorted(pts for pts, _ in packets)
        assert keys == times[::8] and noted == (times, keys)
        # No B-frames (x264 bf 0): packets come in the order they are shown.
        assert [pts for pts, _ in packets] == sorted(pts for pts, _ in packets)
    assert {stem[:-14] for stem in failures(videos)} == set(download.corrupt) | set(download.absent)
    cfg = DataConfig(dataset="kinetics400", root=videos, train_list="train_videos.txt", val_list="val_videos.txt",
                     categories="category.txt", input_size=112)
    check_data(cfg, len(classes))
    assert build_datasets(cfg, num_frames=3)[0][0][0].shape == (3, 3, 112, 112)
    again = prepare("kinetics400", "--source", download.root, "--annotations", notes["train"], notes["val"],
                    "--keep-videos", "--short-side", 128, "--gop", 8, "--out", videos)
    assert f"{len(truth)} already done (kept), {len(download.corrupt)} to re-encode" in again.stdout, again.stdout


def test_diving48_class_names_from_the_vocabulary_or_numbers(tmp_path):
    download = official.diving48(tmp_path / "download")
    notes = download.annotations
    out = tmp_path / "d48"
    assert main(["diving48", "--source", str(download.root), "--annotations", str(notes["train"]), str(notes["val"]),
                 "--vocab", str(notes["labels"]), "--out", str(out), "--short-side", "64"]) == 1
    classes = (out / "category.txt").read_text().splitlines()
    assert classes == [" ".join(v) for v in json.loads(notes["labels"].read_text())]
    truth = {**download.train, **download.val}
    for folder, count, label in listed(out / "train_videofolder.txt") + listed(out / "val_videofolder.txt"):
        vid = folder.removeprefix("frames/")
        assert classes[int(label)] == truth[vid] and int(count) == download.frames[vid]
    plain = tmp_path / "d48-plain"
    assert main(["diving48", "--source", str(download.root), "--annotations", str(notes["train"]), str(notes["val"]),
                 "--out", str(plain), "--keep-videos"]) == 1
    assert (plain / "category.txt").read_text().splitlines() == [str(i) for i in range(48)]


def test_dry_run_writes_nothing_and_estimates_the_disk(tmp_path, capsys):
    download = official.something_v2(tmp_path / "download", corrupt=False, absent=False)
    out = tmp_path / "ssv2"
    assert main(["something-v2", "--source", str(download.root), "--out", str(out), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert not out.exists()
    assert "estimate: ~" in said and "free at" in said and "dry run: nothing written" in said, said


def test_not_enough_disk_is_refused_before_the_bulk(tmp_path, monkeypatch, capsys):
    import shutil

    download = official.something_v2(tmp_path / "download", corrupt=False, absent=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    assert main(["something-v2", "--source", str(download.root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "the frames need ~" in err and "--no-space-check" in err, err


@pytest.mark.parametrize("case,match", [
    ("inside", "is inside --source"),
    ("no-source", "--source DIR (the official download) is required"),
    ("bad-annotation", "something-something-v1-train.csv:4: expected 'id;class name'"),
    ("no-annotations", "--annotations TRAIN VAL is required"),
])
def test_refusals_are_one_line_and_exit_2(tmp_path, case, match):
    download = official.something_v1(tmp_path / "download", corrupt=False, absent=False)
    args = ["something-v1", "--source", download.root, "--out", tmp_path / "out"]
    if case == "inside":
        args[-1] = download.root / "prepared"
    elif case == "no-source":
        args = ["something-v1", "--out", tmp_path / "out"]
    elif case == "bad-annotation":
        path = download.annotations["train"]
        path.write_text(path.read_text() + "12345 no separator\n")
    else:
        args = ["kinetics400", "--source", download.root]
    done = prepare(*args)
    assert done.returncode == 2 and match in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_paper_profiles_dry_run_on_an_empty_data_folder_names_the_prepare_commands(tmp_path):
    done = subprocess.run([sys.executable, "-m", "harness.sweep", str(ROOT / "ablations" / "table5_components.yaml"),
                           "--profile", "paper", "--dry-run", "--results-dir", str(tmp_path / "results")],
                          capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert any(f"{tmp_path}/data/weights/bninception_imagenet.pth: not found; make it with: "
               "python -m harness.prepare weights bninception" in line for line in lines), lines
    assert any(f"{tmp_path}/data/something-v1/category.txt: not found; prepare it from the official download with: "
               "python -m harness.prepare something-v1 --source PATH/TO/something-something-v1" in line
               for line in lines), lines
    assert all(line.startswith("harness.sweep: error: ") for line in lines) and "Traceback" not in done.stderr


# --- what a spec and a sweep make of model.pretrained -----------------------------------------------

def spec_file(tmp_path: Path, model: dict, data: dict | None = None) -> Path:
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "description": "pretrained", "base": {"model": {"backbone": "resnet18", "module": "tsm", "num_classes": 4,
                                                         "width_mult": 0.25, **model},
                                              "data": {"dataset": "synthetic", "num_classes": 4, **(data or {})}},
        "grid": {"variants": [{"name": "a"}]}}))
    return path


def test_imagenet_names_the_backbones_prepared_file_and_none_stays_none(tmp_path):
    from harness.run_info import initialisation
    from harness.spec import load_spec

    (trial,) = load_spec(spec_file(tmp_path, {"pretrained": "imagenet"}), cwd=tmp_path).trials
    assert trial.config["model"]["pretrained"] == str(tmp_path / "data" / "weights" / "resnet18_imagenet.pth")
    assert initialisation(trial.config["model"]) == "pretrained resnet18_imagenet.pth"
    (trial,) = load_spec(spec_file(tmp_path, {"pretrained": "none"}), cwd=tmp_path).trials
    assert trial.config["model"]["pretrained"] == "none"
    assert initialisation(trial.config["model"]) == "random (model.pretrained: none)"
    (trial,) = load_spec(spec_file(tmp_path, {}), cwd=tmp_path).trials
    assert initialisation(trial.config["model"]) == "random (no model.pretrained)"
    from harness.spec import imagenet_weights
    from harness.prepare import weights_command

    assert imagenet_weights("timm/convnext_tiny") == "data/weights/timm_convnext_tiny_imagenet.pth"
    assert weights_command(Path("data/weights/timm_convnext_tiny_imagenet.pth")) == (
        "python -m harness.prepare weights timm/convnext_tiny --from PATH/TO/model.safetensors")
    assert weights_command(tmp_path / "w" / "resnet50_imagenet.pth") == (
        f"python -m harness.prepare weights resnet50 --out {tmp_path / 'w'}")


def test_the_sweep_checks_weights_before_any_trial(tmp_path):
    """Present, loadable into the backbone, and fed the input its preparation recorded; measuring needs none."""
    import torchvision

    from harness.spec import load_spec
    from harness.preflight import check_weights

    import torch

    good, wrong = tmp_path / "r18.pth", tmp_path / "r50.pth"
    thin_resnet18(good)
    torch.save(torchvision.models.resnet50().state_dict(), wrong)
    spec = load_spec(spec_file(tmp_path, {"pretrained": str(good)}), cwd=tmp_path)
    assert check_weights(spec, spec.trials) == []
    (good.with_suffix(".json")).write_text(json.dumps({"normalize": "caffe_bgr"}))
    (problem,) = check_weights(spec, spec.trials)
    assert f"{good} expects data.normalize: caffe_bgr" in problem and "the trial sets imagenet" in problem
    spec = load_spec(spec_file(tmp_path, {"pretrained": str(wrong)}), cwd=tmp_path)
    (problem,) = check_weights(spec, spec.trials)
    assert str(wrong) in problem and "does not match" in problem
    spec = load_spec(spec_file(tmp_path, {"pretrained": "imagenet"}), cwd=tmp_path)
    (problem,) = check_weights(spec, spec.trials)
    assert "make it with: python -m harness.prepare weights resnet18" in problem
    done = subprocess.run([sys.executable, "-m", "harness.sweep", str(spec.path), "--measure-only", "--dry-run",
                           "--results-dir", str(tmp_path / "results")], capture_output=True, text=True, cwd=tmp_path,
                          env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr  # params, FLOPs and latency need no weights


def thin_resnet18(path: Path) -> None:
    """Weights for the spec's quarter-width ResNet-18, in torchvision's keys."""
    import torch
    from torchvision.models.resnet import BasicBlock

    from gsf.backbones.resnet import _WidthResNet

    torch.save(_WidthResNet(BasicBlock, [2, 2, 2, 2], 0.25).state_dict(), path)


def test_a_prepared_video_gives_the_originals_clips(tmp_path):
    """Re-encoding keeps the frames: the same seed draws the same frame indices and crops from the
    prepared video as from the original (each fixture frame carries its index), and the pixels
    differ by the re-encode's loss only: mean |diff| <= 3 levels (measured ~1), no frame off."""
    download = official.kinetics400(tmp_path / "download", corrupt=False, absent=False)
    notes = download.annotations
    out = tmp_path / "k400"
    assert main(["kinetics400", "--source", str(download.root), "--annotations", str(notes["train"]),
                 str(notes["val"]), "--keep-videos", "--out", str(out), "--workers", "1"]) == 0
    rows = [line.rsplit(None, 1) for line in (out / "train_videos.txt").read_text().splitlines()]
    originals = {Path(p).stem: p for p in map(str, download.root.rglob("*.mp4"))}
    (tmp_path / "orig.txt").write_text("".join(f"{originals[Path(p).stem]} {label}\n" for p, label in rows))
    for multiscale in (False, True):  # centre crops keep each frame's index marker; multi-scale ones may not
        common = dict(dataset="kinetics400", categories=str(out / "category.txt"), input_size=96, multiscale=multiscale)
        prepared, _ = build_datasets(DataConfig(**common, root=out, train_list="train_videos.txt",
                                                val_list="train_videos.txt"), num_frames=4, seed=5)
        original, _ = build_datasets(DataConfig(**common, root=tmp_path, train_list="orig.txt", val_list="orig.txt"),
                                     num_frames=4, seed=5)
        for i in range(len(rows)):
            for draw in range(3):
                (a, label_a), (b, label_b) = prepared[(i, draw)], original[(i, draw)]
                assert label_a == label_b and a.shape == b.shape
                assert (a.int() - b.int()).abs().float().mean() <= 3.0, (i, draw, multiscale)
                if not multiscale:
                    frames = [official.frame_index(f.permute(1, 2, 0).numpy()) for f in a]
                    assert frames == [official.frame_index(f.permute(1, 2, 0).numpy()) for f in b]
                    assert frames != [official.frame_index(f.permute(1, 2, 0).numpy())
                                      for f in original[(i, draw + 100)][0]] or len(set(frames)) == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_paper_like_sweep_from_the_official_download_and_imagenet_weights_in_ray(tmp_path):
    """What a user runs, in the folder they sweep from: prepare the download and the weights, then
    a spec whose profile reads them where the paper profiles do (data/something-v1,
    model.pretrained: imagenet, caffe_bgr) through ``python -m harness.sweep``: real Ray trials in
    their own working folders, a real MLflow store; the run says where its weights came from."""
    import yaml
    from mlflow.tracking import MlflowClient

    from gsf.backbones.bninception import BNInception, caffe_state_dict

    download = official.something_v1(tmp_path / "download", corrupt=False, absent=False)
    import torch

    tsn = {k: v.unsqueeze(0) if "_bn." in k and v.dim() == 1 else v
           for k, v in caffe_state_dict(BNInception()).items() if not k.endswith("num_batches_tracked")}
    torch.save(tsn | {"fc.weight": torch.zeros(1000, 1024), "fc.bias": torch.zeros(1000)}, tmp_path / "tsn.pth")
    assert prepare("something-v1", "--source", download.root, cwd=tmp_path).returncode == 0
    assert prepare("weights", "bninception", "--from", tmp_path / "tsn.pth", cwd=tmp_path).returncode == 0
    spec = tmp_path / "paper_like.yaml"
    spec.write_text(yaml.safe_dump({
        "description": "a paper profile at 64 px", "base": {"model": {"backbone": "bninception", "module": "gsf"}},
        "grid": {"variants": [{"name": "GSF"}]},
        "profiles": {"paper": {
            "model": {"pretrained": "imagenet", "num_classes": len(download.classes), "num_frames": 4},
            "data": {"dataset": "something-v1", "root": "data/something-v1", "train_list": "train_videofolder.txt",
                     "val_list": "val_videofolder.txt", "categories": "category.txt", "normalize": "caffe_bgr",
                     "input_size": 64, "workers": 0},
            "train": {"epochs": 1, "batch_size": 2, "device": "cpu"},
            "measure": {"input_size": 64, "latency": False}}}}))
    done = subprocess.run([sys.executable, "-m", "harness.sweep", str(spec), "--profile", "paper",
                           "--results-dir", "results"], capture_output=True, text=True, cwd=tmp_path,
                          env={**ENV, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}, timeout=840)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("paper_like").experiment_id])
              if r.data.tags.get("kind") == "trial"]
    assert run.info.status == "FINISHED" and "top1" in run.data.metrics
    assert run.data.tags["init"] == "pretrained bninception_imagenet.pth"
    assert run.data.params["model.pretrained"] == str(tmp_path / "data" / "weights" / "bninception_imagenet.pth")
