"""Procedural 64x64 outdoor scenes with per-pixel label maps (the bundled example's training data).

Every image is a pure function of (seed, index): `render(seed, start, n)` returns the same pixels
for image i whatever the batch it was rendered in. Rendering is vectorised over the batch; each
scene has a fixed number of object slots (buildings, trees, clouds) switched on or off per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

CLASSES: tuple[str, ...] = ("sky", "cloud", "sun", "ground", "building", "roof", "window", "door", "tree")
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
SIZE = 64
MAX_BUILDINGS = 2
MAX_TREES = 4
MAX_CLOUDS = 3

# time of day: (sky top, sky at horizon, light multiplier for the ground and objects)
_TIMES = np.array(
    [
        [[70, 130, 220], [170, 210, 245], [1.00, 1.00, 1.00]],  # day
        [[40, 90, 190], [140, 190, 240], [0.95, 0.95, 1.00]],  # clear blue
        [[80, 70, 140], [250, 160, 90], [0.95, 0.80, 0.70]],  # dusk
        [[20, 25, 60], [60, 60, 110], [0.45, 0.45, 0.60]],  # night
        [[150, 160, 170], [200, 205, 210], [0.80, 0.82, 0.85]],  # overcast
    ],
    dtype=np.float32,
)
_TIME_P = np.array([0.35, 0.25, 0.18, 0.10, 0.12])


@dataclass(frozen=True)
class SceneBatch:
    """Rendered scenes: `images` uint8 (N, 64, 64, 3) and `labels` uint8 (N, 64, 64) class indices."""

    images: np.ndarray
    labels: np.ndarray


def _rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """A generator that depends only on (seed, index, stream)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), 0x5CE7E, stream]))


def _params(seed: int, index: int) -> np.ndarray:
    """Draw one scene's parameters as a flat float vector (layout fixed by `_LAYOUT`)."""
    g = _rng(seed, index)
    u = g.random(_NPARAMS)
    return u


# Each scene consumes a fixed number of uniform draws so that parameters never shift between images.
_NPARAMS = 16 + MAX_CLOUDS * 8 + MAX_BUILDINGS * 16 + MAX_TREES * 12


