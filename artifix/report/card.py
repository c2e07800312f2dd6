"""The repair's Markdown model card and its pictures (forest plots of each change, the k-sweep plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..model.images import save_png
from ..provenance import markdown as provenance_markdown
from ..results import metric_rows
from ..review.ab import card_section
from ..verdict import repair_verdict, units_phrase
from . import plots
from .tables import table_markdown


def _ci(d: dict[str, Any], key: str = "ci") -> str:
    ci = d.get(key)
    return "" if not ci else " [{:+.3f}, {:+.3f}]".format(*ci)


def _metric_rows(sub: dict[str, Any]) -> list[dict[str, Any]]:
    """`results.metric_rows` formatted for the model card."""
    return [{"metric": r["metric"], "before": r["before"], "after": r["after"],
             "change [CI]": f"{r['change']:+.3f}{_ci(r, 'change_ci')}", "random control change [CI]": f"{r['control_change']:+.3f}{_ci(r, 'control_ci')}"}
            for r in metric_rows(sub)]


def report_pictures(m: dict[str, Any], out: Path) -> tuple[str, str]:
    """Write forest_<subset>.png (each metric's change with its interval, repair beside the random control) and,
    after a sweep, k_sweep.png into `out`; returns the Markdown showing (the forest plots, the sweep plot)."""
    lines = ["", "## Change with its interval", ""]
    for name, sub in m["metrics"]["subsets"].items():
        rows = plots.repair_rows(sub)
        if not rows:
            continue
        title = f"Change after repair, {name.replace('_', '-')} samples (n = {m['metrics']['n']}, paired, 95 % intervals)"
        img = plots.forest_plot(rows, title, "change, % of the value before (negative = better)")
        save_png(out / f"forest_{name}.png", np.asarray(img))
        lines += [f"![forest plot, {name} samples](forest_{name}.png)", ""]
    sweep_md = ""
    if m.get("sweep") and m["sweep"].get("rows"):
        save_png(out / "k_sweep.png", np.asarray(plots.sweep_plot(m["sweep"])))
        sweep_md = ("\n## k sweep\n\n![k sweep](k_sweep.png)\n\nBlue points: the added unit helped (marginal gain "
                    "beyond its interval); grey: it did not; red line: k_best.\n")
    return "\n".join(lines) + "\n", sweep_md


def model_card(m: dict[str, Any]) -> str:
    """The manifest as a Markdown model card: what was removed, verification, before/after tables, sweep."""
    cols = ["metric", "before", "after", "change [CI]", "random control change [CI]"]
    ex, met = m["export"], m["metrics"]
    skipped = m.get("skipped_measures") or []
    edits = "; ".join(f"`{l}`: {e['units']}" + ("" if all(a == 1.0 for a in e["alphas"]) else f" (alphas {e['alphas']})")
                      for l, e in m["edits"].items())
    lines = ["# Cleaned generator", "",
             f"Removed {units_phrase(sum(len(e['units']) for e in m['edits'].values()))} ({m['selection']}): {edits}. "
             f"Random-unit control of the same size: " + "; ".join(f"`{l}`: {u}" for l, u in m["random_control"].items()) + ".",
             f"Weights baked and verified: max |G_clean(z) - G_hooked(z)| = {ex['max_abs_diff']:.2e} on {ex['verify_n']} seeded latents "
             f"({'exact' if ex['exact'] else 'not exact: TorchScript export'}).", ""]
    if skipped:
        lines += [f"No reference data: skipped {', '.join(x.upper() for x in skipped)}; only reference-free measures below.", ""]
    if m.get("approvals"):
        lines += ["Approvals: " + "; ".join(f"unit {a['unit']} by {a['reviewer']} at {a['time']}" + (f" ({a['note']})" if a.get("note") else "")
                                            for a in m["approvals"]), ""]
    for name, sub in met["subsets"].items():
        what = f"{met['n']} random samples" if name == "random" else f"the {met['n']} samples where the removed units fire most (of {sub['samples'].split(' of ')[-1].split(' ')[0]})"
        lines += [f"Metrics on {what}, same seeds before and after (paired, {met.get('confidence', 0.95):.0%} intervals; "
                  "negative change = closer to the reference / fewer artifacts):", "",
                  table_markdown(_metric_rows(sub), cols), ""]
    lines += [repair_verdict(m).markdown(), ""]
    if "artifact_rate_flagged" in met:
        r = met["artifact_rate_flagged"]
        lines += [f"Artifact rate on the {r['before']['n']} flagged samples: before {r['before']['value']:.3f}, after {r['after']['value']:.3f} "
                  f"[{r['after']['ci'][0]:.3f}, {r['after']['ci'][1]:.3f}], random control {r['control']['value']:.3f} "
                  "(the flagged samples trained the classifier, so 'before' is in-sample).", ""]
    col = m.get("collateral")
    if col:
        rows = [{"concept": r["concept"], "pixels before": r["pixels_before"], "pixels after": r["pixels_after"],
                 "removed [CI]": f"{100 * r['removed_fraction']:+.1f} %" + ("" if not r.get("removed_ci") else
                                     " [{:+.1f}, {:+.1f}]".format(*(100 * v for v in r["removed_ci"])))}
                for r in col["concepts"]]
        lines += [f"Collateral (what else the removed units of `{col['layer']}` draw): each concept's pixels by the segmenter on "
                  f"{col['n']} samples, before and after (negative = the concept grew):", "",
                  table_markdown(rows, ["concept", "pixels before", "pixels after", "removed [CI]"]), ""]
    ss = m.get("set_selection")
    if ss:
        lines += [f"Units chosen by set selection (greedy forward on the joint ablation); proposed layer `{ss['proposed_layer']}`: "
                  + "; ".join(f"`{r['layer']}` {r['units']} (J {r['objective']:+.4f})" for r in ss["rows"]), ""]
    if m.get("preference"):
        lines += [card_section(m["preference"])]
    sw = m.get("sweep")
    if sw:
        lines += [f"k sweep over `{sw['layer']}` on {sw['n']} samples (stop rule: {sw['criterion']} must drop beyond its paired interval); "
                  f"k_best = {sw['k_best']}:", ""]
        rows = []
        for r in sw["rows"]:
            row = {"k": r["k"], "unit added": r["unit_added"], "helped": "yes" if r["helped"] else "no"}
            for key in ("fd", "swd", "artifact_rate"):
                if key in r:
                    row[key] = f"{r[key]['value']:.3f} (marginal {r[key]['marginal']:+.3f}{_ci(r[key], 'marginal_ci')})"
            rows.append(row)
        lines += [table_markdown(rows, ["k", "unit added"] + [c for c in ("fd", "swd", "artifact_rate") if c in rows[0]] + ["helped"]), ""]
    if m.get("provenance"):
        lines += [provenance_markdown(m["provenance"])]
    return "\n".join(lines)
