"""The repair end to end: remove the plan's units, write the verified cleaned generator, measure it, and write
the manifest, model card and report next to it, as one transaction (`repair`)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import __version__, intervals, log
from ..errors import UserError
from ..generator import LoadedGenerator
from ..images import grid, save_png
from ..io import check_output_folder, output_folder, write_json_atomic, write_text_atomic
from ..ledger import Ledger
from ..provenance import provenance
from ..trace import Trace
from ..verdict import repair_verdict
from .card import model_card, report_pictures
from .export import export_cleaned
from .ksweep import sweep
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
        k = max(sweep_res["k_best"], 1)
        if k < len(plan.edits[plan.layer]):
            dropped = plan.edits[plan.layer][k:]
            say(f"the sweep keeps the first {k} units of {plan.layer}; not removing {dropped}")
            plan = plan.prefix(k)
    history: list[dict[str, float]] = []
    if optimise:
        if clf is None:
            raise UserError("--optimise-alpha needs the artifact classifier; train one with 'artifix classify train'.")
        from ..classifier import differentiable_score

        alphas, history = optimise_alpha(g, plan, differentiable_score(clf, g.spec.range, logit=True), seed, list(flagged), say=say)
        plan = RepairPlan(plan.edits, plan.source, plan.approvals, alphas)
        say("optimised alphas: " + "; ".join(f"{l}: " + ", ".join(f"{u}={a:.2f}" for u, a in zip(plan.edits[l], plan.alpha(l))) for l in plan.layers))
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
        from ..dissect import concept_collateral

        say(f"collateral: what else the removed units draw (segmenter, {collateral_n} samples)")
        with Trace(g.module, edit={l: a for l, a in plan.ablations().items() if l != plan.layer}) if len(plan.layers) > 1 else nullcontext():
            collateral = {"layer": plan.layer, "n": collateral_n,
                          "concepts": concept_collateral(g, plan.layer, plan.edits[plan.layer], segmenter, seed, collateral_n,
                                                         confidence=confidence)}
    ids_f, ids_c = list(flagged)[:8], list(clean)[:8]
    for name, ids in (("flagged", ids_f), ("clean", ids_c)):
        if ids:
            rows = [led.images(e, ids) for e in (None, plan.ablations(), _edits(control))]
            save_png(out / f"before_after_{name}.png", grid(np.concatenate(rows), ncol=len(ids), scale=2))
    manifest = {
        "artifix_version": __version__, "source": exported.input, "fingerprint_before": g.fingerprint,
        "fingerprint_after": exported.fingerprint_after, "layer": plan.layer, "units": plan.units, "alphas": plan.alpha(plan.layer),
        "layers": plan.layers, "edits": plan.to_json(), "selection": plan.source, "approvals": plan.approvals,
        "random_control": control, "random_control_units": control[plan.layer], "export": exported.to_json(),
        "metrics": results, "collateral": collateral, "alpha_optimisation": history or None, "sweep": sweep_res,
        "skipped_measures": list(skipped), "confidence": float(confidence), "seconds": round(time.time() - t0, 1),
        "provenance": provenance(real=real, metrics=results["repair"], clf=clf, flagged=flagged, clean=clean,
                                 device=str(next(g.module.parameters()).device) if any(True for _ in g.module.parameters()) else "cpu"),
    }
    manifest["verdict"] = repair_verdict(manifest).to_json()
    write_json_atomic(out / "manifest.json", manifest)
    forest_md, sweep_md = report_pictures(manifest, out)
    card = model_card(manifest) + forest_md
    write_text_atomic(out / "MODEL_CARD.md", card)
    write_text_atomic(out / "report.md", card + sweep_md +
                      "\n## Before / after\n\nRows: before; approved units removed; "
                      "random-unit control.\n\n![flagged](before_after_flagged.png)\n\n![clean](before_after_clean.png)\n")
    return manifest
