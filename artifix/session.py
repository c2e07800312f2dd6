"""The dashboard's view of the workflow: the `artifix.workflow` operations under the names the pages use, plus
previews (before/after, painting) and the one-layer repair of the approvals.

The shared rules (runs, queue, scoring, proposals, classifier training, bundled review, paint units, outlines)
live in `artifix.workflow`; nothing here re-implements them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import workflow as W
from .concepts.dissect import LayerDissection, cached_dissect, paint
from .errors import UserError
from .model.generator import LoadedGenerator, images_at
from .model.trace import Trace, ablation
from .profiles import profile_for
from .repair import plan_from_store, repair
from .units.scoring import trace_batches

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


open_run = W.register  # (store, g, layer, seed, n) -> run id
flagged_and_clean = W.flagged_and_clean
label_state = W.label_state
Queue = W.Queue
review_queue = W.review_queue
score_run = W.score_run
propose_top = W.propose_top
train_from_store = W.train_from_store
reviewer_name = W.reviewer_name
region_outline = W.region_outline
save_painted_mask = W.save_painted_mask


def ablated_images(g: LoadedGenerator, layer: str, seed: int, units: Sequence[int], ids: Sequence[int], alpha: float = 1.0) -> np.ndarray:
    """The samples `ids` with `units` of `layer` ablated (uint8 NHWC); the plain samples when `units` is empty."""
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
    return int(next(iter(trace_batches(g, layer, seed, [0])))[1].shape[1])


def repair_approved(g: LoadedGenerator, layer: str, store: Any, run_id: int, out: str | Path, *, seed: int, n: int,
                    clf: Any = None, real: Any = None, ranking: Sequence[int] | None = None, sweep: bool = False,
                    sweep_n: int | None = None, high_pool: int | None = None, cache: str | None = None, say: Say = _quiet,
                    **kwargs: Any) -> dict[str, Any]:
    """Remove the run's approved units of `layer` (as `artifix repair` does for one layer); returns the manifest.

    With `sweep`, the approved units are removed one at a time in `ranking` order and the manifest holds the sweep.
    """
    if g.scripted:
        raise UserError("repair needs a Python generator (--generator 'module:callable'), not a TorchScript file.")
    if n <= 0:
        raise UserError(f"repair needs a positive number of samples, got {n}.")
    plan = plan_from_store(store, run_id, layer, list(ranking) if ranking is not None else None)
    flagged, clean = flagged_and_clean(store, run_id)
    measures = W.repair_measures(profile_for(g.spec), real)
    if measures.sentence():
        say(measures.sentence())
    return repair(g, plan, Path(out), seed=seed, n=n, flagged=flagged, clean=clean, clf=clf, real=measures.real,
                  metrics=measures.metrics, skipped=measures.skipped,
                  channels={layer: layer_channels(g, layer, seed)}, high_pool=4 * n if high_pool is None else high_pool,
                  run_sweep=sweep, sweep_n=sweep_n, cache=cache, say=say, **kwargs)


def approvers_set(text: str | Sequence[str] | None) -> set[str] | None:
    """Parse the configured approvers ('alice,bob' or a list); None means anyone may approve."""
    if text is None:
        return None
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    return {s for s in names if s}


# ------------------------------------------------------------------------- concepts and painting (issue 11)


def concept_segmenter(g: LoadedGenerator, path: str | Path | None = None, classes: str | Sequence[str] | None = None) -> Any:
    """The segmenter `path` names, else the generator profile's, or None when there is none (`workflow.segmenter_for`)."""
    return W.segmenter_for(profile_for(g.spec), path, classes)


def layer_dissection(g: LoadedGenerator, layer: str, segmenter: Any, seed: int, n: int, cache: str | Path) -> Any:
    """The concept dissection of one layer (`dissect.cached_dissect`: on disk under `cache`, keyed by content).

    The result is passed through its JSON form (IoUs rounded to 5 decimals), so a fresh dissection and one read back
    from the cache rank units identically (near-ties could otherwise swap, e.g. in `top_units`).
    """
    if n <= 0:
        raise UserError(f"--dissect-n must be a positive number of samples, got {n}.")
    return LayerDissection.from_json(cached_dissect(g, [layer], segmenter, int(seed), int(n), cache)[layer].to_json())


def paint_layers(g: LoadedGenerator, run_layer: str) -> tuple[list[str], str]:
    """The layers offered for painting and the default one (`workflow.paint_layers` with the generator's profile)."""
    return W.paint_layers(g, profile_for(g.spec), run_layer)


def paint_units(text: str | None = None, dissection: Any = None, concept: str | None = None, k: int = 20) -> list[int]:
    """The units to paint with: the explicit list in `text` ('3,17'), else the top `k` units of `concept` in `dissection`."""
    if text and str(text).strip():
        return W.parse_units(text)
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


def bundled_review_applies(store: Any, run_id: int, g: LoadedGenerator, layer: str, seed: int) -> bool:
    """Whether the generator profile's bundled review fits this run: its generator, layer and seed, and no labels yet."""
    return W.bundled_review_applies(profile_for(g.spec), store, run_id, g.fingerprint, layer, seed)


def load_bundled_review(store: Any, run_id: int, g: LoadedGenerator, layer: str, seed: int) -> dict[str, Any] | None:
    """Import the profile's bundled flags and approvals into an empty run they fit; None if they do not fit."""
    return W.import_bundled_review(profile_for(g.spec), store, run_id, g.fingerprint, layer, seed)
