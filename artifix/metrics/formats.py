"""Reference data as users keep it, beyond plain folders and arrays: StyleGAN `dataset_tool` zip archives
(with `dataset.json` class labels), `dataset.json` beside a folder, and pytorch-fid / clean-fid `mu`/`sigma`
statistics files.

- A zip archive: every image member (.png/.jpg/.jpeg/.bmp/.webp, any folder depth), sorted by member name,
  converted to RGB. `dataset.json` at the archive root, `{"labels": [["00000/img00000000.png", 3], ...]}`
  (or `"labels": null`), gives each image its class; `real_class=K` keeps only class K's images, for
  per-class statistics.
- A `mu`/`sigma` .npz (pytorch-fid `--save-stats`, clean-fid's stored statistics): a Gaussian in the
  2048-d pool3 space of the FID Inception-v3 (pt_inception-2015-12-05 weights). artifix cannot recompute
  those features without that network, so such a file is accepted only with `--features inception`
  (which reads the same weights from a local file) and is refused, in one sentence, in any other
  feature space. It gives FD only: KID and SWD need features and images it does not hold. clean-fid's
  "clean" files used the same antialiased PIL bicubic resize as artifix; pytorch-fid's used a bilinear
  resize, so FID against a pytorch-fid file carries that resize difference too (stated in the result's
  `source`).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from ..io import sha256_file
from .fd import Moments

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LABELS_FILE = "dataset.json"
BATCH = 64
MU_SIGMA_SPACE = "inception"  # the only feature space whose mu/sigma files we can compare against
MU_SIGMA_DIM = 2048


# --------------------------------------------------------------------------------------------- labels


def parse_labels(text: str | bytes, where: str) -> dict[str, int] | None:
    """{relative image path: class} from a dataset.json text (None when its labels are null)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where} is not valid JSON ({type(e).__name__}); it must look like "
                        '{"labels": [["00000/img00000000.png", 3], ...]}.') from None
    labels = data.get("labels") if isinstance(data, dict) else "bad"
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
                                               and isinstance(r[1], int) and not isinstance(r[1], bool) for r in labels):
        raise UserError(f"{where} must hold \"labels\": a list of [image path, integer class] pairs (or null).")
    return {name.replace("\\", "/"): int(c) for name, c in labels}


def select_class(names: Sequence[str], labels: dict[str, int] | None, class_id: int | None, where: str) -> list[str]:
    """The names whose label is `class_id` (all names when class_id is None)."""
    if class_id is None:
        return list(names)
    if labels is None:
        raise UserError(f"--real-class {class_id} needs class labels, but {where} has no {LABELS_FILE} labels; "
                        "drop --real-class or add the labels (StyleGAN dataset_tool writes them).")
    missing = [n for n in names if n not in labels]
    if missing:
        raise UserError(f"{where}: {len(missing)} image(s) have no label in {LABELS_FILE} (e.g. {missing[0]}); "
                        "label every image or drop --real-class.")
    keep = [n for n in names if labels[n] == class_id]
    if not keep:
        present = sorted(set(labels.values()))
        raise UserError(f"{where} has no images of class {class_id}; its classes are "
                        f"{', '.join(map(str, present[:20]))}{' ...' if len(present) > 20 else ''}.")
    return keep


def folder_labels(folder: Path) -> dict[str, int] | None:
    """The labels of a folder's dataset.json (None when there is none or its labels are null)."""
    p = folder / LABELS_FILE
    return parse_labels(p.read_bytes(), str(p)) if p.is_file() else None


# --------------------------------------------------------------------------------------------- zip archives


@dataclass
class ZipImages:
    """The image members of a zip archive (after class selection), with their sizes checked."""

    path: Path
    names: list[str]
    target: tuple[int, int] | None  # (h, w) every image is resized to, or None when all share one size
    resized: bool

    def batches(self) -> Iterator[np.ndarray]:
        """uint8 RGB NHWC batches in member-name order."""
        with zipfile.ZipFile(self.path) as zf:
            for s in range(0, len(self.names), BATCH):
                yield np.stack([_read_member(zf, n, self.path, self.target) for n in self.names[s:s + BATCH]])

    def content(self) -> str:
        """SHA-256 of the archive's bytes + the selected members + the resize target."""
        h = hashlib.sha256(sha256_file(self.path).encode())
        h.update(json.dumps({"members": self.names, "resize_to": self.target}).encode())
        return h.hexdigest()


def _read_member(zf: zipfile.ZipFile, name: str, path: Path, size: tuple[int, int] | None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(zf.read(name))) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), resample=Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: member {name} is not a readable image ({type(e).__name__}); remove it from the archive.") from None


