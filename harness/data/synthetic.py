"""The synthetic temporal benchmark: procedural clips whose class is only visible in frame order.

Every class belongs to a time-reversed pair (A, B): a B clip is, literally, an A clip rendered with
the same random parameters and played backwards. The multiset of frames therefore never tells A
from B, so any frame-order-blind model (TSN: an average of per-frame predictions) is capped at
50%; telling them apart needs features that relate neighbouring frames. See docs/synthetic.md.

Rendering is vectorised over the frames of a clip (numpy, uint8, channel-first), about a
millisecond per 8-frame 64x64 clip on one core (0.8 ms at the default 40x40).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# (A, B = A played backwards, the actor's shape). Each pair has its own actor shape, so a single
# frame can tell the pair (an order-blind model reaches ~50%), never the direction. Ordered so
# that a smaller ``num_classes`` keeps the first pairs.
PAIRS = [
    ("moving right", "moving left", "square"),
    ("growing", "shrinking", "diamond"),
    ("rising", "falling", "flat bar"),
    ("approaching", "separating", "two squares"),
    ("appearing", "disappearing", "plus"),
    ("brightening", "darkening", "hollow square"),
]
# Each pair's actor also has its own colour family (hue in degrees: red, yellow, green, cyan,
# blue, magenta), so a single frame tells the pair even at 40 px, where the shapes are a few
# pixels wide after the first strided layers.
PAIR_HUES = [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]
CLASS_NAMES = [name for a, b, _ in PAIRS for name in (a, b)]
MAX_CLASSES = len(CLASS_NAMES)
# A horizontal mirror turns these classes into their partner (train-time flip uses it).
MIRROR = {0: 1, 1: 0}


@dataclass(frozen=True)
class Nuisance:
    """How hard the scenes are. Every nuisance is time-reversal symmetric in distribution."""

    distractors: int = 2     # muted discs that move and grow/shrink too: which object acts?
    clutter: int = 3         # static muted discs and oblongs baked into the background
    occlusion: float = 0.3   # probability of a static bar drawn over everything
    noise: float = 6.0       # per-pixel noise amplitude, grey levels (uniform in [-noise, noise])
    jitter: float = 1.0      # camera shake: std (pixels) of each step of a centred random walk


# --- small cached helpers (module level, so DataLoader workers rebuild them lazily) ---------

@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates shaped to broadcast over (T, H, W): xs (1,1,W), ys (1,H,1)."""
    r = np.arange(size, dtype=np.float32) + 0.5
    return r.reshape(1, 1, size), r.reshape(1, size, 1)


