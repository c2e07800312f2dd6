"""The gate's outputs: the JSON report, JUnit XML (one test case per criterion) and a Markdown summary."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..gate.criteria import FOREST_NAME, JUNIT_NAME, REPORT_NAME, SUMMARY_NAME
from ..gate.judge import _fmt
from ..io import output_folder, write_json_atomic, write_text_atomic
from ..model.images import save_png
from ..provenance import markdown as provenance_markdown
from ..verdict import gate_verdict
from . import plots


def write_outputs(report: Mapping[str, Any], out: Path) -> None:
    """The JSON report, JUnit XML and Markdown summary into `out`; the summary is appended to $GITHUB_STEP_SUMMARY too."""
    md = markdown_summary(report)
    rows = plots.gate_rows(report["criteria"])
    with output_folder(out, command="gate") as folder:  # the files appear together, or not at all
        if rows:  # a picture of each criterion's worsening with its interval beside its allowed worsening
            img = plots.forest_plot(rows, "Candidate against baseline (interval at each criterion's confidence)",
                                    "worsening, % of the baseline's value (red: allowed worsening)", ("change", None))
            save_png(folder.path / FOREST_NAME, np.asarray(img))
            md += f"\n![each criterion's change with its interval ({FOREST_NAME} in the gate's folder)]({FOREST_NAME})\n"
        write_json_atomic(folder.path / REPORT_NAME, report)
        write_text_atomic(folder.path / JUNIT_NAME, junit_xml(report))
        write_text_atomic(folder.path / SUMMARY_NAME, md)
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step:
        with open(step, "a", encoding="utf-8") as fh:
            fh.write(md + "\n")


def junit_xml(report: Mapping[str, Any]) -> str:
    """JUnit XML with one test case per criterion (fail -> <failure>; warn -> a note in <system-out>)."""
    rows = report["criteria"]
    suite = ET.Element("testsuite", name="artifix gate", tests=str(len(rows)),
                       failures=str(sum(r["status"] == "fail" for r in rows)), errors="0", skipped="0")
    for r in rows:
        case = ET.SubElement(suite, "testcase", classname=f"artifix.gate.{r['metric']}", name=r["name"])
        if r["status"] == "fail":
            ET.SubElement(case, "failure", message=r["reason"], type="regression").text = r["reason"]
        else:
            ET.SubElement(case, "system-out").text = f"{r['status'].upper()}: {r['reason']}"
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


_ICON = {"pass": "✅ pass", "fail": "❌ fail", "warn": "⚠️ warn", "measured": "📏 measured"}


def markdown_summary(report: Mapping[str, Any]) -> str:
    """A short Markdown summary: verdict, what was compared, and one table row per criterion."""
    rows = report["criteria"]
    c = report["counts"]
    verdict = {"pass": "passed", "fail": "FAILED", "measured": "measured (no verdict)"}[report["status"]]
    base = report.get("baseline")
    against = ("no baseline" if not base else
               f"baseline checkpoint `{base['path']}` (paired, same seeds)" if base["kind"] == "checkpoint"
               else f"stored baseline report `{base['path']}` (unpaired)")
    lines = [f"## artifix gate: {verdict}", "",
             f"Candidate `{report['candidate']['fingerprint']}` against {against}; {report['protocol']['n']} samples, "
             f"seed {report['seed']}. {c['pass']} passed, {c['warn']} warned, {c['fail']} failed.", "",
             "| criterion | tier | candidate | baseline | change [CI] | threshold | result |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "measured":
            lines.append(f"| {r['name']} | {r['tier']} | {r['candidate']:.4g} ± {r['candidate_se']:.2g} | | | | {_ICON['measured']} |")
            continue
        lo, hi = r["ci"]
        if r["against"] == "baseline":
            basev, change, thr = f"{r['baseline']:.4g}", f"{r['change']:+.4g} [{lo:+.4g}, {hi:+.4g}]", f"worsening ≤ {_fmt(r['threshold'])}"
        else:
            basev, change, thr = "", f"[{lo:.4g}, {hi:.4g}]", ("≤ " if r["direction"] == "lower" else "≥ ") + _fmt(r["threshold"])
        note = " (inconclusive)" if r.get("inconclusive") else ""
        lines.append(f"| {r['name']} | {r['tier']} | {r['candidate']:.4g} | {basev} | {change} | {thr} | {_ICON[r['status']]}{note} |")
    lines += ["", "A criterion fails only when its whole confidence interval lies beyond the threshold (significant regression)."]
    if report.get("criteria") is not None:
        lines += ["", gate_verdict(report).markdown()]
    if report.get("provenance"):
        lines += ["", provenance_markdown(report["provenance"]).replace("## Provenance", "### Provenance")]
    return "\n".join(lines) + "\n"
