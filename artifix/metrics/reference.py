"""Reference ("real") data for the metrics: image folders, image arrays, statistics files, a profile's own images.

`load_real(real, extractor, ...)` returns `RealStats`: float64 feature moments (FD), the float32
features themselves (KID) and an SWD sample. Sources:

- None: the reference images of the default generator's profile (`profiles.default_profile`): for the
  bundled example its held-out procedural scenes (`artifix.example.model.reference_scenes`), rendered on demand;
- a folder of .png/.jpg/.jpeg/.bmp/.webp images (searched recursively, sorted by relative path, converted
  to RGB); all images must have one size unless `real_resize` is set (then each is resized to the first
  image's size with PIL bicubic);
- a .npz (or .npy) uint8 array, NHWC or NCHW (a .npz with several arrays must name it `images`);
- a statistics .npz written by `save_stats` (or found in the cache): used as is;
- a StyleGAN `dataset_tool` .zip archive, a pytorch-fid / clean-fid `mu`/`sigma` .npz, and per-class
  selection (`class_id`) by `dataset.json` labels in a zip or beside a folder: see `formats.py`.

Statistics are cached in `<cache>/metrics/real-<key>.npz`, written atomically, where key is a SHA-256
of the data's content (pixels of a profile's images, bytes of every file, bytes of the array) + the
extractor's fingerprint (network, weights hash, resize filter, preprocessing version) + the sample
count and SWD settings; never a user-chosen name.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import defaults
from ..errors import UserError
from ..io import atomic_path, sha256_json
from ..profiles import default_profile
from . import formats
from .extractor import Extractor, as_uint8_nhwc
from .fd import Moments
from .swd import SWDSet

STATS_VERSION = 1
STATS_KEY = "artifix_stats"
REAL_PATCH_SEED = 0  # SWD patch centres of reference images (fixed, so cached descriptors stay valid)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
BATCH = 64


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache folder: `cache`, else $ARTIFIX_CACHE, else the `cache` option (relative to the working dir).

    The variable and the default are the `cache` option's (`defaults`), the ones `config.resolve` reads for commands."""
    opt = defaults.option("run", "cache")
    return Path(cache or (opt.env and os.environ.get(opt.env)) or opt.default).expanduser()


@dataclass
class RealStats:
    """Reference statistics in one feature space."""

    moments: Moments
    features: np.ndarray | None  # float32 (M, d): KID
    swd: SWDSet | None
    fingerprint: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.moments.n

    @property
    def tag(self) -> str:
        return str(self.fingerprint.get("tag", ""))


# --------------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """Where reference images come from: a description, a content hash, and a batch iterator."""

    describe: dict[str, Any]
    content: Callable[[], str]
    batches: Callable[[], Iterator[np.ndarray]]
    count: int


def _profile_source(n: int) -> Source:
    """The default profile's reference images (`real=None`); a UserError when it brings none."""
    ref = default_profile().reference
    if ref is None:
        raise UserError("no reference data: pass --real (an image folder, a .npz/.npy uint8 array or a statistics .npz).")

    def batches() -> Iterator[np.ndarray]:
        yield from ref.batches(n)

    def content() -> str:
        h = hashlib.sha256()
        for b in batches():
            h.update(b.tobytes())
        return h.hexdigest()

    return Source({**ref.describe, "n": n}, content, batches, n)


@contextmanager
def _unreadable_npz(path: Path, what: str, fix: str) -> Iterator[None]:
    """Turn numpy's errors on a truncated or corrupt file into one UserError sentence (UserErrors pass through)."""
    try:
        yield
    except UserError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise UserError(f"{path} is not a readable {what} (truncated or corrupt: {type(e).__name__}); {fix}.") from None


def _load_array(path: Path) -> np.ndarray:
    """The uint8 image array inside a .npy/.npz file (UserError when unreadable or not an image array)."""
    with _unreadable_npz(path, ".npy/.npz file", "re-create it with np.savez(path, images=uint8_array)"):
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                if not keys:
                    raise UserError(f"{path} holds no arrays; save images with np.savez(path, images=uint8_array).")
                key = "images" if "images" in keys else keys[0] if len(keys) == 1 else None
                if key is None:
                    raise UserError(f"{path} holds several arrays ({', '.join(keys[:6])}); name the image array 'images'.")
                arr = z[key]
    return arr


