"""The workflow layer: one typed workspace and the operations the CLI, the dashboard and the demo all call.

A `Workspace` is one diagnosis: a loaded generator, its `Profile` (resolved once, here), the layer, the seed,
the label store and the cache folder (and the device, for the stages that will move to one). The operations
below are the only implementation of each rule: the default layer, the reviewer name, finding or registering
a run, the bundled review (which must fit the generator, the layer *and* the seed), training the classifier
from the flags, the review queue, unit scores and proposals, which measures a repair or a gate may run
without reference data, the segmenter and layers for concepts, paint units and the region outline.

`artifix/cli/commands/` parses flags, calls these and prints; `dashboard/` draws widgets and calls these
(through `artifix/session.py`); compute modules never import this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import dist
from .concepts.segmenter import Segmenter, load_segmenter
from .errors import UserError
from .io import sha256_json
from .log import LOGGER
from .labels import LabelStore
from .labels.values import reviewer_name  # noqa: F401  (re-exported: session.reviewer_name)
from .metrics import get_extractor, load_real
from .metrics.reference import cache_dir
from .model.generator import LoadedGenerator, images_at, latents, load_generator, probe, spec_from_options
from .model.trace import get_layer, layer_shapes
from .profiles import BundledReview, Profile, profile_for
from .review import classifier as C
from .review.classifier import review_queue as order_queue
from .units.scoring import cached_stats, collect_stats, realism_scores, review_priors, score_units

Say = Callable[[str], None]
REFERENCE_MEASURES = ("fd", "kid", "swd")  # the measures that need reference data
REFERENCE_FREE = ("artifact rate", "pixel change", "preference")


def _quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------------------------------ the workspace


@dataclass
class Workspace:
    """One diagnosis: generator, profile, layer, seed, label store location, cache folder and device."""

    g: LoadedGenerator
    profile: Profile
    layer: str
    seed: int = 0
    store_location: str = "labels.db"
    cache: str = ".artifix-cache"
    device: str = "cpu"
    reviewer: str = "reviewer"
    _store: LabelStore | None = field(default=None, repr=False)

    @property
    def store(self) -> LabelStore:
        """The label store (opened on first use)."""
        if self._store is None:
            self._store = LabelStore(self.store_location)
        return self._store

    def close(self) -> None:
        """Close the label store if this workspace opened it."""
        if self._store is not None:
            self._store.close()
            self._store = None


def resolve_layer(g: LoadedGenerator, profile: Profile, given: str | None) -> str:
    """--layer (checked against G), else the profile's default layer; a UserError when neither exists."""
    if given:
        get_layer(g.module, given)  # fail before anything is written
        return str(given)
    if profile.default_layer:
        return profile.default_layer
    family = g.adapter.default_layers(g.module) if getattr(g, "adapter", None) is not None else []  # artifix.adapters
    if family:
        return family[0]
    raise UserError("--layer is required for this generator; run 'artifix layers' to list its layers.")


def open_generator(opts: dict[str, Any]) -> tuple[LoadedGenerator, Profile]:
    """Load the generator the settings describe and resolve its profile (once)."""
    spec = spec_from_options(opts)
    return load_generator(spec), profile_for(spec)


def open_workspace(opts: dict[str, Any], g: LoadedGenerator | None = None, *, need_layer: bool = True) -> Workspace:
    """The workspace the settings describe (the generator loaded unless given); the store opens on first use."""
    if g is None:
        g, profile = open_generator(opts)
    else:
        profile = profile_for(g.spec)
    layer = resolve_layer(g, profile, opts.get("layer")) if need_layer else (opts.get("layer") or profile.default_layer or "")
    cache = str(cache_dir(opts.get("cache")))  # the flag / artifix.toml value, else $ARTIFIX_CACHE, else the default
    return Workspace(g, profile, layer, int(opts.get("seed") or 0), str(opts.get("store") or "labels.db"), cache,
                     str(opts.get("device") or "cpu"), reviewer_name(opts.get("reviewer")))


# ------------------------------------------------------------------------------------------------ runs


def store_exists(location: str) -> bool:
    """Whether the label store at `location` exists (a database URL always counts as existing)."""
    return "://" in str(location) or Path(str(location)).expanduser().is_file()


