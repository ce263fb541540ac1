"""The fast JPEG frame-folder path (#20) against the loader it replaced, kept as the reference
(``FrameFolders(fast=False)``): the same frames, crops and random draws, pixels within a stated
tolerance, the same errors on bad files; videos and the synthetic clips unchanged; data.decode."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError

from harness.data import DataConfig, DataError, build_datasets
from harness.data import datasets as ds_module
from harness.data import transforms as tf
from harness.data.datasets import JPEG_DECODERS

T = 4
# uint8 levels between the fast path and the reference, per clip. Both decoders are libjpeg-turbo
# and decode these files to the same pixels (checked below); the difference is resampling in uint8
# (torch's fixed-point kernel) rather than in float and rounding: measured max 1 and mean 0.18 on
# the benchmark's SS-V1-like clips, max 1 and mean <= 0.28 per clip here. Tested with margin:
MAX_DIFF, MEAN_DIFF = 2, 0.5
FOLDERS = {  # name: (width, height, frames): down- and up-sampled crops, landscape and portrait, a short folder
    "100": (120, 80, 24), "101": (56, 32, 24), "102": (30, 44, 24), "103": (56, 32, 3)}
CATEGORIES = ("Pushing something from left to right", "Pushing something from right to left", "Holding", "Other")


def frame(k: int, width: int, height: int, seed: int) -> np.ndarray:
    """A block texture shifted by k and tinted by k: frames differ, and so does any other crop box."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (height // 4 + 8, width // 4 + 8, 3), dtype=np.uint8)
    img = np.kron(cells, np.ones((4, 4, 1), np.uint8))[k % 7:k % 7 + height, k % 5:k % 5 + width]
    return np.clip(img.astype(np.int16) // 2 + 8 * k, 0, 255).astype(np.uint8)


def frame_folders(tmp_path, folders=FOLDERS) -> dict:
    root = tmp_path / "ssv1"
    lines = []
    for label, (name, (width, height, count)) in enumerate(folders.items()):
        (root / "frames" / name).mkdir(parents=True)
        for k in range(count):
            Image.fromarray(frame(k, width, height, int(name))).save(root / "frames" / name / f"{k + 1:05d}.jpg",
                                                                     quality=90)
        lines.append(f"frames/{name} {count} {label % len(CATEGORIES)}")
    for split in ("train", "val"):
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "categories.txt").write_text("\n".join(CATEGORIES) + "\n")
    return dict(dataset="something-v1", root=str(root), train_list="train.txt", val_list="val.txt",
                categories="categories.txt")


def pair(cfg: DataConfig, decoder: str | None = None):
    """(fast, reference) datasets of ``cfg``: (train, val) each."""
    fast = build_datasets(cfg, num_frames=T, seed=5)
    reference = build_datasets(cfg, num_frames=T, seed=5)
    for ds in fast:
        ds.source.decoder = decoder or ds.source.decoder
    for ds in reference:
        ds.source.fast = False
    return fast, reference


