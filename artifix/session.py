"""A review session on one run: the queue, scoring, proposals, previews and repair, shared by the CLI and the dashboard.

These functions take explicit arguments (no CLI context), so `artifix classify queue`, `artifix score`,
`artifix repair` and the dashboard's pages run the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import UserError
from .generator import LoadedGenerator, images_at

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def open_run(store: Any, g: LoadedGenerator, layer: str, seed: int, n: int) -> int:
    """Register (or find) the run of (G, layer, seed) in the label store; returns its id."""
    from .generator import probe

    out_shape = probe(g)
    return store.register_run(g.fingerprint, [layer], seed, max(int(n), 1), meta={"spec": g.spec.to_json()},
                              image_size=(int(out_shape[2]), int(out_shape[3])))


def flagged_and_clean(store: Any, run_id: int) -> tuple[list[int], list[int]]:
    """The run's samples whose current label is 'artifact', and those labelled 'clean' (sorted)."""
    flags = store.flags(run_id)
    return (sorted(int(s) for s in flags.loc[flags.label == "artifact", "sample"]),
            sorted(int(s) for s in flags.loc[flags.label == "clean", "sample"]))


def label_state(store: Any, run_id: int) -> str:
    """A content hash of the run's current labels and masks (a cache key for scores that depend on them)."""
    from .io import sha256_json

    flags = store.flags(run_id)
    masks = store.mask_records(run_id)
    return sha256_json({"flags": [[int(s), str(lab)] for s, lab in zip(flags["sample"], flags["label"])],
                        "masks": [[int(i), int(s), int(p)] for i, s, p in zip(masks["id"], masks["sample"], masks["pixels"])]})[:20]


@dataclass
class Queue:
    """The next samples to review, with the prior (and classifier) scores that ordered them."""

    samples: list[int]
    priors: dict[int, float]
    probability: dict[int, float] | None
    realism: dict[int, float] | None
    order: str  # "active learning" (classifier + priors) or "cold start" (priors only)


def review_queue(g: LoadedGenerator, layer: str, store: Any, run_id: int, *, seed: int, start: int, n: int, k: int,
                 stats: Any, clf: Any = None, cache: str | None = None, skip_labelled: bool = True) -> Queue:
    """Samples start..start+n-1 ordered for review: uncertain (classifier) interleaved with suspicious (priors)."""
    from .classifier import review_queue as order_queue
    from .scoring import realism_scores, review_priors

    if n <= 0:
        raise UserError(f"the review pool must hold at least one sample, got n={n}.")
    ids = list(range(start, start + n))
    images = images_at(g, seed, ids)
    probs = clf.predict_proba(images) if clf is not None else None
    realism = None
    if g.spec.generator == "artifix.example:make_generator":  # reference scenes exist for the example only
        from .metrics import get_extractor, load_real

        ext = get_extractor("effnet-lite0")
        realism = realism_scores(ext(images), load_real(None, ext, cache=cache).features)
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


def score_run(g: LoadedGenerator, layer: str, store: Any, run_id: int, stats: Any, *, seed: int, clf: Any = None,
              exact_top: int = 20, collateral_weight: float = 2.0, rare_rate: float = 0.3, say: Say = _quiet, high_q: int = 0):
    """Score every unit of `layer` from the run's flags/masks (and a classifier's pseudo masks, if given)."""
    from .scoring import score_units

    flagged, clean = flagged_and_clean(store, run_id)
    masks = store.masks(run_id)
    prob_fn = score_fn = None
    if clf is not None:
        from . import classifier as C

        prob_fn = clf.predict_proba
        score_fn = getattr(C, "differentiable_score", lambda *_: None)(clf, g.spec.range)
        missing = [i for i in flagged if i not in masks]
        if missing:  # pseudo masks from the classifier's localisation maps (Tousi et al. 2021)
            pm = C.pseudo_masks(clf, images_at(g, seed, missing))
            masks = {**masks, **{i: m for i, m in zip(missing, pm)}}
    if not flagged and not clean:
        say("no flags yet: ranking units by the cold-start prior (rarely-activated units)")
    return score_units(g, layer, seed, stats, flagged, clean, masks, prob_fn, score_fn,
                       exact_top=exact_top, collateral_weight=collateral_weight, rare_rate=rare_rate, high_q=high_q)


def propose_top(store: Any, run_id: int, table: Any, top: int, actor: str = "artifix", note: str = "proposed by artifix score") -> list[int]:
    """Propose the first `top` units of a ranking that have no decision yet (with their scores); returns them."""
    rows = table.head(top).to_dict("records")
    existing = set(int(u) for u in store.unit_decisions(run_id).get("unit", []))
    new = [(str(r["layer"]), int(r["unit"]), {k: float(v) for k, v in r.items() if isinstance(v, float)})
           for r in rows if int(r["unit"]) not in existing]
    if new:
        store.propose_units(run_id, new, actor, note=note)
    return [u for _, u, _ in new]