def find_run(ws: Workspace, layer: str | None = None, missing: str = "") -> int:
    """The id of the run of (G, layer, seed) without creating anything; UserError(missing) when there is none."""
    if not store_exists(ws.store_location):
        raise UserError(missing)
    run = ws.store.find_run(ws.g.fingerprint, [layer or ws.layer], ws.seed)
    if run is None:
        note = weights_change_note(ws.store.runs(), ws.g)
        raise UserError(f"{note} ({missing})" if note else missing)
    return int(run.id)


def register(store: Any, g: LoadedGenerator, layer: str, seed: int, n: int) -> int:
    """Register (or find) the run of (G, layer, seed) covering at least `n` samples in `store`; returns its id."""
    out_shape = probe(g)
    earlier = [] if g.spec.checkpoint else store.runs()  # only a generator without a checkpoint can change between loads
    with dist.main_first():  # under torchrun rank 0 creates the run, the others find it
        run_id = int(store.register_run(g.fingerprint, [layer], int(seed), max(int(n), 1), meta={"spec": g.spec.to_json()},
                                        image_size=(int(out_shape[2]), int(out_shape[3]))))
    warn_if_weights_change(earlier, run_id, g)
    return run_id


def warn_if_weights_change(earlier: Sequence[Any], run_id: int, g: LoadedGenerator) -> None:
    """Warn when a new run's generator has no checkpoint and an earlier run of the same spec had other weights."""
    note = None if any(r.id == run_id for r in earlier) else weights_change_note(earlier, g)
    if note:
        LOGGER.warning(f"warning: {note}")


def weights_change_note(earlier: Sequence[Any], g: LoadedGenerator) -> str | None:
    """The sentence for a generator without a checkpoint whose weights differ from an earlier run's of the same spec: its
    factory initialises them anew on each load, so one command's labels never reach the next (runs are by fingerprint)."""
    if g.spec.checkpoint:
        return None
    spec = sha256_json(g.spec.to_json())
    same = [r for r in earlier if sha256_json(r.meta.get("spec")) == spec and r.fingerprint != g.fingerprint]
    if not same:
        return None
    return (f"{g.spec.generator} has no --checkpoint, and its weights differ from run {same[-1].id}'s in this store "
            f"(fingerprint {same[-1].fingerprint[:8]} -> {g.fingerprint[:8]}): the factory initialises them anew on each "
            "load, so labels and scores of one command do not reach the next. Pass --checkpoint with the trained weights, "
            "or make the factory load them")


def register_run(ws: Workspace, n: int, layer: str | None = None) -> int:
    """Register (or find) the workspace's run (of `layer`, default the workspace's) covering at least `n` samples."""
    return register(ws.store, ws.g, layer or ws.layer, ws.seed, n)


def flagged_and_clean(store: Any, run_id: int) -> tuple[list[int], list[int]]:
    """The run's samples whose current label is 'artifact', and those labelled 'clean' (sorted)."""
    flags = store.flags(run_id)
    return (sorted(int(s) for s in flags.loc[flags.label == "artifact", "sample"]),
            sorted(int(s) for s in flags.loc[flags.label == "clean", "sample"]))


def label_state(store: Any, run_id: int) -> str:
    """A content hash of the run's current labels and masks (a cache key for scores that depend on them)."""
    flags = store.flags(run_id)
    masks = store.mask_records(run_id)
    return sha256_json({"flags": [[int(s), str(lab)] for s, lab in zip(flags["sample"], flags["label"])],
                        "masks": [[int(i), int(s), int(p)] for i, s, p in zip(masks["id"], masks["sample"], masks["pixels"])]})[:20]


# ------------------------------------------------------------------------------------- the bundled review


def bundled_review_for(profile: Profile, fingerprint: str, layer: str, seed: int) -> BundledReview | None:
    """The profile's bundled review when it was recorded for this generator, layer and seed, else None."""
    r = profile.review
    return r if r is not None and r.fits(fingerprint, layer, seed) else None


def run_is_empty(store: Any, run_id: int) -> bool:
    """Whether the run has no flags, masks or unit decisions yet."""
    c = store.counts(run_id)
    return not (c["flag_events"] or c["masked"] or len(store.unit_decisions(run_id)))


def bundled_review_applies(profile: Profile, store: Any, run_id: int, fingerprint: str, layer: str, seed: int) -> bool:
    """Whether the bundled review fits this run: its generator, layer and seed, and no labels of the team's own yet."""
    return bundled_review_for(profile, fingerprint, layer, seed) is not None and run_is_empty(store, run_id)


