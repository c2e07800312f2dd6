"""Sliced Wasserstein distance on Laplacian-pyramid patches (the ProGAN protocol), seeded and vectorised (numpy).

Protocol (Karras et al. 2018): each image (float, [0, 255]) is split into a Laplacian pyramid whose
levels go from full resolution down to 16 px (5x5 binomial filter, mirror borders); at each level 128
random 7x7 patches per image are cut (centres at least 3 px from the border) and flattened to 147-d
descriptors; each set's descriptors are normalised per colour channel (mean and std over all its
patches at that level); the distance at a level is the mean over 4 x 128 random unit directions of the
mean |difference| of the two sorted projections; it is multiplied by 1e3 and averaged over levels.

Seeds: patch centres of image i at level l are a pure function of (seed, l, i) (a counter-based hash),
and the directions of level l a function of (seed, l); so results do not depend on batch sizes, and two
sets drawn on the same seeds (before / after repair) are cut at the same places: a paired comparison.

Memory: an `SWDSet` keeps, for each of its (at most `swd_n`) images, whichever is smaller: the uint8
image (H*W*3 bytes) or its descriptors (levels * 128 * 147 * 4 bytes = levels * 75,264 bytes; 64 px has
3 levels: 226 KB). Descriptors are built one level at a time when the distance is computed, so the
peak is one level's descriptors of each set (75 KB per image and set) plus one 128-direction block of
projections (128 * 128 * 4 = 64 KB per image and set; bootstrap replicates keep one more such block of
the reference). Example: 2048 images of 64 px per set: 25 MB stored, about 300 MB at the peak.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import UserError
from ..progress import Progress
from .fd import lapack_single_thread

PATCH = 7
PATCHES_PER_IMAGE = 128
DIRS_PER_REPEAT = 128
REPEATS = 4
MIN_RES = 16
DESC_DIM = 3 * PATCH * PATCH
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0])
GAUSS = (np.outer(_BINOMIAL, _BINOMIAL) / 256.0).astype(np.float32)


def num_levels(h: int, w: int) -> int:
    """Pyramid levels for an h x w image: resolutions r, r/2, ... while >= 16 px (r = min(h, w))."""
    r, n = min(h, w), 0
    while r >= MIN_RES:
        n += 1
        r //= 2
    if n == 0:
        raise UserError(f"SWD needs images of at least {MIN_RES}x{MIN_RES} pixels, got {h}x{w}; drop 'swd' from --metrics.")
    return n


# --------------------------------------------------------------------------------------------- pyramid


_TAPS = (_BINOMIAL / 16.0).astype(np.float32)


def _down_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """5-tap binomial blur along `dim` with mirror borders, keeping every second pixel (the taps run only there)."""
    h = x.shape[dim]
    ho = (h + 1) // 2
    p = torch.cat([x.narrow(dim, 2, 1), x.narrow(dim, 1, 1), x, x.narrow(dim, h - 2, 1), x.narrow(dim, h - 3, 1)], dim)

    def tap(t: int) -> torch.Tensor:
        return p.narrow(dim, t, 2 * ho - 1)[(slice(None),) * dim + (slice(None, None, 2),)]

    return ((tap(0) + tap(4)) + (tap(1) + tap(3)) * 4.0 + tap(2) * 6.0) * (1.0 / 16.0)


def _up_axis(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Zeros inserted between pixels along `dim`, then the 5-tap blur with gain 2 (mirror borders), cropped to `size`:
    computed polyphase (even outputs (x[i-1] + 6 x[i] + x[i+1]) / 8, odd ones (x[i] + x[i+1]) / 2)."""
    h = x.shape[dim]
    p = torch.cat([x.narrow(dim, 1, 1), x, x.narrow(dim, h - 1, 1)], dim)  # the zero-inserted array's mirror borders
    left, mid, right = p.narrow(dim, 0, h), p.narrow(dim, 1, h), p.narrow(dim, 2, h)
    even = (left + right + mid * 6.0) * 0.125
    odd = (mid + right) * 0.5
    out = torch.stack([even, odd], dim + 1)
    shape = list(x.shape)
    shape[dim] = 2 * h
    return out.reshape(shape).narrow(dim, 0, size)


def _down_t(x: torch.Tensor) -> torch.Tensor:
    return _down_axis(_down_axis(x, 2), 3)


