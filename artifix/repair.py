"""Repair: remove approved units, measure before/after (with a random-unit control), write a cleaned generator.

First version: full ablation of the approved units of one layer (or the top K of the ranking with `auto`),
paired metrics on the same seeds for (a) random samples and (b) the flagged samples, a random-unit control of
the same size drawn from the other units, the cleaned generator from `export.export_cleaned` (weights baked and
verified against the hooks), and a manifest, model card and report next to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .errors import UserError
from .export import export_cleaned
from .generator import LoadedGenerator, sample_batches
from .images import grid, save_png
from .io import write_json_atomic, write_text_atomic
from .report import table_markdown
from .generator import images_at
from .trace import Trace, ablation


@dataclass
class RepairPlan:
    """Which units go, and why: approvals from the label store, or the ranking's top K with `auto`."""

    layer: str
    units: list[int]
    source: str  # "approved" or "auto"
    approvals: list[dict[str, Any]]


def plan_from_store(store: Any, run_id: int, layer: str) -> RepairPlan:
    """The approved units of `layer`; a UserError when there are none (nothing unapproved is ever removed)."""
    approved = [a for a in store.approved_units(run_id) if a.layer == layer]
    if not approved:
        raise UserError(f"no approved units of layer {layer} in the label store; approve some (dashboard) "
                        "or pass --auto --k K to take the top of the ranking.")
    return RepairPlan(layer, sorted(int(a.unit) for a in approved), "approved",
                      [{"unit": int(a.unit), "reviewer": a.reviewer, "time": str(a.time), "note": a.note} for a in approved])


def plan_auto(ranking: Sequence[int], layer: str, k: int) -> RepairPlan:
    """The first k units of a ranking (explicit opt-in: --auto)."""
    if k <= 0:
        raise UserError(f"--k must be a positive number of units, got {k}.")
    return RepairPlan(layer, sorted(int(u) for u in ranking[:k]), "auto", [])


def random_control(plan: RepairPlan, channels: int, seed: int) -> list[int]:
    """As many random units as the plan removes, drawn from the units it keeps (seeded)."""
    others = [u for u in range(channels) if u not in plan.units]
    if len(others) < len(plan.units):
        raise UserError(f"the layer has too few other units ({len(others)}) for a random control of {len(plan.units)}.")
    return sorted(int(u) for u in np.random.default_rng(seed).choice(others, len(plan.units), replace=False))


def _batches(g: LoadedGenerator, layer: str, units: list[int] | None, seed: int, n: int) -> list[np.ndarray]:
    if units:
        with Trace(g.module, edit={layer: ablation(units)}):
            return [im.numpy() for _, im in sample_batches(g, seed, 0, n, 64)]
    return [im.numpy() for _, im in sample_batches(g, seed, 0, n, 64)]


def _rate(p: np.ndarray, thr: float, seed: int, reps: int = 1000) -> dict[str, Any]:
    """Artifact rate (p >= thr) with a percentile bootstrap 95 % interval."""
    hits = (p >= thr).astype(float)
    rng = np.random.default_rng(seed)
    boots = hits[rng.integers(0, len(hits), (reps, len(hits)))].mean(1) if len(hits) else np.zeros(1)
    return {"value": float(hits.mean()) if len(hits) else float("nan"), "ci": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
            "n": int(len(hits))}


def measure(g: LoadedGenerator, plan: RepairPlan, control: list[int], seed: int, n: int, flagged: Sequence[int],
            clf: Any = None, real: Any = None, metrics: str = "fd,kid,swd", say: Callable[[str], None] = print) -> dict[str, Any]:
    """Paired before/after metrics on the same seeds for the repair and for the random-unit control."""
    from .metrics import paired_compare

    say(f"sampling {n} images: before, after, random control")
    before = _batches(g, plan.layer, None, seed, n)
    after = _batches(g, plan.layer, plan.units, seed, n)
    ctrl = _batches(g, plan.layer, control, seed, n)
    say("metrics: repair vs before")
    res: dict[str, Any] = {"n": n, "seed": seed,
                           "repair": paired_compare(iter(before), iter(after), n=n, metrics=metrics, real=real, seed=seed),
                           "control": None}
    say("metrics: random control vs before")
    res["control"] = paired_compare(iter(before), iter(ctrl), n=n, metrics=metrics, real=real, seed=seed)
    if clf is not None:
        rates = {}
        for name, sets in (("before", before), ("after", after), ("control", ctrl)):
            rates[name] = _rate(clf.predict_proba(np.concatenate(sets)), clf.threshold, seed)
        res["artifact_rate"] = rates
        if flagged:
            fl = {}
            imgs = {"before": images_at(g, seed, list(flagged))}
            with Trace(g.module, edit={plan.layer: ablation(plan.units)}):
                imgs["after"] = images_at(g, seed, list(flagged))
            with Trace(g.module, edit={plan.layer: ablation(control)}):
                imgs["control"] = images_at(g, seed, list(flagged))
            for name, im in imgs.items():
                fl[name] = _rate(clf.predict_proba(im), clf.threshold, seed)
            res["artifact_rate_flagged"] = fl
    return res