def train_from_store(g: LoadedGenerator, store: Any, run_id: int, seed: int, path: str | Path | None = None, **kwargs: Any):
    """Train the artifact classifier on the run's flagged and clean samples (and save it to `path`)."""
    from .classifier import train_classifier

    flagged, clean = flagged_and_clean(store, run_id)
    y = np.r_[np.ones(len(flagged)), np.zeros(len(clean))].astype(int)
    clf = train_classifier(images_at(g, seed, flagged + clean), y, **kwargs)
    if path is not None:
        clf.save(path)
    return clf


def ablated_images(g: LoadedGenerator, layer: str, seed: int, units: Sequence[int], ids: Sequence[int], alpha: float = 1.0) -> np.ndarray:
    """The samples `ids` with `units` of `layer` ablated (uint8 NHWC); the plain samples when `units` is empty."""
    from .trace import Trace, ablation

    if not units:
        return images_at(g, seed, list(ids))
    with Trace(g.module, edit={layer: ablation([int(u) for u in units], alpha)}):
        return images_at(g, seed, list(ids))


def before_after(g: LoadedGenerator, layer: str, seed: int, units: Sequence[int], ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(before, after, |difference| as a [0, 1] map) for the samples `ids` with `units` ablated."""
    before = images_at(g, seed, list(ids))
    after = ablated_images(g, layer, seed, units, ids)
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(-1) / 255.0
    return before, after, diff


def layer_channels(g: LoadedGenerator, layer: str, seed: int = 0) -> int:
    """Number of units (channels) of `layer`."""
    from .scoring import trace_batches

    return int(next(iter(trace_batches(g, layer, seed, [0])))[1].shape[1])


def repair_approved(g: LoadedGenerator, layer: str, store: Any, run_id: int, out: str | Path, *, seed: int, n: int,
                    clf: Any = None, real: Any = None, ranking: Sequence[int] | None = None, sweep: bool = False,
                    sweep_n: int | None = None, high_pool: int | None = None, cache: str | None = None, say: Say = _quiet,
                    **kwargs: Any) -> dict[str, Any]:
    """Remove the run's approved units of `layer` (as `artifix repair` does for one layer); returns the manifest.

    With `sweep`, the approved units are removed one at a time in `ranking` order and the manifest holds the sweep.
    """
    from .repair import plan_from_store, repair

    if g.scripted:
        raise UserError("repair needs a Python generator (--generator 'module:callable'), not a TorchScript file.")
    if n <= 0:
        raise UserError(f"repair needs a positive number of samples, got {n}.")
    plan = plan_from_store(store, run_id, layer, list(ranking) if ranking is not None else None)
    flagged, clean = flagged_and_clean(store, run_id)
    return repair(g, plan, Path(out), seed=seed, n=n, flagged=flagged, clean=clean, clf=clf, real=real,
                  channels={layer: layer_channels(g, layer, seed)}, high_pool=4 * n if high_pool is None else high_pool,
                  run_sweep=sweep, sweep_n=sweep_n, cache=cache, say=say, **kwargs)


def reviewer_name(given: str | None) -> str:
    """The reviewer name: the one given, else $USER, else 'reviewer'."""
    return given or os.environ.get("USER") or "reviewer"


def approvers_set(text: str | Sequence[str] | None) -> set[str] | None:
    """Parse the configured approvers ('alice,bob' or a list); None means anyone may approve."""
    if text is None:
        return None
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    return {s for s in names if s}


# ------------------------------------------------------------------------- concepts and painting (issue 11)


def concept_segmenter(g: LoadedGenerator, path: str | Path | None = None, classes: str | Sequence[str] | None = None) -> Any:
    """The segmenter `path` names, the bundled scene segmenter for the example generator, or None when there is none."""
    from .generator import EXAMPLE_FACTORY
    from .segmenter import load_segmenter

    if not path and g.spec.generator != EXAMPLE_FACTORY:
        return None
    return load_segmenter(path, classes)


def layer_dissection(g: LoadedGenerator, layer: str, segmenter: Any, seed: int, n: int, cache: str | Path) -> Any:
    """The concept dissection of one layer (`dissect.cached_dissect`: on disk under `cache`, keyed by content).

    The result is passed through its JSON form (IoUs rounded to 5 decimals), so a fresh dissection and one read back
    from the cache rank units identically (near-ties could otherwise swap, e.g. in `top_units`).
    """
    from .dissect import LayerDissection, cached_dissect

    if n <= 0:
        raise UserError(f"--dissect-n must be a positive number of samples, got {n}.")
    return LayerDissection.from_json(cached_dissect(g, [layer], segmenter, int(seed), int(n), cache)[layer].to_json())


def paint_layers(g: LoadedGenerator, run_layer: str) -> tuple[list[str], str]:
    """The layers offered for painting and the default one (main.5 for the example generator, else the run's layer)."""
    from .dissect import EXAMPLE_ACE_LAYER, EXAMPLE_LAYERS
    from .generator import EXAMPLE_FACTORY, latents
    from .trace import layer_shapes

    if g.spec.generator == EXAMPLE_FACTORY:
        return list(dict.fromkeys([*EXAMPLE_LAYERS, run_layer])), EXAMPLE_ACE_LAYER
    try:  # layers with feature maps (N, C, h, w), as `artifix layers` lists them
        z, y = latents(g.spec, 0, [0, 1])
        rows = layer_shapes(g.module, z) if y is None else layer_shapes(g.module, z, y)
        maps = [r["layer"] for r in rows if isinstance(r["shape"], list) and len(r["shape"]) == 4]
    except Exception:  # noqa: BLE001  (e.g. TorchScript modules take no hooks): offer the run's layer only
        maps = []
    return list(dict.fromkeys([run_layer, *maps])), run_layer


def paint_units(text: str | None = None, dissection: Any = None, concept: str | None = None, k: int = 20) -> list[int]:
    """The units to paint with: the explicit list in `text` ('3,17'), else the top `k` units of `concept` in `dissection`."""
    if text and str(text).strip():
        try:
            units = [int(u) for u in str(text).replace(" ", ",").split(",") if u.strip()]
        except ValueError:
            raise UserError(f"units must be comma-separated integers like '3,17', got {text!r}.") from None
        if any(u < 0 for u in units):
            raise UserError(f"units must be non-negative integers, got {text!r}.")
        return list(dict.fromkeys(units))
    if dissection is None or not concept:
        raise UserError("say what to paint: a concept (its top units) or explicit units like '3,17'.")
    if k <= 0:
        raise UserError(f"the number of top units must be positive, got {k}.")
    return dissection.top_units(concept, int(k))


@dataclass
class Painted:
    """One GANpaint edit of one sample: the images before and after, and how much changed inside / outside the region."""

    layer: str
    index: int
    mode: str
    units: list[int]
    before: np.ndarray  # uint8 HxWx3
    after: np.ndarray  # uint8 HxWx3
    mask: np.ndarray  # bool HxW, the painted region
    change_inside: float  # mean over the region's pixels of max-channel |after - before| / 255
    change_outside: float  # the same outside the region (what the edit leaks)


def paint_sample(g: LoadedGenerator, layer: str, seed: int, index: int, mask: np.ndarray, mode: str, units: Sequence[int]) -> Painted:
    """Add or remove `units` of `layer` inside `mask` (bool HxW, image pixels) on sample `index` (`dissect.paint`)."""
    from .dissect import paint

    if int(index) < 0:
        raise UserError(f"the sample index must be >= 0, got {index}.")
    m = np.asarray(mask, bool)
    if not m.any():
        raise UserError("the region is empty; draw or box where to paint.")
    before, after = paint(g, layer, [int(u) for u in units], m.astype(np.float32), mode, int(seed), int(index))
    if before.shape[:2] != m.shape:
        raise UserError(f"the region is {m.shape[1]}x{m.shape[0]} pixels but the images are {before.shape[1]}x{before.shape[0]}.")
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(-1) / 255.0
    inside = float(diff[m].mean())
    outside = float(diff[~m].mean()) if (~m).any() else float("nan")
    return Painted(layer, int(index), mode, [int(u) for u in units], before, after, m, inside, outside)


def region_outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 0, 255)) -> np.ndarray:
    """A copy of `image` (uint8 HxWx3) with the border pixels of the bool region `mask` drawn in `colour`."""
    m = np.asarray(mask, bool)
    p = np.pad(m, 1)
    inner = p[2:, 1:-1] & p[:-2, 1:-1] & p[1:-1, 2:] & p[1:-1, :-2]
    out = np.array(image, copy=True)
    out[m & ~inner] = colour
    return out


def bundled_review_applies(store: Any, run_id: int, fingerprint: str, layer: str, seed: int) -> bool:
    """Whether the maintainers' review of the example fits this run: the unmodified example, its layer and seed, no labels yet."""
    from .example import bundled_review

    review = bundled_review()
    if (fingerprint, layer, int(seed)) != (review["fingerprint"], review["layer"], int(review.get("seed", 0))):
        return False
    c = store.counts(run_id)
    return not (c["flag_events"] or c["masked"] or len(store.unit_decisions(run_id)))


def load_bundled_review(store: Any, run_id: int, fingerprint: str, layer: str, seed: int) -> dict[str, Any] | None:
    """Import the maintainers' flags and approvals into an empty run of the example (`example.seed_bundled_review`); None if it does not fit."""
    from .example import seed_bundled_review

    if not bundled_review_applies(store, run_id, fingerprint, layer, seed):
        return None
    return seed_bundled_review(store, run_id, fingerprint, layer)
