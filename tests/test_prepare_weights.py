"""``python -m harness.prepare weights``: every source layout converted key for key, the download
path (file:// mirrors, pinned sha256 prefixes), the sidecar, --dry-run, --check and the errors.

Real files in tmp_path, built from our own models with random weights; no network.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from gsf.backbones.bninception import build_bninception, caffe_state_dict
from gsf.backbones.inception_v3 import build_inception_v3
from gsf.modules import GSF
from gsf.release import _units
from harness.prepare import weights as prep

ROOT = Path(__file__).resolve().parents[1]
TSN = "bn_inception-9f5701afb96c8044.pth"


def randomized(state: dict, seed: int = 0) -> dict:
    """``state`` with random values (fresh models hold zeros/ones in every BatchNorm)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g)
    return out


def no_counters(state: dict) -> dict:
    """Without BatchNorm's num_batches_tracked, which the Caffe/TF-era files lack."""
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare(capsys, *argv) -> tuple[int, str, str]:
    """Run ``weights ARGV`` in-process through add_parser + run, as harness.prepare's __main__ does."""
    parser = argparse.ArgumentParser(prog="python -m harness.prepare")
    add = parser.add_subparsers(dest="command", required=True)
    prep.add_parser(add)
    args = parser.parse_args(["weights", *map(str, argv)])
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def gsf(frames: int = 8):
    return lambda channels: GSF(channels, num_frames=frames)


# --- source files in each known layout -------------------------------------------------------------

@pytest.fixture(scope="module")
def bni(tmp_path_factory):
    """BN-Inception weights (our keys) and the files TSN, Cadene and our own layout would hold."""
    d = tmp_path_factory.mktemp("bninception")
    model = build_bninception(None)
    model.load_state_dict(randomized(model.state_dict()))
    caffe = no_counters(caffe_state_dict(model))  # {Caffe name: tensor}
    tsn = {k: v.unsqueeze(0) if "_bn." in k else v for k, v in caffe.items()}  # BN as (1, C)
    tsn["fc.weight"], tsn["fc.bias"] = torch.randn(1000, 1024), torch.randn(1000)
    cadene = dict(caffe, **{"last_linear.weight": torch.randn(1000, 1024), "last_linear.bias": torch.randn(1000)})
    files = {"tsn": d / "tsn_bn_inception.pth", "cadene": d / "cadene_bn_inception.pth", "native": d / "native.pth"}
    # The TSN file is from 2017: PyTorch's legacy (pre-zip) serialization.
    torch.save(tsn, files["tsn"], _use_new_zipfile_serialization=False)
    torch.save(cadene, files["cadene"])
    torch.save(model.state_dict(), files["native"])
    return {"files": files, "tsn": tsn, "caffe": caffe, "names": _caffe_to_native(model)}


def _caffe_to_native(model) -> dict[str, str]:
    """Caffe name -> our key, found by tensor identity (independent of the loader's own key table)."""
    by_id = {id(t): k for k, t in model.state_dict(keep_vars=True).items()}
    return {caffe: by_id[id(t)] for caffe, t in caffe_state_dict(model).items() if id(t) in by_id}


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    d = tmp_path_factory.mktemp("resnet")
    state = randomized(torchvision.models.resnet50(weights=None).state_dict(), seed=1)
    torch.save(state, d / "torchvision_resnet50.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, d / "wrapped.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), d / "resnet18.pth")
    return {"dir": d, "state": state}


def cuhk_names(net) -> dict[str, str]:
    """inceptionv3-cuhk key (the release yaml's ids, from gsf.release._units) -> our release-layout key."""
    names = {}
    for path, (conv, bn, _) in _units(net, "inception_v3").items():
        names.update({f"{conv}.{p}": f"{path}.conv.{p}" for p in ("weight", "bias")})
        names.update({f"{bn}.{p}": f"{path}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var")})
    return names


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    d = tmp_path_factory.mktemp("inception_v3")
    net = build_inception_v3(None, layout="release")
    own = randomized(net.state_dict(), seed=2)
    names = cuhk_names(net)
    # TF-converted vectors may carry a leading dim of 1; the classifier is the yaml's top_cls_fc.
    cuhk = {k: own[ours].unsqueeze(0) if "_batchnorm." in k else own[ours] for k, ours in names.items()}
    cuhk["top_cls_fc.weight"], cuhk["top_cls_fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    torch.save(cuhk, d / "cuhk.pth")
    tv = randomized(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), 3)
    torch.save(tv, d / "inception_v3_tv.pth")
    return {"dir": d, "cuhk": cuhk, "names": names, "tv": tv}