def _color(u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Interpolate colours between lo and hi with per-image uniforms u of shape (N, 3)."""
    return lo + (hi - lo) * u


def _col(c: np.ndarray) -> np.ndarray:
    """Per-image colours (N, 3) as (N, 1, 1, 3), to broadcast over pixels."""
    return c[:, None, None, :]


class _Draws:
    """The batch's uniforms handed out one parameter at a time, (N,) per call, always in the same order."""

    def __init__(self, params: np.ndarray) -> None:
        self.params = params
        self.next = iter(range(_NPARAMS))

    def __call__(self) -> np.ndarray:
        return self.params[:, next(self.next)]


class _Canvas:
    """A batch being rendered: pixels, labels, and flat-coloured objects in an id map with a per-image colour table."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.yy = np.arange(SIZE, dtype=np.float32)[None, :, None]  # (1,H,1)
        self.xx = np.arange(SIZE, dtype=np.float32)[None, None, :]  # (1,1,W)
        self.img = np.zeros((n, SIZE, SIZE, 3), np.float32)
        self.lab = np.zeros((n, SIZE, SIZE), np.uint8)
        # flat-coloured objects go into an id map with a per-image colour table, resolved once at the end
        self.obj = np.full((n, SIZE, SIZE), -1, np.int16)
        self.table: list[np.ndarray] = []  # per object slot: (N, 3) colours
        self.table_cls: list[int] = []

    def paint(self, mask: np.ndarray, colour: np.ndarray, cls: str) -> None:
        """An object of class `cls` and colour `colour` where `mask` is set, in front of the objects painted before."""
        np.copyto(self.obj, np.int16(len(self.table)), where=mask)
        self.table.append(np.broadcast_to(colour.reshape(-1, 3), (self.n, 3)).astype(np.float32))
        self.table_cls.append(CLASS_INDEX[cls])

    def resolve(self) -> tuple[np.ndarray, np.ndarray]:
        """The pixels and labels with the object id map resolved into colours and classes."""
        n = self.n
        fg = self.obj >= 0
        ids = np.where(fg, self.obj, 0)
        colours = np.stack(self.table, 1)  # (N, K, 3)
        img = np.where(fg[..., None], np.take_along_axis(colours, ids.reshape(n, -1, 1), 1).reshape(n, SIZE, SIZE, 3), self.img)
        lab = np.where(fg, np.asarray(self.table_cls, np.uint8)[ids], self.lab)
        return img, lab


class _Sky(NamedTuple):
    """What the sky step decides for the rest of the scene, per image."""

    tod: np.ndarray  # time of day (index into _TIMES)
    light: np.ndarray  # (N, 3) light multiplier
    horizon: np.ndarray  # mean horizon row
    ground_y: np.ndarray  # (N, 1, W) horizon row per column
    ground_u: np.ndarray  # (N, 3) ground colour uniforms
    tex: np.ndarray  # ground texture uniform


def _sky(c: _Canvas, take: _Draws) -> _Sky:
    """Sky gradient by time of day, the horizon line, and the sun (or moon at night)."""
    xx, yy = c.xx, c.yy
    tod = np.searchsorted(np.cumsum(_TIME_P), take(), side="right").clip(0, len(_TIMES) - 1)
    times = _TIMES[tod]
    light = times[:, 2]
    horizon = 30 + 16 * take()  # mean horizon row
    amp = 4 * take()
    freq = 0.03 + 0.12 * take()
    phase = 6.28 * take()
    ground_y = horizon[:, None, None] + amp[:, None, None] * np.sin(freq[:, None, None] * xx + phase[:, None, None])
    t = np.clip(yy / horizon[:, None, None], 0, 1)[..., None]
    c.img[:] = _col(times[:, 0]) * (1 - t) + _col(times[:, 1]) * t
    # sun (or moon at night)
    has_sun = take() < 0.45
    sx, sy, sr = 6 + 52 * take(), 4 + 0.6 * horizon * take(), 2.5 + 3.5 * take()
    sun = has_sun[:, None, None] & ((xx - sx[:, None, None]) ** 2 + (yy - sy[:, None, None]) ** 2 <= sr[:, None, None] ** 2)
    sun_col = np.where((tod == 3)[:, None], np.array([[230, 230, 210]], np.float32), np.array([[255, 225, 90]], np.float32))
    c.paint(sun, _col(sun_col), "sun")
    ground_u = np.stack([take(), take(), take()], 1)
    tex = take()
    return _Sky(tod, light, horizon, ground_y, ground_u, tex)


def _cloud(c: _Canvas, take: _Draws, sky: _Sky) -> None:
    """One cloud slot: a union of three ellipses above the ground (more often when overcast)."""
    xx, yy, n = c.xx, c.yy, c.n
    on = take() < (0.25 + 0.45 * (sky.tod == 4))
    cx, cy, cw, ch = -4 + 72 * take(), 3 + 0.5 * sky.horizon * take(), 5 + 8 * take(), 2 + 2.5 * take()
    shade = 0.85 + 0.15 * take()
    m = np.zeros((n, SIZE, SIZE), bool)
    for dx, dy, s in ((-0.6, 0.3, 0.7), (0.0, 0.0, 1.0), (0.6, 0.3, 0.7)):
        ex = (xx - (cx + dx * cw)[:, None, None]) / (s * cw)[:, None, None]
        ey = (yy - (cy + dy * ch)[:, None, None]) / (s * ch * 1.4)[:, None, None]
        m |= ex**2 + ey**2 <= 1
    m &= on[:, None, None] & (yy < sky.ground_y)
    ccol = np.clip(235 * shade[:, None] * sky.light, 0, 255) * np.ones((1, 3), np.float32)
    c.paint(m, _col(ccol), "cloud")
    take(), take()  # reserved draws keep the layout stable


def _ground(c: _Canvas, sky: _Sky) -> None:
    """Grass / dry grass / dirt below the horizon, darker towards the bottom, with stripes of texture."""
    xx, yy, tex = c.xx, c.yy, sky.tex
    gm = yy >= sky.ground_y
    gcol = _color(sky.ground_u, np.array([40, 90, 20], np.float32), np.array([150, 170, 70], np.float32))
    gcol = gcol * sky.light
    depth = np.clip((yy - sky.ground_y) / 30.0, 0, 1)[..., None]
    stripes = (np.sin(0.9 * yy + 0.35 * xx * (tex[:, None, None] - 0.5) + 3 * tex[:, None, None]) * 8)[..., None]
    gimg = _col(gcol) * (1 - 0.35 * depth) + stripes
    np.copyto(c.img, gimg, where=gm[..., None])
    c.lab[gm] = CLASS_INDEX["ground"]
    c.obj[gm] = -1  # ground hides clouds and sun that dip below the horizon


def _building(c: _Canvas, take: _Draws, sky: _Sky) -> None:
    """One building slot: a wall, a gable or flat roof, a grid of windows (lit at dusk and night) and a door."""
    xx, yy, light, tod = c.xx, c.yy, sky.light, sky.tod
    on = take() < 0.6
    bw = 12 + 14 * take()
    bx0 = -2 + (64 - bw + 4) * take()
    base = sky.horizon + 2 + 8 * take()
    bh = 10 + 16 * take()
    btop = base - bh
    wall = _color(np.stack([take(), take(), take()], 1), np.array([120, 80, 60], np.float32), np.array([235, 220, 200], np.float32))
    roof_kind = take()  # < 0.65: gable roof, else flat
    roof_h = 4 + 8 * take()
    roof_col = _color(np.stack([take()] * 3, 1) * np.array([[1.0, 0.6, 0.5]]), np.array([90, 30, 25], np.float32), np.array([200, 90, 60], np.float32))
    win_p = take()
    door_u = take()
    lit = take()
    take(), take()
    bx0_, bx1_ = bx0[:, None, None], (bx0 + bw)[:, None, None]
    body = on[:, None, None] & (xx >= bx0_) & (xx < bx1_) & (yy >= btop[:, None, None]) & (yy < base[:, None, None])
    c.paint(body, _col(wall * light), "building")
    # gable: triangle above the body; flat: a thin slab
    cxr = (bx0 + bw / 2)[:, None, None]
    rel = (btop[:, None, None] - yy) / roof_h[:, None, None]  # 0 at eave, 1 at ridge
    half = (bw / 2 + 1.5)[:, None, None] * (1 - rel)
    gable = (roof_kind < 0.65)[:, None, None] & (rel >= 0) & (rel < 1) & (np.abs(xx - cxr + 0.5) <= half)
    flat = (roof_kind >= 0.65)[:, None, None] & (yy >= (btop - 2)[:, None, None]) & (yy < btop[:, None, None]) & (xx >= bx0_ - 1) & (xx < bx1_ + 1)
    c.paint(on[:, None, None] & (gable | flat), _col(roof_col * light), "roof")
    # windows: a grid inside the wall, above the door line
    period = np.where(win_p < 0.5, 6.0, 7.0)[:, None, None]
    wx = np.mod(xx - bx0_ - 2, period)
    wy = np.mod(yy - btop[:, None, None] - 2, period)
    win = body & (wx < 3) & (wy < 3) & (xx >= bx0_ + 2) & (xx < bx1_ - 2) & (yy < base[:, None, None] - 7)
    night_glow = ((tod == 3) | (tod == 2)) & (lit < 0.7)
    wcol = np.where(night_glow[:, None], np.array([[250, 220, 120]], np.float32), np.array([[60, 90, 130]], np.float32) * light)
    c.paint(win, _col(wcol), "window")
    dx0 = (bx0 + 2 + (bw - 8) * door_u)[:, None, None]
    door = body & (xx >= dx0) & (xx < dx0 + 4) & (yy >= base[:, None, None] - 7)
    c.paint(door, _col(np.array([[80, 45, 25]], np.float32) * light), "door")


def _tree(c: _Canvas, take: _Draws, sky: _Sky) -> None:
    """One tree slot: a trunk and a round or conifer crown (sometimes autumn-coloured), in front of buildings."""
    xx, yy, light = c.xx, c.yy, sky.light
    on = take() < 0.55
    tx = 64 * take()
    tbase = sky.horizon + 3 + 20 * take()
    th = 10 + 16 * take()
    conifer = take() < 0.4
    cw = 4 + 5 * take()
    tcol = _color(np.stack([take(), take(), take()], 1), np.array([20, 60, 15], np.float32), np.array([90, 150, 50], np.float32))
    autumn = take() < 0.15
    tcol = np.where(autumn[:, None], np.array([[200, 110, 30]], np.float32), tcol) * light[:, :]
    take()
    tx_, tb_, th_ = tx[:, None, None], tbase[:, None, None], th[:, None, None]
    trunk = on[:, None, None] & (np.abs(xx - tx_) <= 1) & (yy < tb_) & (yy >= tb_ - th_ * 0.4)
    c.paint(trunk, _col(np.array([[90, 60, 30]], np.float32) * light), "tree")
    ctop = tb_ - th_
    # round crown: ellipse in the upper part; conifer: triangle
    ex = (xx - tx_) / cw[:, None, None]
    ey = (yy - (ctop + th_ * 0.35)) / (th_ * 0.38)
    round_c = ~conifer[:, None, None] & (ex**2 + ey**2 <= 1)
    rel = (yy - ctop) / (th_ * 0.8)
    cone = conifer[:, None, None] & (rel >= 0) & (rel <= 1) & (np.abs(xx - tx_) <= cw[:, None, None] * rel)
    c.paint(on[:, None, None] & (round_c | cone), _col(tcol), "tree")


def render(seed: int = 0, start: int = 0, n: int = 64) -> SceneBatch:
    """Render scenes start..start+n-1 of the stream `seed`."""
    if n <= 0:
        return SceneBatch(np.zeros((0, SIZE, SIZE, 3), np.uint8), np.zeros((0, SIZE, SIZE), np.uint8))
    c = _Canvas(n)
    take = _Draws(np.stack([_params(seed, start + i) for i in range(n)]).astype(np.float32))
    sky = _sky(c, take)
    for _ in range(MAX_CLOUDS):
        _cloud(c, take, sky)
    _ground(c, sky)
    for _ in range(MAX_BUILDINGS):
        _building(c, take, sky)
    for _ in range(MAX_TREES):
        _tree(c, take, sky)
    img, lab = c.resolve()
    # pixel noise, deterministic per image
    img += np.stack([_rng(seed, start + i, 1).normal(0, 3.0, (SIZE, SIZE, 1)).astype(np.float32) for i in range(n)])
    return SceneBatch(np.clip(img + 0.5, 0, 255).astype(np.uint8), lab)


def stream(seed: int, n: int, batch: int = 256):
    """Yield `SceneBatch`es covering scenes 0..n-1 of stream `seed`."""
    for s in range(0, n, batch):
        yield render(seed, s, min(batch, n - s))