def _array_source(path: Path | np.ndarray, n: int | None) -> Source:
    """Images from a .npz/.npy file, or an in-memory uint8 array (N, H, W, C) / (N, C, H, W)."""
    arr = path if isinstance(path, np.ndarray) else _load_array(path)
    if isinstance(path, np.ndarray):
        path = Path("<array>")
    if arr.ndim != 4:
        raise UserError(f"{path} must hold images as a 4-D uint8 array (N, H, W, C) or (N, C, H, W); got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        raise UserError(f"{path} holds {arr.dtype} values; the reference array must be uint8 in [0, 255].")
    count = arr.shape[0] if n is None else min(n, arr.shape[0])
    as_uint8_nhwc(arr[:1], what=str(path))  # validates the layout early

    def batches() -> Iterator[np.ndarray]:
        for s in range(0, count, BATCH):
            yield as_uint8_nhwc(np.asarray(arr[s : s + BATCH]), what=str(path))

    def content() -> str:
        h = hashlib.sha256(json.dumps([list(arr.shape), str(arr.dtype)]).encode())
        for s in range(0, count, 1024):
            h.update(np.ascontiguousarray(arr[s : s + 1024]).tobytes())
        return h.hexdigest()

    return Source({"kind": "array", "path": str(path), "n": count}, content, batches, count)


def _image_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        others = sum(1 for p in folder.rglob("*") if p.is_file())
        raise UserError(f"No images ({'/'.join(IMAGE_EXTS)}) in the reference folder {folder}"
                        + (f" (it holds {others} other files)" if others else " (it is empty)")
                        + "; add the images or point --real at another folder.")
    return files


def _open_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), resample=Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path} is not a readable image ({type(e).__name__}); remove it from the reference folder.") from None


