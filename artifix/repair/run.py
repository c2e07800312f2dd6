"""The repair end to end: remove the plan's units, write the verified cleaned generator, measure it, and write
the manifest, model card and report next to it (`manifest.py`), as one transaction (`repair`)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import intervals, log
from ..concepts.dissect import concept_collateral
from ..errors import UserError
from ..io import check_output_folder, output_folder
from ..ledger import Ledger
from ..model.generator import LoadedGenerator
from ..model.images import grid, save_png
from ..model.trace import Trace
from ..review.classifier import differentiable_score
from .export import export_cleaned
from .ksweep import sweep
from .manifest import build_manifest, write_manifest
from .measurement import measure
from .plan import RepairPlan, Say, _edits, optimise_alpha, random_control


def check_repair_out(g: LoadedGenerator, out_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Refuse (UserError) an output folder artifix may not replace, or one holding the checkpoint under repair."""
    out = check_output_folder(out_dir)
    src = checkpoint if checkpoint is not None else g.spec.checkpoint
    if src and out.resolve() in Path(src).resolve().parents:
        raise UserError(f"--out {out} holds the checkpoint under repair ({src}), which replacing the folder would delete; "
                        "choose another folder.")
    return out


def repair(g: LoadedGenerator, plan: RepairPlan, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Remove the plan's units and write the cleaned generator with its proof into `out_dir` as one transaction.

    The folder appears (or replaces an earlier repair) only once complete: see `artifix.io.output_folder`.
    Keyword arguments are those of `repair_into`.
    """
    check_repair_out(g, out_dir, kwargs.get("checkpoint"))
    with output_folder(out_dir, command="repair") as folder:
        manifest = repair_into(g, plan, folder.path, **kwargs)
    return folder.final(manifest)


def repair_into(g: LoadedGenerator, plan: RepairPlan, out_dir: str | Path, *, seed: int = 0, n: int = 1000,
           flagged: Sequence[int] = (), clean: Sequence[int] = (), clf: Any = None, real: Any = None, channels: int | Mapping[str, int],
           checkpoint: str | Path | None = None, metrics: str = "fd,kid,swd", high_pool: int | None = None,
           optimise: bool = False, run_sweep: bool = False, sweep_n: int | None = None, inception_weights: str | None = None,
           segmenter: Any = None, collateral_n: int = 200, cache: str | None = None, say: Say = log.say,
           confidence: float = intervals.DEFAULT_CONFIDENCE, skipped: Sequence[str] = ()) -> dict[str, Any]:
    """Remove the plan's units, write the verified cleaned generator and the proof next to it; returns the manifest."""
    t0 = time.time()
    out = Path(out_dir)
    led = Ledger(g, seed, cache)
    sweep_res = None
    if run_sweep:
        sweep_res = sweep(g, plan, seed, sweep_n or n, clf, real, metrics="fd,swd" if metrics else "", cache=cache, say=say,
                          confidence=confidence, ledger=led)
        plan = _keep_swept(plan, sweep_res, say)
    history: list[dict[str, float]] = []
    if optimise:
        plan, history = _optimised(g, plan, clf, seed, flagged, say)
    control = random_control(plan, channels, seed)
    say(f"removing {plan.n_units} units ({plan.source}): " + "; ".join(f"{l}: {u}" for l, u in plan.edits.items())
        + "; random control: " + "; ".join(f"{l}: {u}" for l, u in control.items()))
    exported = export_cleaned(g, plan.export_edits(), out, checkpoint, seed=seed)
    say(f"cleaned generator: max |G_clean - G_hooked| = {exported.max_abs_diff:.2e} ({'exact' if exported.exact else 'TorchScript'})")
    pool = (4 * n if high_pool is None else high_pool)
    results = measure(g, plan, control, seed, n, flagged, clf, real, metrics, high_pool=pool, inception_weights=inception_weights,
                      cache=cache, say=say, confidence=confidence, ledger=led)
    collateral = None
    if segmenter is not None and collateral_n > 0:
        collateral = _collateral(g, plan, segmenter, seed, collateral_n, confidence, say)
    _before_after(led, plan, control, flagged, clean, out)
    manifest = build_manifest(g, plan, control, exported, results, collateral=collateral, history=history, sweep=sweep_res,
                              skipped=skipped, confidence=confidence, started=t0, real=real, clf=clf, flagged=flagged, clean=clean)
    write_manifest(manifest, out)
    return manifest


def _keep_swept(plan: RepairPlan, sweep_res: Mapping[str, Any], say: Say) -> RepairPlan:
    """The plan cut to the sweep's k_best units of its primary layer (at least one)."""
    k = max(sweep_res["k_best"], 1)
    if k < len(plan.edits[plan.layer]):
        dropped = plan.edits[plan.layer][k:]
        say(f"the sweep keeps the first {k} units of {plan.layer}; not removing {dropped}")
        plan = plan.prefix(k)
    return plan


def _optimised(g: LoadedGenerator, plan: RepairPlan, clf: Any, seed: int, flagged: Sequence[int],
               say: Say) -> tuple[RepairPlan, list[dict[str, float]]]:
    """The plan with per-unit alphas optimised against the classifier on the flagged samples, and the steps' history."""
    if clf is None:
        raise UserError("--optimise-alpha needs the artifact classifier; train one with 'artifix classify train'.")
    alphas, history = optimise_alpha(g, plan, differentiable_score(clf, g.spec.range, logit=True), seed, list(flagged), say=say)
    plan = RepairPlan(plan.edits, plan.source, plan.approvals, alphas)
    say("optimised alphas: " + "; ".join(f"{l}: " + ", ".join(f"{u}={a:.2f}" for u, a in zip(plan.edits[l], plan.alpha(l))) for l in plan.layers))
    return plan, history


def _collateral(g: LoadedGenerator, plan: RepairPlan, segmenter: Any, seed: int, n: int, confidence: float,
                say: Say) -> dict[str, Any]:
    """What else the primary layer's removed units draw: each concept's pixels by the segmenter, before and after."""
    say(f"collateral: what else the removed units draw (segmenter, {n} samples)")
    with Trace(g.module, edit={l: a for l, a in plan.ablations().items() if l != plan.layer}) if len(plan.layers) > 1 else nullcontext():
        return {"layer": plan.layer, "n": n,
                "concepts": concept_collateral(g, plan.layer, plan.edits[plan.layer], segmenter, seed, n, confidence=confidence)}


def _before_after(led: Ledger, plan: RepairPlan, control: Mapping[str, Sequence[int]], flagged: Sequence[int],
                  clean: Sequence[int], out: Path) -> None:
    """before_after_{flagged,clean}.png: rows before, repaired, random control, for up to 8 samples of each;
    before_after_random.png (samples 0-7) when the run has no flags."""
    ids_f, ids_c = list(flagged)[:8], list(clean)[:8]
    sets = (("flagged", ids_f), ("clean", ids_c)) if ids_f or ids_c else (("random", list(range(8))),)
    for name, ids in sets:
        if ids:
            rows = [led.images(e, ids) for e in (None, plan.ablations(), _edits(control))]
            save_png(out / f"before_after_{name}.png", grid(np.concatenate(rows), ncol=len(ids), scale=2))