@lru_cache(maxsize=8)
def _upsampler(size: int, cells: int = 4) -> np.ndarray:
    """Bilinear interpolation matrix (size, cells): a smooth field from a cells x cells grid."""
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    frac = pos - lo
    m = np.zeros((size, cells), np.float32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m


@lru_cache(maxsize=8)
def _noise_bank(size: int, amplitude: int) -> np.ndarray:
    """A fixed bank of noise planes; frames take random crops of it (fresh noise is 10x slower)."""
    rng = np.random.default_rng(12345)
    return rng.integers(-amplitude, amplitude + 1, size=(32, size + 16, size + 16)).astype(np.int16)


def _vivid(rng: np.random.Generator, n: int, hue: float) -> np.ndarray:
    """Saturated colours (n, 3) of one colour family: ``hue`` (degrees) +- 12 degrees."""
    h = (hue + rng.uniform(-12, 12, n)) % 360 / 60
    sat, val = rng.uniform(0.75, 1.0, n), rng.uniform(200, 255, n)
    # HSV -> RGB: each channel's distance (in hue sextants) from its own primary.
    k = (np.array([5.0, 3.0, 1.0])[None, :] + h[:, None]) % 6
    ramp = np.clip(np.minimum(k, 4 - k), 0, 1)
    return (val[:, None] * (1 - sat[:, None] * ramp)).astype(np.float32)


def _muted(rng: np.random.Generator, n: int) -> np.ndarray:
    """Low-saturation colours (n, 3) for distractors and clutter: visible, but unlike an actor."""
    return (rng.uniform(50, 210, size=(n, 1)) + rng.uniform(-20, 20, size=(n, 3))).astype(np.float32)


def _progress(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Action progress in [0, 1] at times t: it unfolds over a random window at a random pace.

    The window's distribution is mirror-symmetric in time and smoothstep satisfies
    1 - s(1 - x) = s(x), so the progress curve of a reversed clip is itself a valid curve.
    """
    start, end = rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)
    x = np.clip((t - start) / (end - start), 0.0, 1.0)
    return (x * x * (3 - 2 * x)).astype(np.float32)


# --- masks over (T, H, W) --------------------------------------------------------------------

def _box(xs, ys, cx, cy, hw, hh) -> np.ndarray:
    """Axis-aligned boxes, one per frame; separable, so a single full-size operation."""
    col = np.abs(xs - cx[:, None, None]) <= np.asarray(hw)[..., None, None]
    row = np.abs(ys - cy[:, None, None]) <= np.asarray(hh)[..., None, None]
    return col & row


def _disc(xs, ys, cx, cy, r) -> np.ndarray:
    d2 = (xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2
    return d2 <= (np.asarray(r) ** 2)[..., None, None]


def _diamond(xs, ys, cx, cy, r) -> np.ndarray:
    return np.abs(xs - cx[:, None, None]) + np.abs(ys - cy[:, None, None]) <= np.asarray(r)[..., None, None]


def _plus(xs, ys, cx, cy, r) -> np.ndarray:
    return _box(xs, ys, cx, cy, r, r / 3) | _box(xs, ys, cx, cy, r / 3, r)


def _frame(xs, ys, cx, cy, r) -> np.ndarray:
    return _box(xs, ys, cx, cy, r, r) & ~_box(xs, ys, cx, cy, r * 0.55, r * 0.55)


SHAPES = {"box": _box, "disc": _disc, "diamond": _diamond, "plus": _plus, "frame": _frame}


# --- the target action of a pair's A class ---------------------------------------------------

def _target(pair: int, p: np.ndarray, size: int, rng: np.random.Generator):
    """The actor(s) doing pair's A action at progress p: list of (shape, params, colour (T, 3))."""
    T = len(p)
    hue = PAIR_HUES[pair]
    colour = np.repeat(_vivid(rng, 1, hue), T, axis=0)
    ones = np.ones(T, np.float32)
    if pair == 0:  # moving right
        half = rng.uniform(0.07, 0.11) * size
        dist = rng.uniform(0.3, 0.55) * size
        cx = rng.uniform(half + 1, size - half - 1 - dist) + dist * p
        cy = rng.uniform(half + 1, size - half - 1) * ones
        return [("box", (cx, cy, half, half), colour)]
    if pair == 1:  # growing
        r0 = rng.uniform(0.07, 0.1) * size
        r = r0 * (1 + rng.uniform(0.8, 1.4) * p)
        lim = r0 * 2.4 + 1
        cx, cy = rng.uniform(lim, size - lim, 2)
        return [("diamond", (cx * ones, cy * ones, r), colour)]
    if pair == 2:  # rising: a flat bar moves up (a turning bar was tried here: at 40 px no
        # model learned its direction in the smoke budget, a constant 50% on one pair)
        half_len, half_width = rng.uniform(0.12, 0.16) * size, rng.uniform(0.04, 0.055) * size
        dist = rng.uniform(0.3, 0.55) * size
        cy = rng.uniform(half_width + 1 + dist, size - half_width - 1) - dist * p
        cx = rng.uniform(half_len + 1, size - half_len - 1) * ones
        return [("box", (cx, cy, half_len, half_width), colour)]
    if pair == 3:  # approaching: two squares close in along a random direction until touching
        half = rng.uniform(0.06, 0.08) * size
        near = 2 * half + 2
        far = near + rng.uniform(0.25, 0.45) * size
        gap = far + (near - far) * p
        phi = rng.uniform(0, 2 * np.pi)
        ux, uy = np.cos(phi), np.sin(phi)
        ex, ey = abs(ux) * far / 2 + half + 1, abs(uy) * far / 2 + half + 1
        cx, cy = rng.uniform(ex, size - ex), rng.uniform(ey, size - ey)
        second = np.repeat(_vivid(rng, 1, hue), T, axis=0)
        return [("box", (cx + ux * gap / 2, cy + uy * gap / 2, half, half), colour),
                ("box", (cx - ux * gap / 2, cy - uy * gap / 2, half, half), second)]
    r = rng.uniform(0.08, 0.12) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    if pair == 4:  # appearing: absent (negative size) until the action's midpoint
        visible = np.where(p >= 0.5, r, -1.0).astype(np.float32)
        return [("plus", (cx * ones, cy * ones, visible), colour)]
    if pair == 5:  # brightening: an outline in place goes from dim to full colour, a local change
        dim = rng.uniform(0.3, 0.5)
        colour = colour * (dim + (1 - dim) * p)[:, None]
        return [("frame", (cx * ones, cy * ones, r), colour)]
    raise ValueError(f"unknown pair {pair}")


def _render_forward(pair: int, times: np.ndarray, size: int, nz: Nuisance,
                    rng: np.random.Generator) -> np.ndarray:
    """The A class of ``pair`` at ``times`` -> uint8 (T, 3, size, size)."""
    T = len(times)
    xs, ys = _grid(size)
    p = _progress(times, rng)

    # Camera shake: a centred random walk of integer offsets, applied to everything.
    margin = int(np.ceil(3 * nz.jitter)) if nz.jitter > 0 else 0
    walk = np.cumsum(rng.normal(0, nz.jitter, size=(T, 2)), axis=0) if nz.jitter > 0 else np.zeros((T, 2))
    shake = np.clip(np.rint(walk - walk.mean(axis=0)), -margin, margin).astype(int)

    # Background: a smooth colour field plus static clutter, rendered once, a bit larger than the
    # frame so each frame can take a shifted window of it.
    big = size + 2 * margin
    up = _upsampler(big)
    field = rng.uniform(40, 200, size=(3, 4, 4)).astype(np.float32)
    bg = (up @ field @ up.T).astype(np.uint8)
    bxs, bys = _grid(big)
    for _ in range(nz.clutter):
        cx, cy = rng.uniform(0, big, size=(2, 1)).astype(np.float32)
        # Neutral shapes only (discs, oblong rectangles): the actor's shape is the pair's cue.
        a, b = rng.uniform(0.04, 0.1, 2) * size
        shape = _box(bxs, bys, cx, cy, a, b * 0.5) if rng.random() < 0.5 else _disc(bxs, bys, cx, cy, a)
        colour = _muted(rng, 1)[0]
        for c in range(3):
            bg[c][shape[0]] = colour[c]
    canvas = np.stack([bg[:, margin + dy:margin + dy + size, margin + dx:margin + dx + size]
                       for dx, dy in shake])
    ox, oy = shake[:, 0].astype(np.float32), shake[:, 1].astype(np.float32)

    # Moving, growing/shrinking distractor discs, in random depth order around the target.
    layers = []
    centred = (times - 0.5).astype(np.float32)
    for _ in range(nz.distractors):
        x0, y0 = rng.uniform(0, size, 2)
        speed, heading = rng.uniform(0, 0.6) * size, rng.uniform(0, 2 * np.pi)
        r = rng.uniform(0.05, 0.1) * size * np.exp(rng.uniform(-0.6, 0.6) * centred)
        cx, cy = x0 + speed * np.cos(heading) * centred, y0 + speed * np.sin(heading) * centred
        layers.append(("disc", (cx, cy, r), np.repeat(_muted(rng, 1), T, axis=0)))
    depth = int(rng.integers(0, len(layers) + 1))
    layers[depth:depth] = _target(pair, p, size, rng)
    if rng.random() < nz.occlusion:
        thick, at = rng.uniform(0.03, 0.06) * size, rng.uniform(0, size)
        along = np.full(T, size / 2, np.float32)
        across = np.full(T, at, np.float32)
        params = (along, across, size, thick) if rng.random() < 0.5 else (across, along, thick, size)
        layers.append(("box", params, np.repeat(_muted(rng, 1), T, axis=0)))

    for kind, params, colour in layers:
        cx, cy, *rest = params
        cx, cy = cx - ox, cy - oy  # the camera moved by (ox, oy)
        mask = SHAPES[kind](xs, ys, cx, cy, *rest)
        colour = colour.astype(np.uint8)
        if (colour == colour[0]).all():
            for c in range(3):
                canvas[:, c][mask] = colour[0, c]
        else:  # colour changes over time
            for t in range(T):
                for c in range(3):
                    canvas[t, c][mask[t]] = colour[t, c]

    if nz.noise > 0:
        bank = _noise_bank(size, int(round(nz.noise)))
        pick = rng.integers(0, len(bank), T)
        at = rng.integers(0, 17, size=(T, 2))
        noise = np.stack([bank[k, y:y + size, x:x + size] for k, (x, y) in zip(pick, at)])
        canvas = np.clip(canvas + noise[:, None], 0, 255).astype(np.uint8)
    return canvas


def render_clip(label: int, key, times: np.ndarray, size: int, nuisance: Nuisance = Nuisance()) -> np.ndarray:
    """Clip of class ``label`` with random parameters from ``key`` (any numpy seed) sampled at
    ``times`` (increasing, in [0, 1]) -> uint8 array (T, 3, size, size).

    A B class is its pair's A clip with the same key, rendered at the mirrored times and played
    backwards: ``render_clip(2k+1, key, t)[::-1] == render_clip(2k, key, 1 - t[::-1])``.
    """
    pair, backwards = divmod(int(label), 2)
    times = np.asarray(times, np.float32)
    rng = np.random.default_rng(key)
    if backwards:
        return np.ascontiguousarray(_render_forward(pair, (1 - times)[::-1], size, nuisance, rng)[::-1])
    return _render_forward(pair, times, size, nuisance, rng)
