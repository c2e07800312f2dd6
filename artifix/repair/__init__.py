"""Repair: remove approved units, measure before/after (with a random-unit control), write a cleaned generator.

The data flow, one module a step:

    plan.py         which units go, how strongly (approved / auto / several layers, optimised alphas),
                    and the random-unit control of the same size
    ksweep.py       optional: the k sweep trims the plan to the units that help beyond their interval
    export.py       the cleaned generator in the input's checkpoint layout, built from
        edits.py        the edits checked and normalised; how G is called
        rules.py        the exact rules baking one layer's edit, tried in order, each applied or refused
        weights.py      module kinds and the in-place weight rewrites the rules use
        bake.py         all layers baked into one copy of G
        verification.py the copy checked against the hooked original; the TorchScript fallback
    measurement.py  the proof: paired before/after metrics, artifact rates, pixel change
    manifest.py     the manifest (what was removed, the export, the proof, the verdict) and its files
                    (the model card and its plots are drawn by artifix.report.card)
    run.py          `repair`: all of the above into one output folder, as one transaction
"""

from __future__ import annotations

from .bake import BakeResult, LayerBake, bake_ablation, bake_edits
from .export import ExportResult, export_cleaned
from .ksweep import sweep
from .measurement import fd_recovery, high_activation_samples, measure, paired_rate_diff, pixel_change
from .plan import RepairPlan, combine, optimise_alpha, plan_auto, plan_from_store, random_control, sequential_auto
from .run import check_repair_out, repair, repair_into
from .verification import TOLERANCE, VERIFY_N, hooked_torchscript, verify

__all__ = [
    "BakeResult", "ExportResult", "LayerBake", "RepairPlan", "TOLERANCE", "VERIFY_N", "bake_ablation", "bake_edits",
    "check_repair_out", "combine", "export_cleaned", "fd_recovery", "high_activation_samples", "hooked_torchscript",
    "measure", "optimise_alpha", "paired_rate_diff", "pixel_change", "plan_auto", "plan_from_store",
    "random_control", "repair", "repair_into", "sequential_auto", "sweep", "verify",
]