def import_bundled_review(profile: Profile, store: Any, run_id: int, fingerprint: str, layer: str, seed: int) -> dict[str, Any] | None:
    """Import the bundled flags and approvals into an empty run it fits; returns what was added, None otherwise."""
    if not bundled_review_applies(profile, store, run_id, fingerprint, layer, seed):
        return None
    r = profile.review
    assert r is not None
    imported = store.import_labels(run_id, r.flags_file, reviewer=r.reviewer)
    store.propose_units(run_id, [(layer, u) for u, _ in r.approved], "artifix", note="bundled example review")
    for unit, note in r.approved:
        store.decide_unit(run_id, layer, unit, "approved", r.reviewer, note=note)
    return {"flags": imported, "approved": [u for u, _ in r.approved], "reviewer": r.reviewer}


def holds_bundled_review(profile: Profile, store: Any, run_id: int, fingerprint: str, layer: str, seed: int) -> bool:
    """Whether this run's unit decisions are exactly the bundled review's (so its classifier fits them too)."""
    review = bundled_review_for(profile, fingerprint, layer, seed)
    if review is None:
        return False
    decided = store.unit_decisions(run_id)
    return bool(len(decided)) and set(decided.reviewer) == {review.reviewer}


def check_confidence(confidence: Any) -> float:
    """--confidence as a float in (0, 1); a UserError otherwise (checked before any heavy work)."""
    try:
        c = float(confidence)
    except (TypeError, ValueError):
        c = float("nan")
    if not 0.0 < c < 1.0:
        raise UserError(f"--confidence must be between 0 and 1 (e.g. 0.95), got {confidence}.")
    return c


# ---------------------------------------------------------------------------------- classify, queue, score


def train_from_store(g: LoadedGenerator, store: Any, run_id: int, seed: int, path: str | Path | None = None, *,
                     where: str = "the label store", **kwargs: Any):
    """Train the artifact classifier on the run's flagged and clean samples (and save it to `path`).

    Fewer than 2 flagged or 2 clean samples is a UserError, raised before any image is rendered.
    """
    flagged, clean = flagged_and_clean(store, run_id)
    if min(len(flagged), len(clean)) < 2:
        raise UserError(not_enough_labels(where, len(flagged), len(clean)))
    y = np.r_[np.ones(len(flagged)), np.zeros(len(clean))].astype(int)
    clf = C.train_classifier(images_at(g, seed, flagged + clean), y, **kwargs)
    if path is not None:
        clf.save(path)
    return clf


def not_enough_labels(where: str, n_flagged: int, n_clean: int) -> str:
    """The sentence for a classifier that cannot be trained yet."""
    return (f"need at least 2 flagged and 2 clean samples to train the classifier, but {where} has {n_flagged} flagged and "
            f"{n_clean} clean for this generator, layer and seed; import more with 'artifix flags import'.")


@dataclass
class Queue:
    """The next samples to review, with the prior (and classifier) scores that ordered them."""

    samples: list[int]
    priors: dict[int, float]
    probability: dict[int, float] | None
    realism: dict[int, float] | None
    order: str  # "active learning" (classifier + priors) or "cold start" (priors only)


def review_queue(g: LoadedGenerator, layer: str, store: Any, run_id: int, *, seed: int, start: int, n: int, k: int,
                 stats: Any, clf: Any = None, cache: str | None = None, skip_labelled: bool = True,
                 real: Any = None) -> Queue:
    """Samples start..start+n-1 ordered for review: uncertain (classifier) interleaved with suspicious (priors).

    The "far from the reference data" prior is used only when there is reference data: `real`, or the profile's.
    """
    if n <= 0:
        raise UserError(f"the review pool must hold at least one sample, got n={n}.")
    ids = list(range(start, start + n))
    images = images_at(g, seed, ids)
    probs = clf.predict_proba(images) if clf is not None else None
    realism = None
    if real is not None or profile_for(g.spec).has_reference:
        ext = get_extractor("effnet-lite0")
        realism = realism_scores(ext(images), load_real(real, ext, cache=cache).features)
    priors = review_priors(stats, ids, realism)
    labelled = set(int(s) for s in store.flags(run_id)["sample"]) if skip_labelled else set()
    done = {ids.index(s) for s in labelled if s in ids}
    if probs is None:  # cold start: no classifier yet, the priors alone order the queue
        order = [int(i) for i in np.argsort(-priors, kind="stable") if int(i) not in done][:k]
    else:
        order = order_queue(probs, priors, k, done)
    return Queue([ids[i] for i in order], {ids[i]: round(float(priors[i]), 4) for i in order},
                 None if probs is None else {ids[i]: round(float(probs[i]), 4) for i in order},
                 None if realism is None else {ids[i]: round(float(realism[i]), 4) for i in order},
                 "cold start" if probs is None else "active learning")


