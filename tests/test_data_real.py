"""harness.data on real files: Something-Something frame folders (JPEGs written here with PIL)
and a video file list (a video written here with PyAV), both protocols, sampling and errors."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from harness.data import DataConfig, DataError, build_datasets, check_data
from harness.data import transforms as tf

T = 4
GREY_STEP = 12  # frame k (0-based) is a uniform grey of GREY_STEP * (k + 1): decodable index


def grey(k: int) -> int:
    return GREY_STEP * (k + 1)


def frame_greys(x: torch.Tensor) -> np.ndarray:
    """Mean 0-255 grey of each frame of a loader's uint8 (..., T, 3, H, W) tensor."""
    return x.float().mean(dim=(-3, -2, -1)).numpy()


def write_frames(folder, count, template, size=(40, 30), pattern=None):
    folder.mkdir(parents=True)
    for k in range(count):
        img = np.full((size[1], size[0], 3), grey(k), np.uint8)
        if pattern == "left-dark":  # asymmetric, so a flip is visible
            img[:, : size[0] // 2] = 0
        Image.fromarray(img).save(folder / template.format(k + 1), quality=95)


def something(tmp_path, version="v1", counts=(12, 3, 20), labels=(0, 1, 2), pattern=None,
              categories=("Pushing something from left to right", "Pushing something from right to left",
                          "Holding something")):
    template = "{:05d}.jpg" if version == "v1" else "{:06d}.jpg"
    root = tmp_path / f"ss{version}"
    lines = []
    for i, (count, label) in enumerate(zip(counts, labels)):
        write_frames(root / "frames" / str(100 + i), count, template, pattern=pattern)
        lines.append(f"frames/{100 + i} {count} {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    (root / "categories.txt").write_text("\n".join(categories) + "\n")
    return dict(dataset=f"something-{version}", root=str(root), train_list="train.txt",
                val_list="val.txt", categories="categories.txt")


def write_video(path, count=20, size=(64, 48)):
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for k in range(count):
            img = np.full((size[1], size[0], 3), grey(k), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def videos(tmp_path, dataset="kinetics400"):
    root = tmp_path / dataset
    (root / "videos").mkdir(parents=True)
    write_video(root / "videos" / "a b.mp4")  # a space in the name: lists split from the right
    # shorter than the clip, and Matroska stores no frame count: decoded whole and counted
    write_video(root / "videos" / "c.mkv", count=3)
    (root / "train.txt").write_text("videos/a b.mp4 1\nvideos/c.mkv 0\n")
    (root / "val.txt").write_text("videos/a b.mp4 1\nvideos/c.mkv 0\n")
    (root / "categories.txt").write_text("diving\njuggling\n")
    return dict(dataset=dataset, root=str(root), train_list="train.txt", val_list="val.txt",
                categories="categories.txt")


# --- the sampler itself ---------------------------------------------------------------------

def test_test_positions_are_segment_centres_and_thirds():
    assert np.allclose(tf.test_positions(4), [0.125, 0.375, 0.625, 0.875])
    assert list(tf.frame_indices(tf.test_positions(4), 40)) == [5, 15, 25, 35]
    first, second = tf.test_positions(4, 0, 2), tf.test_positions(4, 1, 2)
    assert list(tf.frame_indices(first, 12)) == [1, 4, 7, 10]
    assert list(tf.frame_indices(second, 12)) == [2, 5, 8, 11]


def test_train_positions_fall_in_their_segments():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = tf.frame_indices(tf.train_positions(4, rng), 40)
        assert all(10 * s <= k < 10 * (s + 1) for s, k in enumerate(idx))
        seen.add(tuple(idx))
    assert len(seen) > 100  # random within segments, not fixed


def test_short_videos_repeat_frames():
    assert list(tf.frame_indices(tf.test_positions(8), 3)) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert tf.frame_indices(tf.train_positions(8, np.random.default_rng(1)), 1).tolist() == [0] * 8


# --- Something-Something frame folders --------------------------------------------------------

@pytest.mark.parametrize("version", ["v1", "v2"])
def test_something_shapes_and_centre_sampling(tmp_path, version):
    data = something(tmp_path, version)
    train, val = build_datasets(DataConfig(**data, input_size=32), num_frames=T, seed=0)
    assert train.num_classes == val.num_classes == 3 and len(train) == 3
    clip, label = train[0]
    assert clip.shape == (T, 3, 32, 32) and clip.dtype == torch.uint8 and label == 0
    views, label = val[0]
    assert views.shape == (1, T, 3, 32, 32) and label == 0
    # the efficiency view of a 12-frame video holds frames 1, 4, 7, 10 (segment centres)
    assert np.allclose(frame_greys(views[0]), [grey(k) for k in (1, 4, 7, 10)], atol=3)
    views, _ = val[1]  # 3 frames for a 4-frame clip: repeats
    assert np.allclose(frame_greys(views[0]), [grey(k) for k in (0, 1, 1, 2)], atol=3)


def test_something_accuracy_protocol_two_clips_three_crops(tmp_path):
    cfg = DataConfig(**something(tmp_path), input_size=24, scale_size=28, protocol="accuracy")
    _, val = build_datasets(cfg, num_frames=T)
    views, _ = val[2]  # 20 frames
    assert views.shape == (6, T, 3, 24, 24)
    greys = frame_greys(views)
    assert np.allclose(greys[:3], [[grey(k) for k in (1, 6, 11, 16)]] * 3, atol=3)  # clip 1, 3 crops
    assert np.allclose(greys[3:], [[grey(k) for k in (3, 8, 13, 18)]] * 3, atol=3)  # clip 2


def test_something_train_multiscale_and_jitter(tmp_path):
    torch.manual_seed(0)
    train, _ = build_datasets(DataConfig(**something(tmp_path), input_size=16), num_frames=T, seed=3)
    clips = [train[2][0] for _ in range(10)]
    assert all(c.shape == (T, 3, 16, 16) for c in clips)
    for c in clips:  # every frame comes from its own segment of the 20 frames
        ks = np.rint(frame_greys(c) / GREY_STEP - 1).astype(int)
        assert all(5 * s <= k < 5 * (s + 1) for s, k in enumerate(ks)), ks
    assert len({tuple(np.rint(frame_greys(c))) for c in clips}) > 1


def test_flip_swaps_left_right_labels(tmp_path):
    data = something(tmp_path, "v2", labels=(0, 1, 2), pattern="left-dark")
    cfg = DataConfig(**data, input_size=16, multiscale=False, flip=True, flip_label_map="auto")
    torch.manual_seed(0)
    train, _ = build_datasets(cfg, num_frames=T)
    assert train.flip_labels == {0: 1, 1: 0}
    outcomes = set()
    for i, listed in ((0, 0), (1, 1), (2, 2)) * 10:
        clip, label = train[i]
        flipped = bool(clip[..., :8].float().mean() > clip[..., 8:].float().mean())  # the dark half moved right
        expected = {0: 1, 1: 0}.get(listed, listed) if flipped else listed
        assert label == expected
        outcomes.add((listed, flipped))
    assert {(0, True), (0, False), (2, True)} <= outcomes


def test_flip_label_map_from_json_file(tmp_path):
    data = something(tmp_path, "v1")
    (tmp_path / "pairs.json").write_text(json.dumps([[0, 1]]))
    train, _ = build_datasets(DataConfig(**data, flip=True, flip_label_map=str(tmp_path / "pairs.json")), T)
    assert train.flip_labels == {0: 1, 1: 0}


# --- video files ------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, accuracy_views", [("kinetics400", 30), ("diving48", 6)])
def test_video_list_both_protocols(tmp_path, dataset, accuracy_views):
    data = videos(tmp_path, dataset)
    train, val = build_datasets(DataConfig(**data, input_size=32), num_frames=T)
    clip, label = train[0]
    assert clip.shape == (T, 3, 32, 32) and label == 1
    views, label = val[0]
    assert views.shape == (1, T, 3, 32, 32) and label == 1
    assert np.allclose(frame_greys(views[0]), [grey(k) for k in (2, 7, 12, 17)], atol=4)
    views, _ = val[1]
    assert np.allclose(frame_greys(views[0]), [grey(k) for k in (0, 1, 1, 2)], atol=4)  # repeats
    _, val = build_datasets(DataConfig(**data, input_size=32, protocol="accuracy"), num_frames=T)
    views, _ = val[0]
    assert views.shape == (accuracy_views, T, 3, 32, 32)


# --- bad input: DataError naming the path -----------------------------------------------------

def error(build, match):
    with pytest.raises(DataError) as info:
        build()
    assert match in str(info.value), str(info.value)
    return str(info.value)


def test_missing_list(tmp_path):
    data = something(tmp_path)
    cfg = DataConfig(**{**data, "train_list": "nope.txt"})
    error(lambda: build_datasets(cfg, T), str(tmp_path / "ssv1" / "nope.txt"))


def test_empty_list(tmp_path):
    data = something(tmp_path)
    (tmp_path / "ssv1" / "val.txt").write_text("\n\n")
    msg = error(lambda: build_datasets(DataConfig(**data), T), str(tmp_path / "ssv1" / "val.txt"))
    assert "empty" in msg


def test_malformed_line_names_line_number(tmp_path):
    data = something(tmp_path)
    (tmp_path / "ssv1" / "train.txt").write_text("frames/100 12 0\nframes/101 three 1\n")
    error(lambda: build_datasets(DataConfig(**data), T), f"{tmp_path / 'ssv1' / 'train.txt'}:2")


def test_missing_frame_folder(tmp_path):
    data = something(tmp_path)
    (tmp_path / "ssv1" / "train.txt").write_text("frames/100 12 0\nframes/999 5 1\n")
    msg = error(lambda: build_datasets(DataConfig(**data), T), str(tmp_path / "ssv1" / "frames" / "999"))
    assert "train.txt:2" in msg


def test_missing_video(tmp_path):
    data = videos(tmp_path)
    (tmp_path / "kinetics400" / "val.txt").write_text("videos/c.mkv 0\nvideos/gone.mp4 1\n")
    error(lambda: build_datasets(DataConfig(**data), T), str(tmp_path / "kinetics400" / "videos" / "gone.mp4"))


def test_missing_categories(tmp_path):
    data = something(tmp_path)
    (tmp_path / "ssv1" / "categories.txt").unlink()
    error(lambda: build_datasets(DataConfig(**data), T), str(tmp_path / "ssv1" / "categories.txt"))


def test_label_out_of_range(tmp_path):
    data = something(tmp_path)
    (tmp_path / "ssv1" / "val.txt").write_text("frames/100 12 3\n")
    msg = error(lambda: build_datasets(DataConfig(**data), T), f"{tmp_path / 'ssv1' / 'val.txt'}:1")
    assert "label 3" in msg


def test_corrupt_jpeg_is_an_error_not_a_substitute(tmp_path):
    data = something(tmp_path)
    bad = tmp_path / "ssv1" / "frames" / "102" / "00013.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10)
    _, val = build_datasets(DataConfig(**data), T)  # frame 12 (0-based, file 13) is a segment centre
    error(lambda: val[2], str(bad))


def test_missing_frame_file(tmp_path):
    data = something(tmp_path)
    (tmp_path / "ssv1" / "frames" / "102" / "00013.jpg").unlink()
    _, val = build_datasets(DataConfig(**data), T)
    error(lambda: val[2], str(tmp_path / "ssv1" / "frames" / "102" / "00013.jpg"))


def test_corrupt_video(tmp_path):
    data = videos(tmp_path)
    bad = tmp_path / "kinetics400" / "videos" / "c.mkv"
    bad.write_bytes(b"\x00garbage" * 100)
    train, _ = build_datasets(DataConfig(**data), T)
    error(lambda: train[1], str(bad))


def test_flip_without_map_on_something_is_refused(tmp_path):
    data = something(tmp_path)
    msg = error(lambda: build_datasets(DataConfig(**data, flip=True), T), str(tmp_path / "ssv1" / "categories.txt"))
    assert "flip_label_map" in msg


def test_unknown_key_and_missing_key_are_validation_errors(tmp_path):
    with pytest.raises(ValidationError, match="frame_sise"):
        DataConfig(frame_sise=32)
    with pytest.raises(ValidationError, match="train_list is required"):
        DataConfig(dataset="diving48", root=str(tmp_path), val_list="v", categories="c")


def test_bad_flip_label_map_file(tmp_path):
    data = something(tmp_path)
    (tmp_path / "pairs.json").write_text("{not json")
    cfg = DataConfig(**data, flip=True, flip_label_map=str(tmp_path / "pairs.json"))
    error(lambda: build_datasets(cfg, T), str(tmp_path / "pairs.json"))
    cfg = DataConfig(**data, flip=True, flip_label_map={0: 7})
    error(lambda: build_datasets(cfg, T), "outside [0, 3)")


# --- damaged videos and wrong counts: a DataError naming the file, never a substitute ---------

def write_noise_video(path, codec, count=12, size=(64, 48)):
    """Noise frames (every block coded, so damage anywhere hits picture data), the index (moov) at
    the front as streaming-friendly mp4s have it: a truncated file still opens and claims 12."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.thread_count = 1  # the same bytes on every run, whatever the machine's load
        for _ in range(count):
            img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def damaged_videos(tmp_path, codec, damage):
    root = tmp_path / "kinetics400"
    (root / "videos").mkdir(parents=True)
    data = write_noise_video(root / "videos" / "ok.mp4", codec).read_bytes()
    if damage.startswith("truncated"):
        data = data[: len(data) * int(damage.removeprefix("truncated")) // 100]
    elif damage == "cut":  # after the 6th frame's packet: the decoder sees no damage, only an early end
        with av.open(str(root / "videos" / "ok.mp4")) as container:
            ends = sorted(p.pos + p.size for p in container.demux(video=0) if p.size)
        data = data[: ends[5]]
    elif damage == "garbled":
        middle = bytearray(data)
        m = len(middle) // 2
        middle[m:m + 200] = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
        data = bytes(middle)
    bad = root / "videos" / "bad.mp4"
    bad.write_bytes(data)
    (root / "train.txt").write_text("videos/ok.mp4 0\nvideos/bad.mp4 1\n")
    (root / "val.txt").write_text("videos/ok.mp4 0\nvideos/bad.mp4 1\n")
    (root / "intact.txt").write_text("videos/ok.mp4 0\nvideos/ok.mp4 1\n")
    (root / "categories.txt").write_text("a\nb\n")
    cfg = DataConfig(dataset="kinetics400", root=str(root), train_list="train.txt", val_list="val.txt",
                     categories="categories.txt", input_size=32)
    return cfg, bad


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
@pytest.mark.parametrize("damage", ["truncated50", "truncated90", "cut", "garbled"])
@pytest.mark.parametrize("seek", [False, True])
def test_damaged_video_is_a_data_error_naming_the_file(tmp_path, codec, damage, seek):
    """The sequential decoder fails on damage before a clip's last frame. The seeking one decodes
    only the keyframe intervals a clip needs: it fails on damage there, and damage elsewhere
    never reaches the clip (it equals the intact video's)."""
    cfg, bad = damaged_videos(tmp_path, codec, damage)
    check_data(cfg, 2)  # opening and decoding is not cheap: the damage shows when the clip is read
    train, val = build_datasets(cfg, num_frames=T)
    intact = build_datasets(cfg.model_copy(update={"train_list": "intact.txt", "val_list": "intact.txt"}), T)
    assert val[0][0].shape == (1, T, 3, 32, 32)  # the intact noise video decodes without complaint
    failed = 0
    for ds, reference in zip((train, val), intact):
        ds.source.seek = seek
        for draw in range(4 if seek else 1):
            index = (1, draw) if ds.train else 1
            try:
                clip = ds[index][0]
            except DataError as e:
                assert str(bad) in str(e) and ("truncated or corrupt" in str(e) or "no video frames" in str(e)), e
                failed += 1
                continue
            assert seek, "the sequential decoder read a damaged video without an error"
            assert torch.equal(clip, reference[index][0]), "a clip of the damaged video differs from the intact one"
    assert failed or damage == "garbled", "truncation past the clips' frames is always an error"


def test_video_cut_short_says_how_many_frames_it_has_and_claims(tmp_path):
    cfg, bad = damaged_videos(tmp_path, "mpeg4", "cut")
    _, val = build_datasets(cfg, num_frames=T)
    msg = error(lambda: val[1], str(bad))
    assert "decoded 6 frames but the container claims 12" in msg and "needs frame 11" in msg, msg
    cfg, bad = damaged_videos(tmp_path / "t", "mpeg4", "truncated50")
    _, val = build_datasets(cfg, num_frames=T)
    msg = error(lambda: val[1], str(bad))
    assert "decoding failed at frame" in msg and "of the 12 the container claims" in msg, msg
    assert msg.count(str(bad)) == 1, msg


def test_garbled_video_fails_where_the_decoder_would_conceal(tmp_path):
    cfg, bad = damaged_videos(tmp_path, "mpeg4", "garbled")
    _, val = build_datasets(cfg, num_frames=T)
    val.source.seek = False
    assert "decoding failed at frame" in error(lambda: val[1], str(bad))
    val.source.seek = True  # asked for the garbled frame itself (the 3rd), the seeking decoder fails too
    assert "decoding failed at frame 3 " in error(lambda: val.source.read(1, [np.array([2.5 / 12])]), str(bad))


def test_empty_video_file_is_refused_up_front(tmp_path):
    data = videos(tmp_path)
    (tmp_path / "kinetics400" / "videos" / "c.mkv").write_bytes(b"")
    msg = error(lambda: check_data(DataConfig(**data), 2), str(tmp_path / "kinetics400" / "videos" / "c.mkv"))
    assert "empty" in msg and "train.txt:2" in msg


def test_short_folder_is_caught_up_front_by_a_listing(tmp_path):
    data = something(tmp_path)
    root = tmp_path / "ssv1"
    (root / "train.txt").write_text("frames/100 12 0\nframes/101 3 1\nframes/102 4 2\n")  # 102 holds 20
    msg = error(lambda: check_data(DataConfig(**data), 3), str(root / "frames" / "102"))
    assert "listed with 4 frames" in msg and "train.txt:3" in msg and "holds 20" in msg, msg
    (root / "train.txt").write_text("frames/100 20 0\n")  # 100 holds 12
    msg = error(lambda: check_data(DataConfig(**data), 3), str(root / "frames" / "100" / "00013.jpg"))
    assert "listed with 20 frames" in msg and "00012.jpg only" in msg, msg


def test_wrong_frame_template_is_caught_up_front(tmp_path):
    data = something(tmp_path, "v1")
    cfg = DataConfig(**data, frame_template="img_{:05d}.jpg")
    msg = error(lambda: check_data(cfg, 3), "img_00001.jpg: frame not found")
    assert "holds no img_00001.jpg" in msg


def test_classes_are_checked_against_the_model_up_front(tmp_path):
    data = something(tmp_path)
    check_data(DataConfig(**data), 3)
    msg = error(lambda: check_data(DataConfig(**data), 174), str(tmp_path / "ssv1" / "categories.txt"))
    assert "3 classes, but model.num_classes is 174" in msg
    msg = error(lambda: check_data(DataConfig(num_classes=4), 7), "model.num_classes is 7")
    assert "data.num_classes is 4" in msg


# --- the seeking video decoder against the sequential reference --------------------------------

def write_moving_video(path, codec, options, count=60, size=(96, 64), rate=25, note=None):
    """A textured scene panning under a moving block: the encoder makes P and B frames.
    ``note``: the container's comment (what harness.prepare writes there)."""
    rng = np.random.default_rng(1)
    texture = np.kron(rng.integers(0, 256, (size[1] // 8 + 4, size[0] // 8 + 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    with av.open(str(path), "w") as out:
        if note is not None:
            out.metadata["comment"] = note
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = options
        for k in range(count):
            img = texture[k % 16:k % 16 + size[1], k % 24:k % 24 + size[0]].copy()
            img[20:36, (3 * k) % (size[0] - 16):(3 * k) % (size[0] - 16) + 16] = (250, 40, 10)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


ENCODINGS = {
    "x264 gop 10, 3 B-frames": ("libx264", {"g": "10", "bf": "3"}, "mp4"),
    "x264 open gop": ("libx264", {"g": "12", "bf": "2", "x264-params": "open-gop=1"}, "mp4"),
    "x264 default gop (one keyframe)": ("libx264", {}, "mp4"),
    "mpeg4 gop 8, B-frames": ("mpeg4", {"g": "8", "bf": "2"}, "mp4"),
    "x264 in Matroska (no frame count)": ("libx264", {"g": "9"}, "mkv"),
    # harness.prepare's files: the decoder takes their layout from the note, not from the packets.
    "prepared: gop 8 exactly, no B-frames, noted": ("libx264", {"g": "8", "keyint_min": "8", "sc_threshold": "0",
                                                                 "bf": "0"}, "mp4", "harness.prepare gop=8"),
    # A note that does not hold may cost the fall-back, never a wrong frame.
    "a false note (gop 5, B-frames, noted 8)": ("libx264", {"g": "5", "bf": "2"}, "mp4", "harness.prepare gop=8"),
    "a false note (gop 8 noted 3)": ("libx264", {"g": "8", "keyint_min": "8", "sc_threshold": "0", "bf": "0"},
                                     "mp4", "harness.prepare gop=3"),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_seeking_decoder_gives_the_sequential_decoders_pixels(tmp_path, encoding):
    from harness.data.datasets import decode_seeking, decode_sequential, prepared_layout

    codec, options, ext, *note = ENCODINGS[encoding]
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this FFmpeg")
    path = write_moving_video(tmp_path / f"v.{ext}", codec, options, note=note[0] if note else None)
    with av.open(str(path)) as container:
        noted = prepared_layout(container, container.streams.video[0])
    assert (noted is not None) == bool(note)
    rng = np.random.default_rng(0)
    requests = [[tf.train_positions(8, rng)] for _ in range(25)]
    requests += [[tf.test_positions(8, c, n) for c in range(n)] for n in (1, 2, 10)]
    requests += [[np.array([0.0])], [np.array([0.999])], [np.sort(rng.random(16))]]
    for clips in requests:
        seeking = decode_seeking(path, clips)
        if "open gop" not in encoding and "false note" not in encoding:
            assert seeking is not None, "a regular file fell back to the sequential decoder"
        if seeking is None:
            continue
        for got, want in zip(seeking, decode_sequential(path, clips)):
            assert got.dtype == np.uint8 and np.array_equal(got, want)