def _folder_source(folder: Path, n: int | None, resize: bool, class_id: int | None = None) -> Source:
    files = _image_files(folder)
    if class_id is not None:  # dataset.json labels beside the images, keyed by relative path
        rel = {p.relative_to(folder).as_posix(): p for p in files}
        files = [rel[r] for r in formats.select_class(list(rel), formats.folder_labels(folder), class_id, str(folder))]
    if n is not None:
        files = files[:n]
    def header(p: Path) -> tuple[int, int]:  # headers only: cheap, and catches bad files and mixed sizes before any extraction
        try:
            with Image.open(p) as im:
                return im.size[1], im.size[0]
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise UserError(f"{p} is not a readable image ({type(e).__name__}); remove it from the reference folder.") from None

    target, mixed = formats.check_sizes(header, files, resize, str(folder))

    def batches() -> Iterator[np.ndarray]:
        for s in range(0, len(files), BATCH):
            yield np.stack([_open_rgb(p, target) for p in files[s : s + BATCH]])

    def content() -> str:
        h = hashlib.sha256(json.dumps({"resize_to": target}).encode())
        for p in files:
            h.update(p.relative_to(folder).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()

    return Source({"kind": "folder", "path": str(folder), "n": len(files), "resized": bool(resize and mixed),
                   **({"class": class_id} if class_id is not None else {})}, content, batches, len(files))


def _zip_source(path: Path, n: int | None, resize: bool, class_id: int | None) -> Source:
    z = formats.zip_images(path, n, resize, class_id)
    describe = {"kind": "zip", "path": str(path), "n": len(z.names), "resized": z.resized,
                **({"class": class_id} if class_id is not None else {})}
    return Source(describe, z.content, z.batches, len(z.names))


def _mu_sigma_stats(path: Path, extractor: Extractor) -> RealStats:
    """RealStats holding only the Gaussian of a pytorch-fid / clean-fid file (FD only), in the Inception space."""
    formats.check_mu_sigma_space(path, extractor.name, extractor.dim)
    mu, sigma, n = formats.read_mu_sigma(path)
    fp = {**extractor.fingerprint(), "from": "mu_sigma"}
    return RealStats(formats.GaussianMoments(mu, sigma, n), None, None, fp, formats.mu_sigma_source(path))


def _is_stats_file(path: Path) -> bool:
    if path.suffix.lower() != ".npz":
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return STATS_KEY + ".npy" in z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False  # _load_array reports the corruption


# --------------------------------------------------------------------------------------------- statistics files


def save_stats(path: str | os.PathLike, stats: RealStats) -> None:
    """Write reference statistics to an .npz file atomically (moments, features, SWD sample, fingerprint)."""
    arrays: dict[str, np.ndarray] = {STATS_KEY: np.array(STATS_VERSION, np.int64),
                                     "fingerprint": np.array(json.dumps(stats.fingerprint, sort_keys=True)),
                                     "source": np.array(json.dumps(stats.source, sort_keys=True, default=str)),
                                     **stats.moments.to_arrays()}
    if stats.features is not None:
        arrays["features"] = np.asarray(stats.features, np.float32)
    if stats.swd is not None:
        arrays.update(stats.swd.to_arrays())
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_stats(path: str | os.PathLike) -> RealStats:
    """Read a statistics file written by `save_stats` (UserError when truncated, corrupt or not ours)."""
    path = Path(path)
    with _unreadable_npz(path, "artifix statistics file", "delete it and recompute"):
        with np.load(path, allow_pickle=False) as z:
            if STATS_KEY not in z.files:
                raise UserError(f"{path} is not an artifix statistics file.")
            if int(z[STATS_KEY]) != STATS_VERSION:
                raise UserError(f"{path} is an artifix statistics file of version {int(z[STATS_KEY])}; "
                                f"this artifix reads version {STATS_VERSION}: recompute it.")
            files = set(z.files)
            stats = RealStats(
                moments=Moments.from_arrays(z),
                features=np.asarray(z["features"]) if "features" in files else None,
                swd=SWDSet.from_arrays(z) if "swd_meta" in files else None,
                fingerprint=json.loads(str(z["fingerprint"])),
                source=json.loads(str(z["source"])),
            )
    return stats


def _check_fingerprint(stats: RealStats, extractor: Extractor, path: Path) -> None:
    want = extractor.fingerprint()
    got = stats.fingerprint
    if got.get("tag") != want["tag"]:
        raise UserError(f"{path} holds statistics in feature space '{got.get('name', got.get('tag'))}', not "
                        f"'{extractor.name}'; pass --features {got.get('name', got.get('tag'))} or recompute the statistics.")
    diffs = [k for k in ("weights_sha256", "resize", "preprocess", "size", "range") if got.get(k) != want.get(k)]
    if diffs:
        raise UserError(f"{path} was computed with different {', '.join(diffs)} for '{extractor.name}' features; "
                        "recompute the statistics with this version.")


# --------------------------------------------------------------------------------------------- main entry


def compute_stats(batches: Iterator[np.ndarray], extractor: Extractor, *, features: bool = True,
                  swd_n: int = 0, swd_seed: int = REAL_PATCH_SEED,
                  progress: Callable[[str], None] | None = None) -> RealStats:
    """Statistics of a stream of uint8 image batches in `extractor`'s feature space."""
    moments = Moments(extractor.dim) if extractor.dim else None
    feats: list[np.ndarray] = []
    swd = SWDSet(swd_seed, swd_n) if swd_n > 0 else None
    for b in batches:
        b = as_uint8_nhwc(b)
        f = extractor(b)
        if moments is None:
            moments = Moments(f.shape[1])
        moments.update(f)
        if features:
            feats.append(f.astype(np.float32))
        if swd is not None:
            swd.add(b)
        if progress:
            progress(f"reference features: {moments.n}")
    if moments is None or moments.n == 0:
        raise UserError("The reference data holds no images.")
    return RealStats(moments, np.concatenate(feats) if features else None, swd, extractor.fingerprint())


def load_real(real: str | os.PathLike | np.ndarray | RealStats | None, extractor: Extractor, *, n: int | None = None,
              cache: str | os.PathLike | None = None, swd_n: int | None = None, resize: bool | None = None,
              use_cache: bool = True, progress: Callable[[str], None] | None = None,
              class_id: int | None = None) -> RealStats:
    """Reference statistics for `real` in `extractor`'s feature space, from the cache when possible.

    n: how many reference images (default: all of a folder/array; used for the default profile's images).
    class_id: only the images of this class (dataset.json labels of a zip archive or folder).
    swd_n: how many reference images to keep for SWD (default: the `swd_n` option; 0 = none).
    """
    if isinstance(real, RealStats):
        return real
    swd_n = int(defaults.get("metrics", "swd_n") if swd_n is None else swd_n)
    resize = bool(defaults.get("metrics", "real_resize") if resize is None else resize)
    if real is None or str(real) == "":
        if n is None:
            n = int(defaults.get("sample", "n"))
        if n < 2:
            raise UserError(f"The reference needs at least 2 images, got real_n={n}.")
        src = _profile_source(int(n))
    elif isinstance(real, np.ndarray):
        src = _array_source(real, n)
    else:
        path = Path(real).expanduser()
        if not path.exists():
            raise UserError(f"Reference data not found: {path} (give an image folder, a .zip archive, a .npz/.npy uint8 array "
                        "or a statistics .npz).")
        _check_class(path, class_id)
        if path.is_dir():
            src = _folder_source(path, n, resize, class_id)
        elif formats.is_zip_archive(path):
            src = _zip_source(path, n, resize, class_id)
        elif _is_stats_file(path):
            stats = load_stats(path)
            _check_fingerprint(stats, extractor, path)
            stats.source.setdefault("path", str(path))
            return stats
        elif formats.is_mu_sigma(path):
            return _mu_sigma_stats(path, extractor)
        elif path.suffix.lower() in (".npz", ".npy"):
            src = _array_source(path, n)
        else:
            raise UserError(f"Reference {path} is neither a folder of images, a .zip archive of images, a .npz/.npy array "
                        "nor a statistics .npz (artifix's, or pytorch-fid/clean-fid mu/sigma).")
    ident = {"data": src.content(), "n": src.count, "features": extractor.fingerprint(), "version": STATS_VERSION}

    def cached(k: int) -> Path:
        key = sha256_json({**ident, "swd": {"n": k, "seed": REAL_PATCH_SEED}})
        return cache_dir(cache) / "metrics" / f"real-{key[:24]}.npz"

    path = cached(swd_n)
    # without SWD, the entry of the same data with the default SWD sample holds the same features and moments
    candidates = [path] + ([cached(int(defaults.get("metrics", "swd_n")))] if swd_n == 0 else [])
    for hit in candidates if use_cache else []:
        if not hit.is_file():
            continue
        try:
            stats = load_stats(hit)
        except UserError:
            continue  # a damaged cache entry is recomputed and replaced
        if hit != path:
            stats.swd = None
        stats.source = {**src.describe, "cache": str(hit)}
        return stats
    stats = compute_stats(src.batches(), extractor, features=True, swd_n=swd_n, progress=progress)
    stats.source = dict(src.describe)
    if use_cache:
        save_stats(path, stats)
        stats.source["cache"] = str(path)
    return stats


def _check_class(path: Path, class_id: int | None) -> None:
    if class_id is not None and not (path.is_dir() or formats.is_zip_archive(path)):
        raise UserError(f"--real-class selects images by dataset.json labels, which only a folder or a zip archive has, "
                        f"not {path}; drop --real-class.")


def check_real(real: str | os.PathLike | None, *, n: int | None = None, resize: bool | None = None,
               features: str | None = None, class_id: int | None = None) -> None:
    """Validate reference data cheaply (UserError) before any sampling or feature extraction.

    A folder's or zip archive's image headers (readable, one size unless `resize`; the class's labels when
    `class_id`), an array file's zip directory and array header (present, 4-D uint8), a statistics file's
    readability, a mu/sigma file's shapes and, given `features`, its feature space; nothing is extracted or written.
    """
    if real is None or str(real) == "":
        return
    path = Path(real).expanduser()
    if not path.exists():
        raise UserError(f"Reference data not found: {path} (give an image folder, a .zip archive, a .npz/.npy uint8 array "
                        "or a statistics .npz).")
    resize = bool(defaults.get("metrics", "real_resize") if resize is None else resize)
    _check_class(path, class_id)
    if path.is_dir():
        _folder_source(path, n, resize, class_id)
    elif formats.is_zip_archive(path):
        formats.zip_images(path, n, resize, class_id)
    elif _is_stats_file(path):
        load_stats(path)
    elif formats.is_mu_sigma(path):
        name = str(features or defaults.get("metrics", "features"))
        formats.read_mu_sigma(path)
        if name != formats.MU_SIGMA_SPACE:
            formats.check_mu_sigma_space(path, name, 0)
    elif path.suffix.lower() in (".npz", ".npy"):
        shape, dtype = _array_header(path)
        if len(shape) != 4:
            raise UserError(f"{path} must hold images as a 4-D uint8 array (N, H, W, C) or (N, C, H, W); got shape {shape}.")
        if dtype != np.uint8:
            raise UserError(f"{path} holds {dtype} values; the reference array must be uint8 in [0, 255].")
    else:
        raise UserError(f"Reference {path} is neither a folder of images, a .zip archive of images, a .npz/.npy array "
                        "nor a statistics .npz (artifix's, or pytorch-fid/clean-fid mu/sigma).")


def _array_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the image array in a .npy/.npz file, read from the zip directory and the array header."""
    with _unreadable_npz(path, ".npy/.npz file", "re-create it with np.savez(path, images=uint8_array)"):
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            return tuple(arr.shape), arr.dtype
        with zipfile.ZipFile(path) as zf:
            keys = [k[:-4] for k in zf.namelist() if k.endswith(".npy")]
            if not keys:
                raise UserError(f"{path} holds no arrays; save images with np.savez(path, images=uint8_array).")
            key = "images" if "images" in keys else keys[0] if len(keys) == 1 else None
            if key is None:
                raise UserError(f"{path} holds several arrays ({', '.join(keys[:6])}); name the image array 'images'.")
            with zf.open(key + ".npy") as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
        return tuple(shape), np.dtype(dtype)