def unit_stats(g: LoadedGenerator, layer: str, seed: int, n: int, cache: str | None, use_cache: bool = True) -> Any:
    """Unit statistics of (G, layer, seed, n): from the disk cache, or collected afresh (no cache under edits)."""
    if use_cache:
        return cached_stats(g, layer, seed, n, cache or ".artifix-cache")
    return collect_stats(g, layer, seed, n)


def score_run(g: LoadedGenerator, layer: str, store: Any, run_id: int, stats: Any, *, seed: int, clf: Any = None,
              exact_top: int = 20, collateral_weight: float = 2.0, rare_rate: float = 0.3, say: Say = _quiet, high_q: int = 0):
    """Score every unit of `layer` from the run's flags/masks (and a classifier's pseudo masks, if given)."""
    flagged, clean = flagged_and_clean(store, run_id)
    masks = store.masks(run_id)
    prob_fn = score_fn = None
    missing: list[int] = []
    if clf is not None:
        prob_fn = clf.predict_proba
        score_fn = C.differentiable_score(clf, g.spec.range)
        missing = [i for i in flagged if i not in masks]
        if missing:  # pseudo masks from the classifier's localisation maps (Tousi et al. 2021)
            pm = C.pseudo_masks(clf, images_at(g, seed, missing))
            masks = {**masks, **{i: m for i, m in zip(missing, pm)}}
    if not flagged and not clean:
        say("no flags yet: ranking units by the cold-start prior (rarely-activated units)")
    rep = score_units(g, layer, seed, stats, flagged, clean, masks, prob_fn, score_fn,
                      exact_top=exact_top, collateral_weight=collateral_weight, rare_rate=rare_rate, high_q=high_q)
    return replace(rep, n_pseudo=len(missing))


def propose_top(store: Any, run_id: int, table: Any, top: int, actor: str = "artifix", note: str = "proposed by artifix score") -> list[int]:
    """Propose the first `top` units of a ranking that have no decision yet (with their scores); returns them."""
    rows = table.head(top).to_dict("records")
    existing = set(int(u) for u in store.unit_decisions(run_id).get("unit", []))
    new = [(str(r["layer"]), int(r["unit"]), {k: float(v) for k, v in r.items() if isinstance(v, float)})
           for r in rows if int(r["unit"]) not in existing]
    if new:
        store.propose_units(run_id, new, actor, note=note)
    return [u for _, u, _ in new]


def save_painted_mask(store: Any, run_id: int, sample: int, reviewer: str, mask: np.ndarray) -> int:
    """Store a painted artifact region; a painted sample is an artifact sample, so it is flagged one in the same transaction."""
    return int(store.set_mask(run_id, int(sample), reviewer, mask, flag_artifact=True))


# --------------------------------------------------------------------------------------- reference data


@dataclass(frozen=True)
class Measures:
    """Which before/after measures a repair runs: the metrics string for the distribution metrics, and what it skips."""

    metrics: str  # "fd,kid,swd" or "" (no reference data)
    skipped: tuple[str, ...]
    real: Any  # what the metrics take as reference (None = the profile's own)

    def sentence(self) -> str | None:
        """The line saying what was skipped and why, or None when nothing was."""
        if not self.skipped:
            return None
        return (f"no reference data (--real) for this generator: skipped {', '.join(m.upper() for m in self.skipped)}; "
                f"measuring only the reference-free {', '.join(REFERENCE_FREE)}.")


def has_reference(profile: Profile, real: Any) -> bool:
    """Whether reference-based metrics can run: --real given, or the profile brings its reference."""
    return (real is not None and str(real) != "") or profile.has_reference