# --- the sources ---------------------------------------------------------------------------------

def test_pinned_sources_are_the_releases_files_and_their_name_hashes():
    assert prep.SOURCES["bninception"].url == "https://yjxiong.blob.core.windows.net/models/" + TSN
    assert prep.SOURCES["resnet50"].url == "https://download.pytorch.org/models/resnet50-19c8e357.pth"
    assert prep.SOURCES["inception_v3"].url == \
        "https://yjxiong.blob.core.windows.net/models/inceptionv3-cuhk-0e09b300b493bc74c.pth"
    for name, source in prep.SOURCES.items():
        # torch.hub reads the prefix from the file name exactly so: the pin must agree with it.
        assert torch.hub.HASH_REGEX.search(source.filename).group(1) == source.sha256_prefix, name
    assert prep.NAMES == tuple(prep.SOURCES)


def test_weights_path_and_absent_sidecar(tmp_path):
    assert prep.weights_path("bninception") == Path("data/weights/bninception_imagenet.pth")
    assert prep.weights_path("resnet50", tmp_path) == tmp_path / "resnet50_imagenet.pth"
    assert prep.read_sidecar(tmp_path / "resnet50_imagenet.pth") is None


# --- BN-Inception ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,fmt", [("tsn", "tsn_caffe"), ("cadene", "cadene"), ("native", "native")])
def test_bninception_every_layout_converts_key_for_key(bni, tmp_path, capsys, layout, fmt):
    source = bni["files"][layout]
    rc, out, err = prepare(capsys, "bninception", "--from", source, "--out", tmp_path)
    assert rc == 0, err
    written = load(tmp_path / "bninception_imagenet.pth")
    assert set(written) == set(build_bninception(None).state_dict())
    for caffe, ours in bni["names"].items():
        if not caffe.endswith("num_batches_tracked"):
            assert torch.equal(written[ours], bni["caffe"][caffe]), caffe
    # Spot checks by hand, and TSN's (1, C) BatchNorm rows arrive as (C,).
    assert torch.equal(written["stem.conv1_7x7_s2.conv.weight"], bni["tsn"]["conv1_7x7_s2.weight"])
    assert torch.equal(written["blocks.3a.branches.1x1.1x1.bn.running_mean"],
                       bni["tsn"]["inception_3a_1x1_bn.running_mean"][0])
    assert torch.equal(written["blocks.5b.branches.pool.pool_proj.conv.bias"],
                       bni["tsn"]["inception_5b_pool_proj.bias"])
    side = prep.read_sidecar(tmp_path / "bninception_imagenet.pth")
    assert side == {"backbone": "bninception", "layout": "paper", "layouts": ["paper", "release"],
                    "normalize": "caffe_bgr", "source": str(source.resolve()), "source_sha256": sha256(source),
                    "sha256": sha256(tmp_path / "bninception_imagenet.pth"), "format": fmt}
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"wrote {tmp_path / 'bninception_imagenet.pth'} (")
    assert "10.3 M params, every key matched); set data.normalize: caffe_bgr (BGR 0-255 minus (104, 117, 128))" in line
    assert ("TSN Caffe-converted BN-Inception" in line) == (layout == "tsn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bninception_imagenet.json", "bninception_imagenet.pth"]


def test_bninception_loads_the_tsn_file_directly(bni):
    """model.pretrained may name the TSN download itself, without prepare."""
    for layout in ("paper", "release"):
        model = build_bninception(gsf(), pretrained=bni["files"]["tsn"], layout=layout)
        assert torch.equal(model.blocks[9].branches["3x3"].get_submodule("3x3").bn.running_var,
                           bni["tsn"]["inception_5b_3x3_bn.running_var"][0])
        assert sum(isinstance(m, GSF) for m in model.modules()) == 10


