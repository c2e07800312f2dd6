"""The repair's manifest (what was removed and why, the export, the proof, provenance, verdict) and the files
written from it: manifest.json, MODEL_CARD.md and report.md."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from ..io import write_json_atomic, write_text_atomic
from ..model.generator import LoadedGenerator
from ..provenance import provenance
from ..report.card import model_card, report_pictures
from ..verdict import repair_verdict
from .export import ExportResult
from .plan import RepairPlan


def build_manifest(g: LoadedGenerator, plan: RepairPlan, control: Mapping[str, list[int]], exported: ExportResult,
                   results: dict[str, Any], *, collateral: dict[str, Any] | None, history: list[dict[str, float]],
                   sweep: dict[str, Any] | None, skipped: Sequence[str], confidence: float, started: float, real: Any,
                   clf: Any, flagged: Sequence[int], clean: Sequence[int]) -> dict[str, Any]:
    """The manifest of one repair, with its verdict; `started` is the repair's time.time() at its start."""
    manifest = {
        "artifix_version": __version__, "source": exported.input, "fingerprint_before": g.fingerprint,
        "fingerprint_after": exported.fingerprint_after, "layer": plan.layer, "units": plan.units, "alphas": plan.alpha(plan.layer),
        "layers": plan.layers, "edits": plan.to_json(), "selection": plan.source, "approvals": plan.approvals,
        "random_control": control, "random_control_units": control[plan.layer], "export": exported.to_json(),
        "metrics": results, "collateral": collateral, "alpha_optimisation": history or None, "sweep": sweep,
        "skipped_measures": list(skipped), "confidence": float(confidence), "seconds": round(time.time() - started, 1),
        "provenance": provenance(real=real, metrics=results["repair"], clf=clf, flagged=flagged, clean=clean,
                                 device=str(next(g.module.parameters()).device) if any(True for _ in g.module.parameters()) else "cpu"),
    }
    manifest["verdict"] = repair_verdict(manifest).to_json()
    return manifest


def write_manifest(manifest: dict[str, Any], out: Path) -> None:
    """Write manifest.json, MODEL_CARD.md (with the forest plots) and report.md (also the sweep and before/after) into `out`."""
    write_json_atomic(out / "manifest.json", manifest)
    forest_md, sweep_md = report_pictures(manifest, out)
    card = model_card(manifest) + forest_md
    write_text_atomic(out / "MODEL_CARD.md", card)
    pictures = "".join(f"\n![{name}](before_after_{name}.png)\n" for name in ("flagged", "clean", "random")
                       if (out / f"before_after_{name}.png").is_file())  # only the sets the run had
    write_text_atomic(out / "report.md", card + sweep_md +
                      "\n## Before / after\n\nRows: before; approved units removed; random-unit control.\n" + pictures)