def repair(g: LoadedGenerator, plan: RepairPlan, out_dir: str | Path, *, seed: int = 0, n: int = 1000,
           flagged: Sequence[int] = (), clean: Sequence[int] = (), clf: Any = None, real: Any = None, channels: int,
           checkpoint: str | Path | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Remove the plan's units, write the verified cleaned generator and the proof next to it; returns the manifest."""
    t0 = time.time()
    out = Path(out_dir)
    control = random_control(plan, channels, seed)
    say(f"removing {len(plan.units)} units of {plan.layer} ({plan.source}): {plan.units}; random control: {control}")
    exported = export_cleaned(g, {plan.layer: plan.units}, out, checkpoint, seed=seed)
    say(f"cleaned generator: max |G_clean - G_hooked| = {exported.max_abs_diff:.2e} ({'exact' if exported.exact else 'TorchScript'})")
    results = measure(g, plan, control, seed, n, flagged, clf, real, say=say)
    ids_f, ids_c = list(flagged)[:8], list(clean)[:8]
    for name, ids in (("flagged", ids_f), ("clean", ids_c)):
        if ids:
            rows = [images_at(g, seed, ids)]
            for units in (plan.units, control):
                with Trace(g.module, edit={plan.layer: ablation(units)}):
                    rows.append(images_at(g, seed, ids))
            save_png(out / f"before_after_{name}.png", grid(np.concatenate(rows), ncol=len(ids), scale=2))
    manifest = {
        "artifix_version": __version__, "source": exported.input, "fingerprint_before": g.fingerprint,
        "fingerprint_after": exported.fingerprint_after, "layer": plan.layer, "units": plan.units, "alphas": [1.0] * len(plan.units),
        "selection": plan.source, "approvals": plan.approvals, "random_control_units": control, "export": exported.to_json(),
        "metrics": results, "seconds": round(time.time() - t0, 1),
    }
    write_json_atomic(out / "manifest.json", manifest)
    write_text_atomic(out / "MODEL_CARD.md", _model_card(manifest))
    write_text_atomic(out / "report.md", _model_card(manifest) + "\n## Before / after\n\nRows: before; approved units removed; "
                      "random-unit control.\n\n![flagged](before_after_flagged.png)\n\n![clean](before_after_clean.png)\n")
    return manifest


def _model_card(m: dict[str, Any]) -> str:
    """The before/after table as Markdown."""
    rows = []
    for name, r in m["metrics"]["repair"].items():
        c = m["metrics"]["control"][name]
        rows.append({"metric": name, "before": r["a"], "after": r["b"], "change [95% CI]": "{:+.3f} [{:+.3f}, {:+.3f}]".format(r["diff"], *r["ci"]),
                     "random control change [95% CI]": "{:+.3f} [{:+.3f}, {:+.3f}]".format(c["diff"], *c["ci"])})
    for key in ("artifact_rate", "artifact_rate_flagged"):
        if key in m["metrics"]:
            r = m["metrics"][key]
            rows.append({"metric": key, "before": r["before"]["value"], "after": r["after"]["value"],
                         "change [95% CI]": "after CI [{:.3f}, {:.3f}]".format(*r["after"]["ci"]),
                         "random control change [95% CI]": "control {:.3f}".format(r["control"]["value"])})
    ex = m["export"]
    return "\n".join([
        "# Cleaned generator", "",
        f"Removed {len(m['units'])} units of `{m['layer']}` ({m['selection']}): {m['units']}. Random-unit control: {m['random_control_units']}.",
        f"Weights baked and verified: max |G_clean(z) - G_hooked(z)| = {ex['max_abs_diff']:.2e} on {ex['verify_n']} seeded latents "
        f"({'exact' if ex['exact'] else 'not exact: TorchScript export'}).", "",
        f"Metrics on the same {m['metrics']['n']} seeds (paired; negative change = closer to the reference):", "",
        table_markdown(rows, ["metric", "before", "after", "change [95% CI]", "random control change [95% CI]"]),
    ])