def require_reference(profile: Profile, real: Any, what: str = "metrics") -> None:
    """Stop with one sentence when `what` needs reference data and there is none (never fall back to another's)."""
    if not has_reference(profile, real):
        raise UserError(f"--real is required for {what} on your own generator: an image folder, a .npz/.npy uint8 array or a "
                        "statistics .npz of the data it was trained on.")


def repair_measures(profile: Profile, real: Any, metrics: str = "fd,kid,swd") -> Measures:
    """The distribution metrics a repair may run (none without reference data) and those it skips."""
    if has_reference(profile, real):
        return Measures(metrics, (), real)
    asked = tuple(m.strip() for m in metrics.split(",") if m.strip())
    return Measures("", asked, None)


# --------------------------------------------------------------------------------------- concepts, paint


def segmenter_for(profile: Profile, path: str | Path | None = None, classes: str | Sequence[str] | None = None,
                  required: bool = False) -> Segmenter | None:
    """The segmenter `path` names, else the profile's; None (or a UserError when `required`) when there is none."""
    chosen = path or profile.segmenter
    if not chosen:
        if required:
            raise UserError("--segmenter is required for this generator: a TorchScript segmentation network for its domain.")
        return None
    return load_segmenter(chosen, classes)


def split_names(text: str | None) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (empty for None or '')."""
    return [s.strip() for s in str(text).split(",") if s.strip()] if text else []


def dissect_layers(profile: Profile, given: str | None) -> list[str]:
    """--layers, else the profile's dissection layers; a UserError when neither exists."""
    layers = split_names(given)
    if layers:
        return layers
    if profile.dissect_layers:
        return list(profile.dissect_layers)
    raise UserError("--layers is required for this generator, e.g. --layers main.5,main.8; run 'artifix layers' to list them.")


def ace_layer(g: LoadedGenerator, profile: Profile, given: str | None, layers: Sequence[str]) -> str:
    """The causal check's layer: the one given, else the profile's, else the last dissected layer (checked against G)."""
    name = given or profile.ace_layer or layers[-1]
    get_layer(g.module, name)
    return name


def paint_layers(g: LoadedGenerator, profile: Profile, run_layer: str) -> tuple[list[str], str]:
    """The layers offered for painting and the default one (the profile's causal-check layer, else the run's layer)."""
    if profile.dissect_layers:
        return list(dict.fromkeys([*profile.dissect_layers, run_layer])), profile.ace_layer or run_layer
    try:  # layers with feature maps (N, C, h, w), as `artifix layers` lists them
        z, y = latents(g.spec, 0, [0, 1])
        rows = layer_shapes(g.module, z) if y is None else layer_shapes(g.module, z, y)
        maps = [r["layer"] for r in rows if isinstance(r["shape"], list) and len(r["shape"]) == 4]
    except Exception:  # noqa: BLE001  (e.g. TorchScript modules take no hooks): offer the run's layer only
        maps = []
    return list(dict.fromkeys([run_layer, *maps])), run_layer


def parse_units(text: str | int | Sequence[int] | None) -> list[int]:
    """Unit indices from '3,17' (or '3 17', an int or a list): non-negative and distinct, in the order given."""
    if isinstance(text, (int, np.integer)):
        items: list[Any] = [int(text)]
    elif isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [u for u in str(text or "").replace(" ", ",").split(",") if u.strip()]
    try:
        units = [int(u) for u in items]
    except (TypeError, ValueError):
        raise UserError(f"units must be comma-separated integers like '3,17', got {text!r}.") from None
    if not units:
        raise UserError("no units given; pass units like '3,17'.")
    neg = [u for u in units if u < 0]
    if neg:
        raise UserError(f"unit {neg[0]} is out of range: units are non-negative integers, got {text!r}.")
    if len(set(units)) != len(units):
        raise UserError(f"units must be distinct; {text!r} names a unit twice.")
    return units


def region_outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 0, 255)) -> np.ndarray:
    """A copy of `image` (uint8 HxWx3) with the border pixels of the bool region `mask` drawn in `colour`."""
    m = np.asarray(mask, bool)
    p = np.pad(m, 1)
    inner = p[2:, 1:-1] & p[:-2, 1:-1] & p[1:-1, 2:] & p[1:-1, :-2]
    out = np.array(image, copy=True)
    out[m & ~inner] = colour
    return out