def diff(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    d = (a.int() - b.int()).abs()
    return int(d.max()), float(d.float().mean())


CONFIGS = {
    "train multiscale": dict(input_size=32),
    "train resize+centre crop": dict(input_size=32, scale_size=36, multiscale=False),
    "train flip": dict(input_size=32, flip=True, flip_label_map={0: 1}),
    "efficiency": dict(input_size=32, scale_size=36),
    "accuracy 2x3": dict(input_size=32, scale_size=36, protocol="accuracy"),
    "upscaled crops": dict(input_size=48, scale_size=40, protocol="accuracy"),  # frames smaller than the crop
}


@pytest.mark.parametrize("decoder", sorted(JPEG_DECODERS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_fast_path_gives_the_reference_clips_within_tolerance(tmp_path, decoder, config):
    cfg = DataConfig(**frame_folders(tmp_path), **CONFIGS[config])
    (train, val), (ref_train, ref_val) = pair(cfg, decoder)
    train_like = config.startswith("train")
    fast, ref = (train, ref_train) if train_like else (val, ref_val)
    worst, outputs = (0, 0.0), []
    for i in range(len(fast)):
        for draw in range(6 if train_like else 1):
            index = (i, draw) if train_like else i
            (got, label), (want, want_label) = fast[index], ref[index]
            assert got.shape == want.shape and got.dtype == want.dtype == torch.uint8
            assert got.is_contiguous() and label == want_label
            d = diff(got, want)
            assert d[0] <= MAX_DIFF and d[1] <= MEAN_DIFF, f"{index}: max |diff| {d[0]}, mean {d[1]:.3f}"
            worst = max(worst[0], d[0]), max(worst[1], d[1])
            outputs.append((index, got, want))
    assert worst[0] >= 1, "no resampling difference at all: is the fast path running?"
    # The tolerance tells clips apart: against another draw's reference clip (other frames, another
    # crop box) or another video's, a clip is far outside it, so a wrong frame or box cannot pass.
    # (Not every pair differs: the 3-frame folder's clips repeat the same frames.)
    pairs = [diff(got, other) for (_, got, _), (_, _, other) in zip(outputs, outputs[1:]) if got.shape == other.shape]
    far = [d for d in pairs if d[0] > 10 * MAX_DIFF and d[1] > 4 * MEAN_DIFF]
    assert len(far) >= 0.75 * len(pairs), pairs


def test_the_fast_path_reads_and_draws_what_the_reference_does(tmp_path, monkeypatch):
    """The same random draws in the same order, the same files, and no fall-back to the reference
    reader on good files."""
    cfg = DataConfig(**frame_folders(tmp_path), input_size=32, flip=True, flip_label_map={0: 1})
    (train, val), (ref_train, ref_val) = pair(cfg)
    calls, files = [], []

    class Recorder:  # forwards to numpy's generator and writes down every call and its result
        def __init__(self, seed):
            self.rng = real_rng(seed)

        def __getattr__(self, name):
            def call(*args, **kwargs):
                out = getattr(self.rng, name)(*args, **kwargs)
                calls.append((name, args, kwargs, np.asarray(out).tolist()))
                return out
            return call

    real_rng, real_fast, real_reference = np.random.default_rng, ds_module.read_jpegs, ds_module.read_jpegs_reference
    monkeypatch.setattr(np.random, "default_rng", Recorder)
    monkeypatch.setattr(ds_module, "read_jpegs", lambda f, decode: files.append(("fast", f)) or real_fast(f, decode))
    monkeypatch.setattr(ds_module, "read_jpegs_reference",
                        lambda folder, count, f: files.append(("reference", f)) or real_reference(folder, count, f))
    seen = {}
    for name, (tr, va) in (("fast", (train, val)), ("reference", (ref_train, ref_val))):
        calls.clear(), files.clear()
        for i in range(len(tr)):
            for draw in range(5):
                tr[(i, draw)]
            va[i]
        seen[name] = (list(calls), [f for _, f in files], {kind for kind, _ in files})
    assert seen["fast"][2] == {"fast"}, "the fast path fell back to the reference reader on good files"
    assert seen["reference"][2] == {"reference"}
    assert seen["fast"][0] == seen["reference"][0]
    # and the draws the loader made before #20, per clip: segment positions, the crop's scale pair
    # (10 of 4 x 4 sides) and offset (13), the flip
    per_clip = [("random", (T,)), ("integers", (10,)), ("integers", (13,)), ("random", ())]
    assert [(name, args) for name, args, _, _ in seen["fast"][0]] == per_clip * (len(train) * 5)
    assert seen["fast"][1] == seen["reference"][1]
    assert isinstance(train.source.read(0, [tf.test_positions(T)])[0], torch.Tensor)
    assert isinstance(ref_train.source.read(0, [tf.test_positions(T)])[0], np.ndarray)


def test_both_decoders_give_pils_pixels(tmp_path):
    root = frame_folders(tmp_path)["root"]
    files = sorted((tmp_path / "ssv1" / "frames" / "100").glob("*.jpg"))[:5]
    want = ds_module.read_jpegs_reference(tmp_path, 24, files)
    for name, decode in JPEG_DECODERS.items():
        got = ds_module.read_jpegs(files, decode)
        assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last), name
        assert np.array_equal(got.numpy(), want), f"{name} decodes {root}'s JPEGs unlike PIL"


def test_uint8_and_float_resampling_agree_within_a_level():
    """The tolerance's source: torch's uint8 kernel against float + rounding, down and up."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (4, 90, 150, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    for size in ((32, 32), (224, 224), (64, 107)):
        got = tf._resize(x, *size)
        want = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        assert got.dtype == torch.uint8 and diff(got, tf.to_uint8(want))[0] <= 1


# --- bad files: exactly as strict as the reference --------------------------------------------

def damaged(data: bytes, how: str) -> bytes:
    n = len(data)
    if how.startswith("truncated"):
        return data[: n * int(how.removeprefix("truncated")) // 100]
    if how == "no end marker":
        return data[:-2]
    if how == "header only":
        return data[:200]
    if how == "empty":
        return b""
    if how == "not a jpeg":
        return b"this is not a jpeg" * 10
    middle = bytearray(data)
    if how == "zeroed middle":
        middle[n // 2:n // 2 + 100] = bytes(100)
    elif how == "flipped bits":
        for j in range(n // 3, 2 * n // 3, 37):
            middle[j] ^= 0x55
    return bytes(middle)


DAMAGE = ["truncated30", "truncated60", "truncated90", "truncated99", "no end marker", "header only", "empty",
          "not a jpeg", "zeroed middle", "flipped bits"]


def read_both(cfg: DataConfig, i: int):
    """Each path's result for val[i]: the clip, or the DataError's message."""
    out = []
    for ds in (d[1] for d in pair(cfg)):
        try:
            out.append(ds[i][0])
        except DataError as exc:
            out.append(str(exc))
    return out


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_jpeg_is_refused_exactly_when_the_reference_refuses_it(tmp_path, how):
    cfg = DataConfig(**frame_folders(tmp_path), input_size=32)
    bad = tmp_path / "ssv1" / "frames" / "101" / "00016.jpg"  # a segment centre: val[1] reads it
    bad.write_bytes(damaged(bad.read_bytes(), how))
    fast, reference = read_both(cfg, 1)
    if isinstance(reference, str):
        assert fast == reference and str(bad) in fast and "cannot read frame" in fast, (fast, reference)
    else:  # damage libjpeg reads through (it warns): both paths read it, alike
        assert isinstance(fast, torch.Tensor), fast
        assert diff(fast, reference)[0] <= MAX_DIFF
    if how in ("truncated30", "truncated90", "no end marker", "empty", "not a jpeg"):
        assert isinstance(reference, str), "the reference read a file it always refused"


def test_missing_frame_and_frames_of_two_sizes_are_data_errors_naming_the_file(tmp_path):
    cfg = DataConfig(**frame_folders(tmp_path), input_size=32)
    gone = tmp_path / "ssv1" / "frames" / "101" / "00016.jpg"
    gone.unlink()
    fast, reference = read_both(cfg, 1)
    assert fast == reference and f"{gone}: frame not found" in fast, fast
    other = tmp_path / "ssv1" / "frames" / "100" / "00016.jpg"
    Image.fromarray(frame(0, 60, 40, 0)).save(other, quality=90)
    fast, reference = read_both(cfg, 0)
    assert fast == reference and f"{other}: frames differ in size: 60x40 here, 120x80 in 00004.jpg" in fast, fast


@pytest.mark.parametrize("form", ["PNG named .jpg", "greyscale JPEG", "CMYK JPEG"])
def test_files_pil_reads_are_read_alike(tmp_path, form):
    cfg = DataConfig(**frame_folders(tmp_path), input_size=32)
    file = tmp_path / "ssv1" / "frames" / "101" / "00016.jpg"
    img = Image.open(file).convert("RGB")
    buffer = io.BytesIO()
    if form == "PNG named .jpg":
        img.save(buffer, format="PNG")
    else:
        img.convert("L" if form == "greyscale JPEG" else "CMYK").save(buffer, format="JPEG", quality=90)
    file.write_bytes(buffer.getvalue())
    fast, reference = read_both(cfg, 1)
    assert isinstance(fast, torch.Tensor) and isinstance(reference, torch.Tensor)
    assert diff(fast, reference)[0] <= MAX_DIFF


# --- the synthetic clips keep their pixels exactly; videos are resampled in uint8 too ------------

def float_views(frames: np.ndarray, scale: int, crop: int, crops: int) -> torch.Tensor:
    """The test views as the loader made them before #20, written out: float resize, round."""
    x = torch.as_tensor(np.ascontiguousarray(frames)).float()
    h, w = x.shape[-2:]
    size = (scale, max(scale, round(w * scale / h))) if h <= w else (max(scale, round(h * scale / w)), scale)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    cy, cx = (h - crop) // 2, (w - crop) // 2
    if crops == 1:
        starts = [(cy, cx)]
    else:
        starts = [(cy, 0), (cy, cx), (cy, w - crop)] if w >= h else [(0, cx), (cy, cx), (h - crop, cx)]
    return torch.stack([x[..., y:y + crop, x0:x0 + crop] for y, x0 in starts]).round().clamp(0, 255).to(torch.uint8)


def test_synthetic_clips_keep_their_pixels_and_videos_stay_within_the_tolerance(tmp_path):
    from test_data_real import videos

    cases = [DataConfig(**videos(tmp_path), input_size=32, scale_size=40, protocol="accuracy"),
             DataConfig(frame_size=32, input_size=24, scale_size=28, protocol="accuracy", val_size=4)]
    for cfg in cases:
        _, val = build_datasets(cfg, num_frames=T)
        clips, crops = cfg.views
        for i in range(2):
            positions = [tf.test_positions(T, c, clips) for c in range(clips)]
            frames = val.source.read(i, positions)
            want = torch.cat([float_views(f, cfg.resize_to, cfg.crop_size, crops) for f in frames])
            if cfg.synthetic:
                assert torch.equal(val[i][0], want), f"synthetic clip {i} changed"
            else:
                worst, mean = diff(val[i][0], want)
                assert worst <= MAX_DIFF and mean <= MEAN_DIFF, f"video clip {i}: max {worst}, mean {mean:.3f}"


def test_synthetic_training_clips_resample_in_float_and_videos_in_uint8(tmp_path, monkeypatch):
    from test_data_real import videos

    real = tf._resize
    for cfg, dtype in ((DataConfig(**videos(tmp_path), input_size=32), torch.uint8),
                       (DataConfig(frame_size=32, input_size=24, scale_size=28, train_size=4), torch.float32)):
        seen = []
        monkeypatch.setattr(tf, "_resize", lambda x, h, w: seen.append(x.dtype) or real(x, h, w))
        train, _ = build_datasets(cfg, num_frames=T)
        for draw in range(3):
            train[(0, draw)]
        assert seen and set(seen) == {dtype}, cfg.dataset


# --- data.decode ------------------------------------------------------------------------------

def test_decode_key(tmp_path):
    data = frame_folders(tmp_path, {"101": (56, 32, 6)})
    assert DataConfig(**data).decode == "cpu" and DataConfig.model_fields["decode"].description
    assert DataConfig(**data, decode="cuda").workers == 0  # nvjpeg decodes in the training process
    assert DataConfig(decode="cuda").workers is None  # the synthetic clips ignore the key
    with pytest.raises(ValidationError, match="data.decode: cuda decodes in the training process.*got 3"):
        DataConfig(**data, decode="cuda", workers=3)
    with pytest.raises(ValidationError, match="data.decode: cuda decodes JPEG frame folders"):
        DataConfig(**data, decode="cuda", media="videos")
    with pytest.raises(ValidationError, match="decode"):
        DataConfig(**data, decode="gpu")


def test_cuda_decode_without_a_gpu_fails_when_the_datasets_are_built(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = DataConfig(**frame_folders(tmp_path, {"101": (56, 32, 6)}), decode="cuda")
    with pytest.raises(DataError, match=r"^data.decode: cuda needs a CUDA device; "):
        build_datasets(cfg, num_frames=T)


def test_cuda_decode_plumbing_with_a_stand_in_decoder(tmp_path, monkeypatch):
    """Without a GPU: nvjpeg's place taken by the CPU decoder, so what surrounds it is checked:
    the files go to it, its frames give the CPU path's clips, a bad file is still named."""
    decoded = []

    def stand_in(datas):
        decoded.append(len(datas))
        return JPEG_DECODERS["torchvision"](datas)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ds_module, "decode_jpegs_cuda", stand_in)
    data = frame_folders(tmp_path, {"101": (56, 32, 24)})
    cpu = build_datasets(DataConfig(**data, input_size=32), num_frames=T)
    cuda = build_datasets(DataConfig(**data, input_size=32, decode="cuda"), num_frames=T)
    assert decoded == [1]  # the up-front check
    for a, b in zip(cpu, cuda):
        index = (0, 3) if a.train else 0
        assert torch.equal(a[index][0], b[index][0])
    assert decoded[1:] == [T, T]
    bad = tmp_path / "ssv1" / "frames" / "101" / "00016.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DataError, match=f"{bad}: cannot read frame"):
        cuda[1][0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_clips_match_the_cpu_path(tmp_path):
    data = frame_folders(tmp_path)
    cpu = build_datasets(DataConfig(**data, input_size=32, protocol="accuracy"), num_frames=T)
    cuda = build_datasets(DataConfig(**data, input_size=32, protocol="accuracy", decode="cuda"), num_frames=T)
    for a, b in zip(cpu, cuda):
        for i in range(len(a)):
            index = (i, 1) if a.train else i
            got, want = b[index][0], a[index][0]
            assert got.device.type == "cpu" and got.dtype == torch.uint8 and got.shape == want.shape
            # nvjpeg's IDCT and chroma upsampling are not libjpeg-turbo's: not the CPU tolerance
            # (not measured yet), but far inside what another frame or crop box gives (checked above)
            assert diff(got, want)[1] <= 2.0