def _up_t(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return _up_axis(_up_axis(x, 2, int(shape[0])), 3, int(shape[1]))


def pyr_down(x: np.ndarray) -> np.ndarray:
    """Blur with the 5x5 binomial filter (mirror borders) and keep every second pixel."""
    with torch.inference_mode():
        return _down_t(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


def pyr_up(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Insert zeros between pixels, blur with 4x the filter, crop to `shape` (h, w)."""
    with torch.inference_mode():
        return _up_t(torch.from_numpy(np.ascontiguousarray(x, np.float32)), shape).numpy()


def _pyramid_t(x: torch.Tensor, levels: int, only: int | None = None) -> list[torch.Tensor | None]:
    """Laplacian levels of float32 NCHW `x` (torch); with `only`, just that level is computed (others None)."""
    top = levels if only is None else min(only + 2, levels)
    gauss = [x]
    for _ in range(1, top):
        gauss.append(_down_t(gauss[-1]))
    want = range(levels) if only is None else [only]
    out: list[torch.Tensor | None] = [None] * levels
    for i in want:
        out[i] = gauss[i] - _up_t(gauss[i + 1], gauss[i].shape[2:]) if i < levels - 1 else gauss[i]
    return out


def laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    """Band-pass levels (float32 NCHW) from full resolution down, the last being the low-pass residual."""
    with torch.inference_mode():
        return [t.numpy() for t in _pyramid_t(torch.from_numpy(np.ascontiguousarray(x, np.float32)), levels)]


# --------------------------------------------------------------------------------------------- seeded choices

_U64 = 0xFFFFFFFFFFFFFFFF


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 step on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hashed_ints(seed: int, level: int, axis: int, index: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """(N, 128) integers in [lo, hi), a pure function of (seed, level, axis, image index, patch number)."""
    h = _mix(np.array([int(seed) & _U64], np.uint64))
    h = _mix(h ^ np.uint64((level << 1) | axis))
    h = _mix(h ^ np.asarray(index, np.uint64)[:, None])
    h = _mix(h ^ np.arange(PATCHES_PER_IMAGE, dtype=np.uint64)[None, :])
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return lo + np.minimum((u * (hi - lo)).astype(np.int64), hi - lo - 1)


def patch_centres(seed: int, level: int, index: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Patch centres (y, x), each (N, 128), for images `index` at a level of size h x w."""
    r = PATCH // 2
    return _hashed_ints(seed, level, 0, index, r, h - r), _hashed_ints(seed, level, 1, index, r, w - r)


def directions(seed: int, level: int) -> np.ndarray:
    """(147, 512) random unit directions for a level (the same for both sets compared)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(level), 0x5D]))
    d = rng.standard_normal((DESC_DIM, REPEATS * DIRS_PER_REPEAT))
    return (d / np.sqrt((d * d).sum(axis=0, keepdims=True))).astype(np.float32)


def descriptors(images: np.ndarray, index: np.ndarray, seed: int, levels: int,
                only: int | None = None) -> list[np.ndarray]:
    """Patch descriptors of uint8 NHWC images: per level a float32 (N * 128, 147) array (rows image-major).

    `index` holds the images' positions in their stream (they seed the patch centres). With `only`,
    just that level is returned (as a one-element list).
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    out = []
    n = images.shape[0]
    r = PATCH // 2
    bidx = torch.arange(n)[:, None]
    with torch.inference_mode():
        pyr = _pyramid_t(x, levels, only)
        for lvl in range(levels) if only is None else [only]:
            a = pyr[lvl].contiguous()
            ys, xs = patch_centres(seed, lvl, index, a.shape[2], a.shape[3])
            windows = a.unfold(2, PATCH, 1).unfold(3, PATCH, 1)  # (N, C, H-6, W-6, 7, 7): a view, no copy
            p = windows[bidx, :, torch.from_numpy(ys - r), torch.from_numpy(xs - r)]  # (N, 128, C, 7, 7), one gather
            out.append(p.reshape(n * PATCHES_PER_IMAGE, DESC_DIM).numpy())
    return out


def normalise(desc: np.ndarray) -> np.ndarray:
    """Per colour channel: subtract the mean and divide by the std over all patches and pixels."""
    m, sd = channel_stats(*channel_sums(desc))
    d = desc.reshape(desc.shape[0], 3, PATCH * PATCH)
    return ((d - m[None, :, None]) / sd[None, :, None]).reshape(desc.shape).astype(np.float32)


def channel_sums(desc: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per image (rows grouped by 128) and colour channel: sum and sum of squares, float64 (n, 3) each.

    Chunks of `chunk` images are summed on the sort threads (each chunk's sums are the same whichever thread takes it).
    """
    d = desc.reshape(-1, PATCHES_PER_IMAGE, 3, PATCH * PATCH)
    s1 = np.zeros((d.shape[0], 3))
    s2 = np.zeros((d.shape[0], 3))

    def sums(images: slice) -> None:
        for i in range(images.start, min(images.stop, d.shape[0]), chunk):
            j = min(i + chunk, images.stop)
            x = d[i:j].astype(np.float64)
            s1[i:j] = x.sum(axis=(1, 3))
            s2[i:j] = np.einsum("nkcp,nkcp->nc", x, x)

    _map_rows(d, sums)
    return s1, s2


def channel_stats(s1: np.ndarray, s2: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 0) per channel from per-image sums, optionally counting image i weights[i] times."""
    w = np.ones(s1.shape[0]) if weights is None else np.asarray(weights, np.float64)
    cnt = w.sum() * PATCHES_PER_IMAGE * PATCH * PATCH
    m = (w @ s1) / cnt
    sd = np.sqrt(np.maximum((w @ s2) / cnt - m * m, 0.0))
    sd[sd == 0] = 1.0
    return m, sd


def _projector(dirs: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d', k) with normalise(x) @ dirs == x @ d' - k: the normalisation folded into the directions."""
    inv = np.repeat(1.0 / std, PATCH * PATCH)  # (147,)
    dp = dirs.astype(np.float64) * inv[:, None]
    k = np.repeat(mean, PATCH * PATCH) @ dp
    return dp.astype(np.float32), k.astype(np.float32)


_POOL: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool there instead of waiting forever."""
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _map_rows(p: np.ndarray, fn: Callable[[slice], None]) -> None:
    """Call fn on blocks of rows of `p` that together cover it, split over threads (numpy's sorts and ufuncs release
    the GIL), or once on all rows when `p` is small or there is one core."""
    global _POOL
    workers = max(1, min(4, os.cpu_count() or 1))
    if workers == 1 or p.shape[0] < 2 or p.size < 1 << 16:
        fn(slice(0, p.shape[0]))
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artifix-sort")
    step = -(-p.shape[0] // workers)
    list(_POOL.map(lambda s: fn(slice(s, s + step)), range(0, p.shape[0], step)))


def _project(desc: np.ndarray, dp: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Unshifted projections, one row per direction: (desc @ d').T, written into `out` when given.

    The GEMM is torch's (MKL in the CPU wheel: about twice OpenBLAS' sgemm for this shape here), into a C-contiguous
    (directions, rows) array; a reused `out` also saves the page faults of a fresh 32 MB array per block.
    """
    desc, dp = np.asarray(desc, np.float32), np.asarray(dp, np.float32)  # no copy for the float32 arrays of this module
    p = np.empty((dp.shape[1], desc.shape[0]), np.float32) if out is None else out
    with torch.inference_mode():
        torch.mm(torch.from_numpy(dp).T, torch.from_numpy(desc).T, out=torch.from_numpy(p))
    return p


def _sorted_projections(desc: np.ndarray, dp: np.ndarray, k: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Sorted normalised projections, one row per direction: sort((desc @ d' - k).T), written into `out` when given."""
    p = _project(desc, dp, out)
    _map_rows(p, partial(_sort_rows, p, k, None, None))
    return p


def _sort_rows(p: np.ndarray, k: np.ndarray, real_sorted: np.ndarray | None, means: np.ndarray | None,
               rows: slice) -> None:
    """Rows `rows` of projections p, `_SORT_ROWS` at a time while they are in cache: sort, subtract the shift k (after
    the sort: rounding x - k is monotonic in x, so the bits equal those of sorting x - k) and, with `real_sorted`,
    write mean |p - real_sorted| per row into `means` (p then holds |p - real_sorted|)."""
    for r0 in range(rows.start, min(rows.stop, p.shape[0]), _SORT_ROWS):
        rs = slice(r0, min(r0 + _SORT_ROWS, rows.stop, p.shape[0]))
        blk = p[rs]
        blk.sort(axis=1)
        blk -= k[rs, None]
        if real_sorted is not None and means is not None:
            blk -= real_sorted[rs]
            np.abs(blk, out=blk)
            means[rs] = blk.mean(axis=1, dtype=np.float64)


# --------------------------------------------------------------------------------------------- sample sets


class SWDSet:
    """The SWD sample of one image stream: its first `limit` images (uint8, same size), kept compactly."""

    def __init__(self, seed: int, limit: int) -> None:
        self.seed = int(seed)
        self.limit = int(limit)
        self.n = 0
        self.shape: tuple[int, int] | None = None
        self.levels = 0
        self._images: list[np.ndarray] = []
        self._desc: list[list[np.ndarray]] = []  # per stored chunk, per level
        self.store = ""  # 'images' or 'descriptors'

    def add(self, images: np.ndarray) -> None:
        """Add a uint8 NHWC batch (images beyond `limit` are ignored)."""
        take = min(images.shape[0], self.limit - self.n)
        if take <= 0:
            return
        images = images[:take]
        if self.shape is None:
            self.shape = tuple(images.shape[1:3])
            self.levels = num_levels(*self.shape)
            per_image_desc = self.levels * PATCHES_PER_IMAGE * DESC_DIM * 4
            self.store = "images" if images.shape[1] * images.shape[2] * 3 <= per_image_desc else "descriptors"
        elif tuple(images.shape[1:3]) != self.shape:
            raise UserError(f"SWD needs images of one size; got {self.shape[0]}x{self.shape[1]} and then "
                            f"{images.shape[1]}x{images.shape[2]}.")
        if self.store == "images":
            self._images.append(np.ascontiguousarray(images))
        else:
            self._desc.append(descriptors(images, np.arange(self.n, self.n + take), self.seed, self.levels))
        self.n += take

    def level(self, lvl: int, n: int | None = None) -> np.ndarray:
        """Descriptors (n * 128, 147) float32 of the first `n` images at level `lvl`."""
        n = self.n if n is None else min(n, self.n)
        if self.store == "images":
            imgs = np.concatenate(self._images)[:n] if self._images else np.zeros((0, 1, 1, 3), np.uint8)
            out = np.empty((n * PATCHES_PER_IMAGE, DESC_DIM), np.float32)  # filled in place: no second copy at the peak
            for s in range(0, n, 256):
                out[s * PATCHES_PER_IMAGE : min(s + 256, n) * PATCHES_PER_IMAGE] = descriptors(
                    imgs[s : s + 256], np.arange(s, min(s + 256, n)), self.seed, self.levels, only=lvl)[0]
            return out
        else:
            parts = [chunk[lvl] for chunk in self._desc]
        if not parts:
            return np.zeros((0, DESC_DIM), np.float32)
        return np.concatenate(parts)[: n * PATCHES_PER_IMAGE]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._images) + sum(d.nbytes for c in self._desc for d in c)

    # -- persistence inside a statistics file
    def to_arrays(self, prefix: str = "swd_") -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {prefix + "meta": np.array([self.seed, self.limit, self.n], np.int64),
                                      prefix + "store": np.array(self.store)}
        if self.store == "images":
            out[prefix + "images"] = np.concatenate(self._images) if self._images else np.zeros((0, 1, 1, 3), np.uint8)
        elif self.store:
            for lvl in range(self.levels):
                out[prefix + f"level{lvl}"] = self.level(lvl)
            out[prefix + "shape"] = np.array(self.shape, np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str = "swd_") -> "SWDSet":
        seed, limit, n = (int(v) for v in arrays[prefix + "meta"])
        s = cls(seed, limit)
        store = str(arrays[prefix + "store"])
        if store == "images":
            s.add(np.asarray(arrays[prefix + "images"]))
        elif store == "descriptors":
            s.shape = tuple(int(v) for v in arrays[prefix + "shape"])
            s.levels = num_levels(*s.shape)
            s.store, s.n = store, n
            s._desc = [[np.asarray(arrays[prefix + f"level{lvl}"]) for lvl in range(s.levels)]]
        return s


# --------------------------------------------------------------------------------------------- distance


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, dirs: np.ndarray) -> float:
    """Mean over directions of mean |sorted(a.d) - sorted(b.d)| for equally many rows of a and b."""
    if a.shape[0] != b.shape[0]:
        raise ValueError("sliced_wasserstein needs equally many descriptors in both sets")
    total = 0.0
    zero = np.zeros(DIRS_PER_REPEAT, np.float32)
    for s in range(0, dirs.shape[1], DIRS_PER_REPEAT):
        d = np.ascontiguousarray(dirs[:, s : s + DIRS_PER_REPEAT])
        pa = _sorted_projections(a, d, zero[: d.shape[1]])
        pb = _sorted_projections(b, d, zero[: d.shape[1]])
        total += float(np.abs(pa - pb).mean(axis=1, dtype=np.float64).sum())
    return total / dirs.shape[1]


def _channel_projections(desc: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """(3, k, rows) float32: each colour channel's part of the projections, desc[:, c] @ dirs[c] (unnormalised)."""
    pp = PATCH * PATCH
    out = np.empty((3, dirs.shape[1], desc.shape[0]), np.float32)
    for c in range(3):
        np.matmul(dirs[c * pp : (c + 1) * pp].T, desc[:, c * pp : (c + 1) * pp].T, out=out[c])
    return out


# Bootstrap directions handled at once: bounds the replicates' projections to a quarter block. A multiple of the GEMM
# kernels' tiles, so the bits equal those of all 128 at once (a chunk of 5 changed the last bits in a test).
_BOOT_DIR_CHUNK = 32
# Directions of the plain SWD projected and sorted at a time: a quarter block (32 x n x 128 floats per set and the
# reference) instead of a whole one; a divisor of DIRS_PER_REPEAT and a multiple of the GEMM tiles (the same bits).
_PLAIN_DIR_CHUNK = 32
# Rows of the plain SWD sorted, shifted and compared at a time inside a thread: 4 rows of n x 128 projections (1 MB at
# n = 500) stay in the core's cache from the sort to the mean.
_SORT_ROWS = 4


def _replicate_rows(q: np.ndarray, invs: np.ndarray, counts: np.ndarray, shifts: np.ndarray, real_sorted: np.ndarray,
                    means: np.ndarray, rows: slice) -> None:
    """For directions `rows`, one at a time through every replicate b while its channel projections q (3, k, n_img, 128)
    stay in cache: combine them with the resample's 1 / std (invs[b]), repeat each image's block counts[i, b] times,
    sort, shift by shifts[b] and write mean |p - real_sorted| into means[b]."""
    for r in range(rows.start, min(rows.stop, q.shape[1])):
        qr = q[:, r].reshape(3, -1)
        for b in range(invs.shape[0]):
            p = (invs[b] @ qr).reshape(-1, PATCHES_PER_IMAGE)
            p = np.repeat(p, counts[:, b], axis=0).reshape(-1)  # the sort removes the order of the blocks
            p.sort()
            p -= shifts[b, r]
            p -= real_sorted[r]
            np.abs(p, out=p)
            means[b, r] = p.mean(dtype=np.float64)


def _boot_level(desc: np.ndarray, sums: tuple[np.ndarray, np.ndarray], dirs: np.ndarray, real_sorted: np.ndarray,
                counts: np.ndarray) -> np.ndarray:
    """One level's bootstrap replicates of one set (B,): mean over `dirs` of mean |sorted resample - real_sorted|.

    Replicate b takes image i counts[i, b] times and re-normalises with the resample's channel statistics. The
    normalisation only rescales each channel's part of a projection and shifts it, so the three channel projections
    are computed once (one GEMM's worth) and each replicate combines them (x @ d' - k = sum_c q_c / std_c - k) instead
    of projecting again; the shift is applied after sorting (it does not change the order). Directions are handled
    `_BOOT_DIR_CHUNK` at a time (each direction's row is sorted on its own), so memory holds a chunk's projections;
    the threads each take part of a chunk's directions through every replicate (`_replicate_rows`).
    """
    csum = dirs.astype(np.float64).reshape(3, PATCH * PATCH, -1).sum(axis=1)  # (3, k): each channel's direction sums
    stats = [channel_stats(*sums, weights=counts[:, b]) for b in range(counts.shape[1])]
    invs32 = np.array([1.0 / std for _, std in stats], np.float32).reshape(-1, 3)  # (B, 3): each resample's 1 / std
    shifts32 = np.array([(mean * (1.0 / std)) @ csum for mean, std in stats], np.float32).reshape(-1, dirs.shape[1])
    row_means = np.zeros((counts.shape[1], dirs.shape[1]))
    n_img = desc.shape[0] // PATCHES_PER_IMAGE
    with lapack_single_thread():  # OpenBLAS called from both threads at once is slower threaded than on one thread each
        for c in range(0, dirs.shape[1], _BOOT_DIR_CHUNK):
            cs = slice(c, c + _BOOT_DIR_CHUNK)
            q = _channel_projections(desc, np.ascontiguousarray(dirs[:, cs]))
            q4 = q.reshape(3, q.shape[1], n_img, PATCHES_PER_IMAGE)
            means = np.zeros((counts.shape[1], q.shape[1]))
            _map_rows(q[0], partial(_replicate_rows, q4, invs32, counts, np.ascontiguousarray(shifts32[:, cs]),
                                    real_sorted[cs], means))
            row_means[:, cs] = means
            del q, q4
    return row_means.mean(axis=1)


def swd_compare(sets: Sequence[SWDSet], real: SWDSet, seed: int, counts: np.ndarray | None = None) -> list[dict[str, Any]]:
    """SWD of each set in `sets` against `real` on the first n = min(sizes) images of every set.

    Returns per set {"value", "levels", "n", "boot"}; `value` is the mean over levels of 1e3 * SWD.
    With `counts` (n, B), "boot" holds B bootstrap replicates: resample r takes image i counts[i, r]
    times (the same resample for every set, so differences are paired); each replicate re-normalises
    the resampled descriptors exactly (SWD is very sensitive to the per-set normalisation) and uses the
    first 128 of the 512 directions, which costs a quarter of the set's side of an SWD; the extra
    direction noise is small next to the sampling noise (it widens the interval slightly).
    """
    n = min([real.n] + [s.n for s in sets])
    if n < 1:
        raise UserError("SWD needs at least one image in each set.")
    shapes = {s.shape for s in [*sets, real]}
    if len(shapes) != 1:
        sizes = " vs ".join(f"{h}x{w}" for h, w in sorted(shapes))
        raise UserError(f"SWD compares images of one size, got {sizes}; resize the reference to the generator's "
                        "size or drop 'swd' from --metrics.")
    levels = real.levels
    B = 0 if counts is None else counts.shape[1]
    if counts is not None and counts.shape[0] != n:
        raise ValueError(f"counts must have {n} rows (one per SWD image)")
    per_level = np.zeros((len(sets), levels))
    boot = np.zeros((len(sets), B))
    bar = Progress(levels * (1 + B), "SWD")
    for lvl in range(levels):
        bar.update()
        dirs = directions(seed, lvl)
        r = real.level(lvl, n)
        r_dp, r_k = _projector(dirs, *channel_stats(*channel_sums(r)))
        descs = [s.level(lvl, n) for s in sets]
        sums = [channel_sums(d) for d in descs]
        projs = [_projector(dirs, *channel_stats(*sm)) for sm in sums]
        # the replicates read the first DIRS_PER_REPEAT directions' sorted real projections: kept, filled block by block
        first_real = np.empty((DIRS_PER_REPEAT, r.shape[0]), np.float32) if B else None
        rs_buf = ps_buf = None  # one block each, reused across blocks and sets
        means = np.zeros(_PLAIN_DIR_CHUNK)
        for c in range(0, dirs.shape[1], _PLAIN_DIR_CHUNK):
            cs = slice(c, c + _PLAIN_DIR_CHUNK)
            rs = _sorted_projections(r, np.ascontiguousarray(r_dp[:, cs]), r_k[cs], out=rs_buf)
            for k, desc in enumerate(descs):
                ps = _project(desc, np.ascontiguousarray(projs[k][0][:, cs]), out=ps_buf)
                # sorted, shifted and compared in place on the threads: no third block of projections at the peak
                _map_rows(ps, partial(_sort_rows, ps, projs[k][1][cs], rs, means))
                per_level[k, lvl] += float(means[: ps.shape[0]].sum())
                ps_buf = ps
            if first_real is not None and c < DIRS_PER_REPEAT:
                first_real[c : c + rs.shape[0]] = rs
            rs_buf = rs
        per_level[:, lvl] /= dirs.shape[1]
        del rs, r, rs_buf, ps_buf  # the replicates read only the sets' descriptors and the first block of the real projections
        d0 = dirs[:, :DIRS_PER_REPEAT]
        if B:
            for k in range(len(descs)):
                boot[k] += _boot_level(descs[k], sums[k], d0, first_real, counts) / levels
                descs[k] = None  # type: ignore[call-overload]  # done with this set at this level
        bar.update(B)
    bar.close()
    per_level *= 1e3
    boot *= 1e3
    return [{"value": float(per_level[k].mean()), "levels": [float(v) for v in per_level[k]], "n": n,
             "boot": boot[k]} for k in range(len(sets))]


def swd(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """SWD between two uint8 NHWC image arrays (all images used); {"value", "levels", "n"}."""
    sa, sb = SWDSet(seed, len(a)), SWDSet(seed, len(b))
    sa.add(np.asarray(a))
    sb.add(np.asarray(b))
    out = swd_compare([sa], sb, seed)[0]
    out.pop("boot")
    return out