# --- ResNet-50 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("file", ["torchvision_resnet50.pth", "wrapped.pth"])
def test_resnet50_torchvision_state_dict(r50, tmp_path, capsys, file):
    rc, out, err = prepare(capsys, "resnet50", "--from", r50["dir"] / file, "--out", tmp_path)
    assert rc == 0, err
    written = load(tmp_path / "resnet50_imagenet.pth")
    expected = {k: v for k, v in r50["state"].items() if not k.startswith("fc.")}
    assert set(written) == set(expected)
    assert all(torch.equal(written[k], v) for k, v in expected.items())
    side = prep.read_sidecar(tmp_path / "resnet50_imagenet.pth")
    assert (side["format"], side["normalize"], side["layout"]) == ("torchvision", "imagenet", "paper")
    assert "set data.normalize: imagenet (RGB / 255, ImageNet mean and std)" in out
    assert "model.layout" not in out  # both layouts take it


def test_wrong_network_is_exit_2_naming_the_file_and_keys(r50, tmp_path, capsys):
    bad = r50["dir"] / "resnet18.pth"
    rc, out, err = prepare(capsys, "resnet50", "--from", bad, "--out", tmp_path / "w")
    assert rc == 2
    assert str(bad) in err and "missing" in err and "layer1.0.bn3" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()
    # A ResNet given as BN-Inception is not even in a known layout.
    rc, _, err = prepare(capsys, "bninception", "--from", r50["dir"] / "torchvision_resnet50.pth", "--out", tmp_path)
    assert rc == 2 and "not a bninception state dict in a known layout" in err and "conv1.weight" in err


# --- Inception-v3 ----------------------------------------------------------------------------------

def test_inception_v3_cuhk_file_is_for_the_release_layout(v3, tmp_path, capsys):
    rc, out, err = prepare(capsys, "inception_v3", "--from", v3["dir"] / "cuhk.pth", "--out", tmp_path)
    assert rc == 0, err
    path = tmp_path / "inception_v3_imagenet.pth"
    written = load(path)
    assert len(v3["names"]) == 94 * 6  # 94 units: conv weight and bias, four BatchNorm tensors
    for theirs, ours in v3["names"].items():
        expected = v3["cuhk"][theirs][0] if "_batchnorm." in theirs else v3["cuhk"][theirs]
        assert torch.equal(written[ours], expected), theirs
    # By hand, from the release's inceptionv3.yaml: mixed_4_tower_conv_1 is a 7x1 conv (torchvision's
    # Mixed_6b.branch7x7_2 is 1x7), mixed_10_tower_2_conv Mixed_7c's pool projection.
    assert written["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 7, 1)
    assert torch.equal(written["Mixed_7c.branch_pool.conv.bias"], v3["cuhk"]["mixed_10_tower_2_conv_Conv2D.bias"])
    assert not any(k.startswith(("fc.", "top_cls_fc")) for k in written)
    side = prep.read_sidecar(path)
    assert (side["format"], side["layout"], side["layouts"], side["normalize"]) == \
        ("cuhk", "release", ["release"], "caffe_bgr")
    assert "set data.normalize: caffe_bgr (BGR 0-255 minus (104, 117, 128)) and model.layout: release" in out
    # What a run then does with it: the release layout takes it, GSF modules and all; the paper one says why not.
    model = build_inception_v3(gsf(), layout="release", pretrained=path)
    assert torch.equal(model.Mixed_5b.branch1x1.conv.weight, written["Mixed_5b.branch1x1.conv.weight"])
    assert model.Mixed_5b.branch1x1.temporal is not None
    with pytest.raises(ValueError, match="layout: release"):
        build_inception_v3(None, pretrained=path)
    assert prep.verify(path, "inception_v3", "release").endswith("every key matched")
    with pytest.raises(ValueError, match=str(path)):
        prep.verify(path, "inception_v3", "paper")


def test_inception_v3_release_layout_refuses_torchvision_weights(v3):
    with pytest.raises(ValueError, match="torchvision's inception_v3 weights"):
        build_inception_v3(None, layout="release", pretrained=v3["dir"] / "inception_v3_tv.pth")


def test_inception_v3_torchvision_file_is_for_the_paper_layout(v3, tmp_path, capsys):
    rc, out, err = prepare(capsys, "inception_v3", "--from", v3["dir"] / "inception_v3_tv.pth", "--out", tmp_path)
    assert rc == 0, err
    written = load(tmp_path / "inception_v3_imagenet.pth")
    expected = {k: v for k, v in v3["tv"].items() if not k.startswith(("fc.", "AuxLogits."))}
    assert set(written) == set(expected) and all(torch.equal(written[k], v) for k, v in expected.items())
    side = prep.read_sidecar(tmp_path / "inception_v3_imagenet.pth")
    assert (side["format"], side["layout"], side["normalize"]) == ("torchvision", "paper", "imagenet")
    assert "and model.layout: paper" in out
    assert build_inception_v3(None, pretrained=tmp_path / "inception_v3_imagenet.pth").transform_input


# --- the download path -------------------------------------------------------------------------------

@pytest.fixture
def mirror(bni, tmp_path):
    """A folder holding a (fake) file under the TSN download's name."""
    d = tmp_path / "mirror"
    d.mkdir()
    shutil.copy(bni["files"]["tsn"], d / TSN)
    return d


def pin(monkeypatch, prefix: str) -> None:
    source = prep.SOURCES["bninception"]
    monkeypatch.setitem(prep.SOURCES, "bninception", dataclasses.replace(source, sha256_prefix=prefix))


@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "folder"])
def test_download_with_matching_prefix(mirror, tmp_path, capsys, monkeypatch, as_url):
    real = sha256(mirror / TSN)
    pin(monkeypatch, real[:16])
    where = mirror.as_uri() if as_url else str(mirror)
    rc, out, err = prepare(capsys, "bninception", "--mirror", where, "--out", tmp_path / "w")
    assert rc == 0, err
    assert f"sha256 {real}" in out and "TSN Caffe-converted BN-Inception" in out
    side = prep.read_sidecar(tmp_path / "w" / "bninception_imagenet.pth")
    assert side["source"] == (mirror / TSN).as_uri()
    assert side["source_sha256"] == real and side["format"] == "tsn_caffe"
    assert side["sha256"] == sha256(tmp_path / "w" / "bninception_imagenet.pth")


