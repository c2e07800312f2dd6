"""Feature ledger: within a run each distinct image set is rendered once and each feature space extracted once.

A set is keyed by (generator fingerprint, edit, seed, sample indices); its features by that key and the extractor's
fingerprint. Sets without an edit (the generator's own "before" samples) are also cached on disk under
`<cache>/ledger/` (atomic writes; the cache folder is `cache`, else $ARTIFIX_CACHE, else the `cache` option), so a
second repair or gate of the same generator reuses them. Edited sets (after, control) live for the run only.

    led = Ledger(g, seed=0)
    imgs = led.images(None, range(1000))                     # rendered once
    feats = led.features(None, range(1000), extractor)       # extracted once (or read from disk)

`renders` and `extractions` count the images actually rendered and passed through an extractor (tests read them).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .io import atomic_path
from .metrics.reference import cache_dir
from .model.generator import LoadedGenerator, images_at
from .model.trace import Ablation, Trace
from .progress import Progress

LEDGER_VERSION = 1


def _tensor_digest(t: torch.Tensor | None) -> str | None:
    if t is None:
        return None
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def edit_key(edits: Mapping[str, Ablation] | None) -> str:
    """A canonical string naming an edit (layers, units, strengths, masks, replacements); '' for none."""
    if not edits:
        return ""
    parts = {}
    for layer in sorted(edits):
        e = edits[layer]
        if not isinstance(e, Ablation):
            raise TypeError(f"the ledger keys Ablation edits only; got {type(e).__name__} for {layer}")
        parts[layer] = {"units": list(e.units), "alpha": float(e.alpha) if isinstance(e.alpha, (int, float)) else [float(a) for a in e.alpha],
                        "mask": _tensor_digest(e.mask), "replacement": _tensor_digest(e.replacement)}
    return json.dumps(parts, sort_keys=True)


def set_key(fingerprint: str, edits: Mapping[str, Ablation] | None, seed: int, ids: Sequence[int]) -> str:
    """The content key of an image set: a hash of (fingerprint, edit, seed, indices)."""
    h = hashlib.sha256(json.dumps([LEDGER_VERSION, fingerprint, edit_key(edits), int(seed)]).encode())
    h.update(np.asarray(list(ids), np.int64).tobytes())
    return h.hexdigest()[:32]


def _extractor_key(extractor: Any) -> str:
    fp = extractor.fingerprint() if hasattr(extractor, "fingerprint") else {"name": repr(extractor)}
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Ledger:
    """Per-run memo of rendered image sets and their features; unedited sets also on disk."""

    def __init__(self, g: LoadedGenerator, seed: int, cache: str | Path | None = None, disk: bool = True, batch: int = 64) -> None:
        self.g, self.seed, self.batch = g, int(seed), int(batch)
        self.root = (cache_dir(cache) / "ledger") if disk else None
        self._images: dict[str, np.ndarray] = {}
        self._features: dict[tuple[str, str], np.ndarray] = {}
        self.renders = 0
        self.extractions = 0
        self.disk_hits = 0

    def key(self, edits: Mapping[str, Ablation] | None, ids: Sequence[int]) -> str:
        """The set key of (this generator, edits, this seed, ids)."""
        return set_key(self.g.fingerprint, edits, self.seed, ids)

    def _disk(self, key: str, what: str) -> Path | None:
        return None if self.root is None else self.root / f"{key}.{what}.npy"

    def _load(self, path: Path | None) -> np.ndarray | None:
        if path is None or not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # a damaged cache file is recomputed, never trusted
            return None
        self.disk_hits += 1
        return arr

    @staticmethod
    def _save(path: Path | None, arr: np.ndarray) -> None:
        if path is None:
            return
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
        except OSError:  # a read-only or full cache folder costs speed, not results
            pass

    def images(self, edits: Mapping[str, Ablation] | None, ids: Sequence[int]) -> np.ndarray:
        """uint8 NHWC images of samples `ids` with `edits` applied, rendered once per run (and per cache for no edit)."""
        ids = [int(i) for i in ids]
        key = self.key(edits, ids)
        if key in self._images:
            return self._images[key]
        disk = self._disk(key, "images") if not edits else None
        arr = self._load(disk)
        if arr is None or arr.shape[0] != len(ids):
            parts = []
            with Trace(self.g.module, edit=dict(edits)) if edits else nullcontext(), Progress(len(ids), "sampling") as bar:
                for s in range(0, len(ids), self.batch):
                    parts.append(images_at(self.g, self.seed, ids[s:s + self.batch], self.batch))
                    bar.update(len(parts[-1]))
            arr = np.concatenate(parts) if parts else images_at(self.g, self.seed, ids, self.batch)
            self.renders += len(ids)
            self._save(disk, arr)
        self._images[key] = arr
        return arr

    def drop(self, edits: Mapping[str, Ablation] | None, ids: Sequence[int]) -> None:
        """Forget a set's images and features (what the disk holds stays): keeps memory flat over many sets."""
        key = self.key(edits, [int(i) for i in ids])
        self._images.pop(key, None)
        for k in [k for k in self._features if k[0] == key]:
            del self._features[k]

    def batches(self, edits: Mapping[str, Ablation] | None, ids: Sequence[int]) -> list[np.ndarray]:
        """The same images as `images`, split into batches (what the metrics consume)."""
        arr = self.images(edits, ids)
        return [arr[s:s + self.batch] for s in range(0, len(arr), self.batch)]

    def features(self, edits: Mapping[str, Ablation] | None, ids: Sequence[int], extractor: Any) -> np.ndarray:
        """float32 (N, d) features of that set in `extractor`'s space, extracted once per run (and per cache for no edit)."""
        ids = [int(i) for i in ids]
        key = (self.key(edits, ids), _extractor_key(extractor))
        if key in self._features:
            return self._features[key]
        disk = self._disk(f"{key[0]}.{key[1]}", "features") if not edits else None
        arr = self._load(disk)
        if arr is None or arr.shape[0] != len(ids):
            imgs = self.images(edits, ids)
            arr = np.asarray(extractor(imgs), np.float32)
            self.extractions += len(ids)
            self._save(disk, arr)
        self._features[key] = arr
        return arr
