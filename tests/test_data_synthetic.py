"""The synthetic temporal benchmark: determinism, DataLoader workers, the time-reversal pairing
that caps order-blind models at 50%, class balance, speed."""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from harness.data import DataConfig, build_datasets
from harness.data import transforms as tf
from harness.data.synthetic import CLASS_NAMES, MIRROR, PAIR_HUES, PAIRS, Nuisance, render_clip

T = 8
CENTRES = tf.test_positions(T)


def small(**kw) -> DataConfig:
    return DataConfig(**{"train_size": 48, "val_size": 24, "frame_size": 32, **kw})


def test_same_seed_and_index_give_identical_clips():
    _, val_a = build_datasets(small(), T)
    _, val_b = build_datasets(small(), T)
    for i in (0, 5, 23):
        assert torch.equal(val_a[i][0], val_b[i][0])
    torch.manual_seed(7)
    train_a = build_datasets(small(), T)[0][3][0]
    torch.manual_seed(7)
    train_b = build_datasets(small(), T)[0][3][0]
    assert torch.equal(train_a, train_b)  # augmentation follows torch's seed


def test_different_seeds_and_indices_differ():
    _, val_a = build_datasets(small(), T)
    _, val_b = build_datasets(small(seed=1), T)
    assert not torch.equal(val_a[4][0], val_b[4][0])
    assert not torch.equal(val_a[4][0], val_a[4 + 12][0])  # same class, another clip
    train, _ = build_datasets(small(), T)
    assert not torch.equal(train[0][0], train[0][0])  # fresh frame times every draw


def test_shapes_labels_and_protocols():
    train, val = build_datasets(small(), T)
    assert train.num_classes == val.num_classes == 12
    assert train.class_names == CLASS_NAMES
    clip, label = train[13]
    assert clip.shape == (T, 3, 32, 32) and clip.dtype == torch.uint8 and label == 1
    views, _ = val[0]
    assert views.shape == (1, T, 3, 32, 32)
    _, val = build_datasets(small(protocol="accuracy", input_size=24), T)
    assert val[0][0].shape == (6, T, 3, 24, 24)


def test_class_balance():
    train, val = build_datasets(small(num_classes=8, train_size=80, val_size=40), T)
    assert Counter(train.label(i) for i in range(len(train))) == {c: 10 for c in range(8)}
    assert Counter(val.label(i) for i in range(len(val))) == {c: 5 for c in range(8)}


def test_dataloader_with_two_workers_matches_in_process():
    _, val = build_datasets(small(val_size=8), T)
    loader = DataLoader(val, batch_size=4, num_workers=2)
    views = torch.cat([v for v, _ in loader])
    assert views.shape == (8, 1, T, 3, 32, 32)
    assert torch.equal(views[5], val[5][0])
    train, _ = build_datasets(small(train_size=8), T)
    clips, labels = next(iter(DataLoader(train, batch_size=8, num_workers=2, shuffle=True)))
    assert clips.shape == (8, T, 3, 32, 32) and sorted(labels.tolist()) == list(range(8))


@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_b_clips_are_time_reversed_a_clips(pair):
    """The pairing property: same random parameters, opposite frame order."""
    a, b = 2 * pair, 2 * pair + 1
    for key in range(5):
        clip_a = render_clip(a, [key], CENTRES, 32)
        clip_b = render_clip(b, [key], CENTRES, 32)
        assert np.array_equal(clip_b, clip_a[::-1])
        # so the multiset of frames -- all an order-blind model sees -- is the same
        assert sorted(f.tobytes() for f in clip_a) == sorted(f.tobytes() for f in clip_b)
        # and with jittered training times too: B at t is A at 1 - t, played backwards
        times = np.sort(np.random.default_rng(key).random(T))
        assert np.array_equal(render_clip(b, [key], times, 32), render_clip(a, [key], 1 - times[::-1], 32)[::-1])
        # the clip does change over time (the class lives in frame order)
        assert not np.array_equal(clip_a, clip_b)


def test_reversed_a_is_distributed_like_b():
    """Statistically: per-frame statistics pooled over independent A clips and B clips match,
    while the same statistic taken in frame order tells them apart (the direction)."""
    def stats(label):
        clips = np.stack([render_clip(label, [100 + k], CENTRES, 32, Nuisance(noise=0)) for k in range(60)])
        return clips.reshape(60, T, -1).astype(np.float32).std(axis=2)  # per-frame contrast
    for a in (2, 8):  # growing/shrinking (size), appearing/disappearing (presence)
        sa, sb = stats(a), stats(a + 1)
        pooled = abs(sa.mean() - sb.mean()) / sa.std()
        ordered = (sa[:, -1] - sa[:, 0]).mean() - (sb[:, -1] - sb[:, 0]).mean()
        assert pooled < 0.25
        assert ordered > 0.5 * sa.std()


def test_each_pair_has_its_own_actor_colour():
    # A single frame names the pair (TSN's route to its 50% cap): the most saturated pixels of a
    # clip without clutter or distractors are the actor's, in its pair's hue family (+-12 degrees).
    plain = Nuisance(distractors=0, clutter=0, occlusion=0.0, noise=0.0, jitter=0.0)
    for label in range(len(CLASS_NAMES)):
        for key in range(5):
            clip = render_clip(label, [label, key], CENTRES, 32, plain)  # (T, 3, H, W)
            frame = clip.transpose(1, 0, 2, 3).reshape(3, -1).astype(float)
            sat = frame.max(0) - frame.min(0)
            r, g, b = frame[:, sat >= sat.max() - 5].mean(1)
            hue = np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360
            gap = abs((hue - PAIR_HUES[label // 2] + 180) % 360 - 180)
            assert gap <= 15, (CLASS_NAMES[label], key, hue)


def test_mirror_map_swaps_horizontal_classes():
    assert {CLASS_NAMES[a]: CLASS_NAMES[b] for a, b in MIRROR.items()} == {
        "moving right": "moving left", "moving left": "moving right"}
    # a mirrored "moving right" clip is a "moving left" one: the actor's column falls over time
    clip = render_clip(0, [3], CENTRES, 32, Nuisance(0, 0, 0.0, 0.0, 0.0))[..., ::-1]
    moving = np.abs(np.diff(clip.astype(int), axis=0)).sum(axis=(1, 2))  # (T-1, W)
    cols = [(m * np.arange(32)).sum() / m.sum() for m in moving if m.sum() > 0]
    assert len(cols) >= 3 and cols[-1] < cols[0]
    train, _ = build_datasets(small(flip=True, num_classes=4), T)
    assert train.flip_labels == {0: 1, 1: 0}


def test_rendering_is_fast():
    start = time.process_time()
    for i in range(100):
        render_clip(i % 12, [i], CENTRES, 64)
    per_clip = (time.process_time() - start) / 100
    assert per_clip < 0.006, f"{per_clip * 1e3:.2f} ms per 8-frame 64x64 clip"  # ~1 ms; slack for CI


def test_config_rejects_odd_class_counts_and_foreign_flip_maps():
    with pytest.raises(ValueError, match="even"):
        DataConfig(num_classes=5)
    with pytest.raises(ValueError, match="flip_label_map"):
        DataConfig(flip=True, flip_label_map={0: 1})