def test_download_with_mismatching_prefix_writes_nothing(mirror, tmp_path, capsys):
    # The real pin (9f5701afb96c8044) against a file that is not the real download.
    real = sha256(mirror / TSN)
    rc, out, err = prepare(capsys, "bninception", "--mirror", mirror.as_uri(), "--out", tmp_path / "w")
    assert rc == 2
    assert TSN in err and "9f5701afb96c8044" in err and real in err and "Traceback" not in err
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())
    assert sorted(p.name for p in mirror.iterdir()) == [TSN]  # and no .partial left anywhere we look


def test_unreachable_url_and_missing_mirror_file_are_exit_2(tmp_path, capsys):
    gone = (tmp_path / "nowhere").as_uri()
    rc, _, err = prepare(capsys, "resnet50", "--mirror", gone, "--out", tmp_path / "w")
    assert rc == 2 and f"{gone}/resnet50-19c8e357.pth" in err and "cannot download" in err
    rc, _, err = prepare(capsys, "resnet50", "--mirror", tmp_path, "--out", tmp_path / "w")
    assert rc == 2 and str(tmp_path / "resnet50-19c8e357.pth") in err
    assert not (tmp_path / "w").exists()


def test_official_name_with_other_content_is_a_hash_mismatch(bni, tmp_path, capsys):
    renamed = tmp_path / TSN
    shutil.copy(bni["files"]["tsn"], renamed)
    rc, _, err = prepare(capsys, "bninception", "--from", renamed, "--out", tmp_path / "w")
    assert rc == 2 and str(renamed) in err and "expected prefix 9f5701afb96c8044" in err
    assert not (tmp_path / "w").exists()


# --- --dry-run, --check, verify ----------------------------------------------------------------------

def test_dry_run_writes_nothing(bni, tmp_path, capsys):
    out_dir = tmp_path / "w"
    rc, out, _ = prepare(capsys, "bninception", "--dry-run", "--out", out_dir)
    assert rc == 0 and prep.SOURCES["bninception"].url in out and "9f5701afb96c8044" in out
    assert str(out_dir / "bninception_imagenet.pth") in out
    rc, out, _ = prepare(capsys, "bninception", "--dry-run", "--from", bni["files"]["tsn"], "--out", out_dir)
    assert rc == 0 and "would convert" in out and "TSN Caffe-converted" in out
    assert not out_dir.exists()