def check_sizes(headers: Callable[[Any], tuple[int, int]], names: Sequence[Any], resize: bool,
                where: str) -> tuple[tuple[int, int] | None, bool]:
    """(resize target or None, whether sizes differ) from each image's (height, width) header; UserError on mixed sizes
    without `resize`."""
    sizes: dict[tuple[int, int], Any] = {}
    for n in names:
        hw = headers(n)
        if hw not in sizes:
            sizes[hw] = n
            if len(sizes) > 1 and not resize:
                (h0, w0), n0 = next(iter(sizes.items()))
                raise UserError(f"Reference images differ in size in {where}: {n0} is {w0}x{h0} but {n} is {hw[1]}x{hw[0]}; "
                                "make them one size or pass --real-resize to resize all to the first image's size.")
    first = next(iter(sizes)) if sizes else None
    return (first if resize else None), len(sizes) > 1


def zip_images(path: Path, n: int | None = None, resize: bool = False, class_id: int | None = None) -> ZipImages:
    """Open a dataset_tool-style zip archive: image members sorted by name, class-filtered, first `n`, sizes checked."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path} is not a readable zip archive ({type(e).__name__}); re-create it (e.g. with StyleGAN's dataset_tool).") from None
    with zf:
        members = sorted(i.filename for i in zf.infolist()
                         if not i.is_dir() and Path(i.filename).suffix.lower() in IMAGE_EXTS)
        if not members:
            raise UserError(f"No images ({'/'.join(IMAGE_EXTS)}) in the reference archive {path}; point --real at another file.")
        labels = parse_labels(zf.read(LABELS_FILE), f"{path}:{LABELS_FILE}") if LABELS_FILE in zf.namelist() else None
        names = select_class(members, labels, class_id, str(path))
        if n is not None:
            names = names[:n]

        def header(name: str) -> tuple[int, int]:
            try:
                with zf.open(name) as fh, Image.open(fh) as im:
                    return im.size[1], im.size[0]
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError, zipfile.BadZipFile) as e:
                raise UserError(f"{path}: member {name} is not a readable image ({type(e).__name__}); remove it from the archive.") from None

        target, mixed = check_sizes(header, names, resize, str(path))
    return ZipImages(path, names, target, resized=mixed and resize)


def is_zip_archive(path: Path) -> bool:
    """A .zip file that is not a TorchScript archive."""
    return path.suffix.lower() == ".zip" and path.is_file()


# --------------------------------------------------------------------------------------------- mu / sigma files


class GaussianMoments(Moments):
    """A fixed Gaussian (mean, covariance) standing in for streamed Moments (from a mu/sigma file)."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray, n: int = 0) -> None:
        super().__init__(mu.shape[0])
        self.n = int(n)
        self._mu = np.asarray(mu, np.float64)
        self._sigma = np.asarray(sigma, np.float64)

    @property
    def mean(self) -> np.ndarray:
        return self._mu

    @property
    def cov(self) -> np.ndarray:
        return (self._sigma + self._sigma.T) * 0.5

    def update(self, feats: Any) -> "Moments":  # pragma: no cover - guarded
        raise TypeError("statistics read from a mu/sigma file cannot be updated")


def is_mu_sigma(path: Path) -> bool:
    """True for an .npz holding `mu` and `sigma` arrays (pytorch-fid / clean-fid statistics)."""
    if path.suffix.lower() != ".npz":
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False
    return {"mu.npy", "sigma.npy"} <= names


def read_mu_sigma(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu (d,), sigma (d, d), n or 0) from a mu/sigma file; UserError when unreadable or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            n = int(z["n"]) if "n" in z.files else 0
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise UserError(f"{path} is not a readable mu/sigma statistics file (truncated or corrupt: {type(e).__name__}).") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f"{path} must hold mu of shape (d,) and sigma of shape (d, d); got {mu.shape} and {sigma.shape}.")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{path} holds NaN or Inf in mu or sigma; recompute the statistics.")
    return mu, sigma, n


def check_mu_sigma_space(path: Path, extractor_name: str, dim: int) -> None:
    """Refuse, in one sentence, to compare a mu/sigma file with features of another space."""
    mu, _, _ = read_mu_sigma(path)
    if extractor_name != MU_SIGMA_SPACE or mu.shape[0] != MU_SIGMA_DIM:
        got = f"{mu.shape[0]}-d"
        raise UserError(f"{path} holds pytorch-fid/clean-fid statistics (mu, sigma; {got}), which are FID Inception-v3 "
                        f"pool3 features and can only be compared with features of that same network, not "
                        f"'{extractor_name}'" + (f" ({dim}-d)" if dim else "") + ": pass --features inception --inception-weights PATH, "
                        "or give the reference images instead.")


def mu_sigma_source(path: Path) -> dict[str, Any]:
    """What a result records about a mu/sigma reference."""
    return {"kind": "mu_sigma", "path": str(path), "space": "FID Inception-v3 pool3 (pt_inception-2015-12-05)",
            "note": "pytorch-fid files used a bilinear resize, clean-fid 'clean' files the PIL bicubic resize artifix uses"}
