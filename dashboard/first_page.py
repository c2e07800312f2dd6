"""The Review page's last page, kept on disk, so a restarted dashboard draws it before torch has imported.

`artifix dashboard` imports torch and the rest of artifix in a background thread while the browser loads (about
3-4 s on 2 cores). Each time the full Review page draws a page of tiles it `save`s a snapshot: the tiles' images,
their priors and scores, the queue order's name, the run and its generator fingerprint, and the size and mtime of
every file they came from (checkpoint, generator code, classifier). On the next start `draw` reads it with only
Streamlit, numpy and the label store imported: the same tiles with their *current* labels (read from the store),
working label buttons, and the controls that need the generator disabled with the reason. The app then waits for
the imports and reruns into the full page, which keeps this page's batch. Any change to the settings (the key),
to those files or to the run's fingerprint means no snapshot: the page is computed as before.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import streamlit as st

from artifix.io import sha256_json, write_bytes_atomic, write_json_atomic
from artifix.labels import LabelStore
from artifix.labels.values import reviewer_name

from . import review_grid as grid

VERSION = 1
NOT_CONTENT = ("host", "port", "reviewer", "approvers", "threads")  # settings that do not change what the page shows
STARTING = "starting: available in a moment (the generator is still loading)"


@st.cache_resource
def store(location: str) -> LabelStore:
    """The label store at `location`, one per process (the full pages share it)."""
    return LabelStore(location)


def cache_dir(opts: Mapping[str, Any]) -> str:
    """The cache folder: --cache, else $ARTIFIX_CACHE, else .artifix-cache."""
    return str(opts.get("cache") or os.environ.get("ARTIFIX_CACHE") or ".artifix-cache")


def classifier_key(opts: Mapping[str, Any]) -> str:
    """The classifier file's identity (path and mtime), or 'none': a retrained classifier reorders the queue."""
    p = Path(opts.get("classifier") or "artifix-classifier.pt")
    return f"{p.resolve()}@{p.stat().st_mtime}" if p.is_file() else "none"


def snapshot_key(opts: Mapping[str, Any]) -> str:
    """The content key of these settings' snapshot."""
    return sha256_json({"v": VERSION, **{k: v for k, v in opts.items() if k not in NOT_CONTENT}})[:24]


def _files(paths: Sequence[str | None]) -> dict[str, list[int] | None]:
    """(size, mtime_ns) of each file, None for one that does not exist (it must still not exist)."""
    out: dict[str, list[int] | None] = {}
    for p in paths:
        if p:
            q = Path(p).resolve()
            out[str(q)] = [q.stat().st_size, q.stat().st_mtime_ns] if q.is_file() else None
    return out


def source_files(spec: Any, opts: Mapping[str, Any]) -> dict[str, list[int] | None]:
    """The files the page's images and scores come from: checkpoint, generator file (code or TorchScript), classifier."""
    head = str(spec.generator or "").split(":", 1)[0]
    code = head if head and Path(head).is_file() else None  # 'path/file.py:fn' or a TorchScript file; not 'pkg.mod:fn'
    return _files([spec.checkpoint, spec.code_path, code, str(opts.get("classifier") or "artifix-classifier.pt")])


def _paths(cache: str, key: str) -> tuple[Path, Path]:
    folder = Path(cache) / "dashboard"
    return folder / f"first-{key}.json", folder / f"first-{key}.npy"


def save(cache: str, opts: Mapping[str, Any], g: Any, run_id: int, layer: str, q: Any, batch: Sequence[int],
         images: np.ndarray) -> None:
    """Keep this page for the next start (once per page and browser session)."""
    key = snapshot_key(opts)
    stamp = (key, tuple(int(s) for s in batch))
    if st.session_state.get("_first_page_saved") == stamp:
        return
    meta_path, images_path = _paths(cache, key)
    ints = lambda m: None if m is None else {str(s): float(m[s]) for s in batch if s in m}  # noqa: E731
    meta = {"v": VERSION, "fingerprint": g.fingerprint, "run_id": int(run_id), "layer": layer, "order": q.order,
            "batch": [int(s) for s in batch], "priors": ints(q.priors) or {}, "probability": ints(q.probability),
            "files": source_files(g.spec, opts)}
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(images, dtype=np.uint8))
    write_bytes_atomic(images_path, buf.getvalue())
    write_json_atomic(meta_path, meta)  # last: a snapshot's json always names complete images
    st.session_state["_first_page_saved"] = stamp


@dataclass
class View:
    """What the grid's callbacks need, without the generator: settings, store, run and reviewer."""

    opts: Mapping[str, Any]
    store: Any
    run_id: int
    reviewer: str


@dataclass
class Scores:
    """The tiles' scores as the snapshot kept them (the full page's queue has the same fields)."""

    priors: dict[int, float]
    probability: dict[int, float] | None


def load(opts: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray] | None:
    """The snapshot of these settings when it still describes what the full page would show, else None."""
    meta_path, images_path = _paths(cache_dir(opts), snapshot_key(opts))
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(images_path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if (meta.get("v") != VERSION or len(images) != len(meta.get("batch", ())) or not meta["batch"]
            or _files(list(meta.get("files", {}))) != meta.get("files")):
        return None
    return meta, images


def draw(opts: Mapping[str, Any], boot: Any) -> bool:
    """Draw the kept page (True), or nothing (False) when there is none for these settings or it is out of date."""
    got = load(opts)
    if got is None:
        return False
    meta, images = got
    s = store(str(opts["store"]))
    run = next((r for r in s.runs() if r.id == meta["run_id"]), None)
    if run is None or run.fingerprint != meta["fingerprint"]:
        return False
    d = View(opts, s, int(run.id), str(opts.get("reviewer") or st.session_state.get("reviewer") or reviewer_name(None)))
    q = Scores({int(k): v for k, v in meta["priors"].items()},
               None if meta["probability"] is None else {int(k): v for k, v in meta["probability"].items()})
    batch = [int(x) for x in meta["batch"]]
    boot.empty()
    st.header("Review")
    st.caption(grid.order_caption(meta["order"]))
    grid.counters(d)
    top = st.columns([1, 1, 1.4, 1.4, 2.2])
    for col, (text, key) in zip(top, (("Next batch", "next-batch"), ("Classifier", "classifier-starting"),
                                      ("Undo my last label", "undo-label"), ("Undo my last paint", "undo-mask"))):
        col.button(text, key=key, disabled=True, help=f"disabled: {STARTING}")
    top[4].caption(f"Label buttons work now; the rest is {STARTING.removeprefix('starting: ')}.")
    labels, masked = grid.labels_and_masked(d)
    left, right = st.columns([2, 1], gap="large")
    with left:
        grid.grid(d, q, batch, images, labels, masked)
    right.info("The painter opens in a moment (the generator is still loading).", icon=":material/hourglass_top:")
    with st.sidebar:
        st.markdown("## artifix")
        st.caption("Starting: the other pages and the run facts appear in a moment.")
    st.session_state[f"batch-{d.run_id}"] = batch  # the full page continues with this batch
    st.session_state["batch_order"] = (meta["order"], classifier_key(opts))
    st.session_state["_first_page_drawn"] = True
    return True