def test_check_passes_on_a_good_output_and_fails_on_a_changed_one(bni, tmp_path, capsys):
    path = tmp_path / "bninception_imagenet.pth"
    assert prepare(capsys, "bninception", "--from", bni["files"]["cadene"], "--out", tmp_path)[0] == 0
    rc, out, err = prepare(capsys, "bninception", "--check", "--out", tmp_path)
    assert rc == 0 and out.startswith("ok ") and "every key matched" in out, err

    good = path.read_bytes()
    corrupted = bytearray(good)
    corrupted[len(good) // 2] ^= 0xFF  # one byte inside the tensor data
    path.write_bytes(bytes(corrupted))
    rc, _, err = prepare(capsys, "bninception", "--check", "--out", tmp_path)
    assert rc == 2 and str(path) in err and "sha256" in err

    # A file whose sidecar agrees but that does not load (a key gone) fails the load check.
    path.write_bytes(good)
    state = load(path)
    del state["blocks.4a.branches.1x1.1x1.conv.weight"]
    torch.save(state, path)
    side = prep.read_sidecar(path)
    side["sha256"] = sha256(path)
    prep.sidecar_path(path).write_text(json.dumps(side))
    rc, _, err = prepare(capsys, "bninception", "--check", "--out", tmp_path)
    assert rc == 2 and str(path) in err and "inception_4a_1x1.weight" in err

    prep.sidecar_path(path).unlink()
    rc, _, err = prepare(capsys, "bninception", "--check", "--out", tmp_path)
    assert rc == 2 and "bninception_imagenet.json" in err
    rc, _, err = prepare(capsys, "resnet50", "--check", "--out", tmp_path)
    assert rc == 2 and "python -m harness.prepare weights resnet50" in err


def test_verify_names_the_file(bni, r50):
    line = prep.verify(bni["files"]["native"], "bninception")
    assert line.endswith("10.3 M params, every key matched") and str(bni["files"]["native"]) in line
    wrong = r50["dir"] / "torchvision_resnet50.pth"
    with pytest.raises(ValueError, match=str(wrong)):
        prep.verify(wrong, "bninception")


# --- the command line --------------------------------------------------------------------------------

def test_bad_command_lines_are_exit_2(bni, tmp_path, capsys):
    rc, _, err = prepare(capsys, "vgg16")
    assert rc == 2 and "unknown backbone 'vgg16'" in err
    rc, _, err = prepare(capsys, "timm/resnet18d")  # timm's weights only --from the user's file
    assert rc == 2 and "--from" in err
    with pytest.raises(SystemExit) as e:
        prepare(capsys, "bninception", "--from", bni["files"]["tsn"], "--mirror", tmp_path)
    assert e.value.code == 2
    missing = tmp_path / "nope.pth"
    rc, _, err = prepare(capsys, "bninception", "--from", missing)
    assert rc == 2 and str(missing) in err
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    rc, _, err = prepare(capsys, "bninception", "--from", text, "--out", tmp_path / "w")
    assert rc == 2 and str(text) in err and "Traceback" not in err
    rc, _, err = prepare(capsys, "bninception", "--check", "--dry-run", "--out", tmp_path)
    assert rc == 2


def test_python_dash_m_harness_prepare_weights(r50, tmp_path):
    """The real command."""
    cmd = [sys.executable, "-m", "harness.prepare", "weights", "resnet50", "--from",
           str(r50["dir"] / "torchvision_resnet50.pth"), "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'resnet50_imagenet.pth'}" in done.stdout
    assert (tmp_path / "resnet50_imagenet.json").is_file()
    notes = tmp_path / "notes.pth"
    notes.write_text("not a checkpoint")
    bad = subprocess.run(cmd[:6] + [str(notes), "--out", str(tmp_path / "bad")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and str(notes) in bad.stderr and "Traceback" not in bad.stderr


def test_timm_weights_from_timms_own_file(tmp_path, capsys):
    """timm/<model>: timm's state dict (classifier included) -> timm_<model>_imagenet.pth, the file
    ``model.pretrained: imagenet`` names for that backbone; the sweep's verify loads it."""
    import timm

    source = randomized(timm.create_model("resnet18d", pretrained=False).state_dict())
    torch.save(source, tmp_path / "model.pth")
    rc, out, err = prepare(capsys, "timm/resnet18d", "--from", tmp_path / "model.pth", "--out", tmp_path / "w")
    assert rc == 0, err
    path = tmp_path / "w" / "timm_resnet18d_imagenet.pth"
    written = torch.load(path, weights_only=True)
    assert set(written) == {k for k in source if not k.startswith("fc.")}
    assert all(torch.equal(written[k], source[k]) for k in written)
    assert prep.read_sidecar(path)["normalize"] == "imagenet" and "every key matched" in out
    assert "every key matched" in prep.verify(path, "timm/resnet18d")
