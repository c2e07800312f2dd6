"""What every page needs: the settings, the generator, the label store and run, and cached heavy results.

Heavy objects are cached across sessions with `st.cache_resource`, keyed by content (generator fingerprint,
layer, seed, sample count, a hash of the labels); nothing here decides anything the library does not.
The generator is shared by all browser sessions, so every use of it (sampling, ablation hooks, scoring,
repair) holds one lock: a session's ablation hook can never leak into another session's images.
"""

from __future__ import annotations

import json
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import streamlit as st
import torch

from artifix import progress, session, workflow
from artifix.cli import parsing, serve
from artifix.cli.main import COMMANDS, build_parser
from artifix.concepts.dissect import segmenter_id
from artifix.errors import UserError
from artifix.model.generator import GeneratorSpec, images_at, load_generator, spec_from_options
from artifix.profiles import Profile, profile_for
from artifix.review.classifier import ArtifactClassifier
from artifix.units.scoring import cached_stats

from . import first_page
from .progress_ui import stages


def resolve_settings(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Settings from `artifix dashboard` (environment), else from `streamlit run app.py -- [artifix flags]`."""
    given = serve.settings_from_env(environ)
    if given is not None:
        return given
    args = build_parser().parse_args(["dashboard", *(sys.argv[1:] if argv is None else argv)])
    return parsing.resolve_settings(COMMANDS["dashboard"].options, args)[0]  # as the CLI: flags > artifix.toml > defaults, checked


@st.cache_resource(show_spinner="loading the generator")
def _generator(spec_json: str):
    d = json.loads(spec_json)
    d["latent"] = tuple(d["latent"])
    return load_generator(GeneratorSpec(**d))


@st.cache_resource
def _lock(_fingerprint: str) -> threading.RLock:
    return threading.RLock()


def _store(location: str):
    return first_page.store(location)  # one store per process, shared with the first page drawn before the imports


@st.cache_resource(show_spinner="collecting unit statistics (once per generator, layer, seed and n)")
def _stats(fingerprint: str, layer: str, seed: int, n: int, cache: str, _g: Any):
    with _lock(fingerprint), progress.muted():  # a cached function: no live updates of a box outside it
        return cached_stats(_g, layer, seed, n, cache)


@st.cache_resource
def _classifier(path: str, mtime: float):
    return ArtifactClassifier.load(path)


@st.cache_resource(show_spinner="loading the segmenter")
def _segmenter(factory: str, path: str, mtime: float, classes: str, _g: Any):
    return session.concept_segmenter(_g, path or None, classes or None)


@st.cache_resource(show_spinner=False, max_entries=8)
def _dissection(fingerprint: str, layer: str, segmenter_key: str, seed: int, n: int, cache: str, _g: Any, _seg: Any):
    with _lock(fingerprint), progress.muted():  # a cached function: no live updates of a box outside it
        return session.layer_dissection(_g, layer, _seg, seed, n, cache)


@dataclass
class Dash:
    """One page view: settings, generator, store, run id, layer and the reviewer of this browser session."""

    opts: dict[str, Any]
    g: Any
    store: Any
    run_id: int
    layer: str
    reviewer: str
    pinned_reviewer: bool
    approvers: set[str] | None
    cache: str = field(default=".artifix-cache")

    @property
    def profile(self) -> Profile:
        """The generator's profile (its defaults: layer, dissection layers, segmenter, reference, bundled review)."""
        return profile_for(self.g.spec)

    @property
    def seed(self) -> int:
        return int(self.opts["seed"])

    @contextmanager
    def using_g(self) -> Iterator[Any]:
        """The generator, held exclusively (hooks and sampling are not shared between sessions)."""
        with _lock(self.g.fingerprint):
            yield self.g

    def images(self, ids: Sequence[int]) -> np.ndarray:
        """uint8 images of samples `ids` (cached per sample list)."""
        return _images(self.g.fingerprint, self.seed, tuple(int(i) for i in ids), _dash=self)

    def stats(self):
        """Unit statistics of the run's layer (cached on disk and in memory)."""
        return _stats(self.g.fingerprint, self.layer, self.seed, int(self.opts["stats_n"]), self.cache, _g=self.g)

    def classifier(self):
        """The artifact classifier at --classifier, or None when there is none yet."""
        p = Path(self.opts.get("classifier") or "artifix-classifier.pt")
        return _classifier(str(p.resolve()), p.stat().st_mtime) if p.is_file() else None

    def segmenter(self) -> Any:
        """The segmenter for concepts (--segmenter, or the bundled one for the example), or None when there is none."""
        path = str(self.opts.get("segmenter") or "")
        mtime = Path(path).stat().st_mtime if path and Path(path).is_file() else 0.0
        return _segmenter(str(self.g.spec.generator), path, mtime, str(self.opts.get("segmenter_classes") or ""), _g=self.g)

    def dissection(self, layer: str | None = None) -> Any:
        """The concept dissection of `layer` (default the run's) on --dissect-n samples, or None without a segmenter."""
        seg = self.segmenter()
        if seg is None:
            return None
        layer = layer or self.layer
        n = int(self.opts.get("dissect_n") or 500)
        with stages(f"dissecting {layer}: matching every unit to the segmenter's classes on {n} samples "
                        "(once per generator, layer and segmenter; cached on disk)"):
            return _dissection(self.g.fingerprint, layer, segmenter_id(seg), self.seed, n, self.cache, _g=self.g, _seg=seg)

    def classifier_key(self) -> str:
        return first_page.classifier_key(self.opts)


@st.cache_data(max_entries=256, show_spinner=False)
def _images(fingerprint: str, seed: int, ids: tuple[int, ...], _dash: Dash) -> np.ndarray:
    with _dash.using_g() as g:
        return images_at(g, seed, list(ids))


def default_layer(opts: dict[str, Any], g: Any) -> str:
    """--layer, or the generator profile's default layer (`workflow.resolve_layer`, as the CLI)."""
    return workflow.resolve_layer(g, profile_for(g.spec), opts.get("layer"))


def open_dash(opts: dict[str, Any]) -> Dash:
    """Load (cached) the generator and the store, register the run, and work out this session's reviewer."""
    if opts.get("threads"):
        torch.set_num_threads(int(opts["threads"]))
    spec = spec_from_options(opts)
    g = _generator(json.dumps(spec.to_json(), sort_keys=True))
    layer = default_layer(opts, g)
    store = _store(str(opts["store"]))
    with _lock(g.fingerprint):
        run_id = workflow.register(store, g, layer, int(opts["seed"]), max(int(opts["stats_n"]), int(opts["start"]) + int(opts["pool"])))
    pinned = bool(opts.get("reviewer"))
    if pinned:
        reviewer = str(opts["reviewer"])
    else:
        reviewer = st.session_state.get("reviewer") or workflow.reviewer_name(None)
    return Dash(opts, g, store, run_id, layer, reviewer, pinned, session.approvers_set(opts.get("approvers")),
                first_page.cache_dir(opts))
