"""Repair page: remove the approved units, metrics before/after with intervals and the random-unit control,
FD / SWD / artifact rate against the number of units removed, and downloads of the cleaned generator and report.

It calls `artifix.session.repair_approved`, which does what `artifix repair` does (plan from the approvals,
`artifix.repair.repair`), and reads the manifest that writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from artifix import session
from artifix.errors import UserError
from artifix.provenance import markdown as provenance_markdown
from artifix.results import metric_rows, rate_row
from artifix.verdict import repair_verdict, units_phrase

from .progress_ui import stages
from .state import Dash


def out_dir(d: Dash) -> Path:
    """Where the repair writes (the --out option, default artifix-repair as the CLI)."""
    return Path(d.opts.get("out") or "artifix-repair")


def load_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest.json of a repair folder, or None."""
    p = folder / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _fmt_ci(ci: Any) -> str:
    return "" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def table_rows(met: dict[str, Any]) -> list[dict[str, Any]]:
    """The model card's rows (`results.metric_rows`) on the random samples, plus the artifact rate on the flagged samples."""
    rows = metric_rows(met, "artifact rate (random samples)")
    if met.get("artifact_rate_flagged"):
        rows.append(rate_row("artifact rate (flagged samples)", met["artifact_rate_flagged"]))
    return rows


def metrics_table(m: dict[str, Any], subset: str | None = None) -> pd.DataFrame:
    """One row per metric (`artifix.results.metric_rows`, as the model card): before, after, change, the control's change.

    With `subset` (e.g. "high_activation"), the rows of that sample subset."""
    met = m.get("metrics", {})
    rows = [{"metric": r["metric"], "before": r["before"], "after": r["after"], "change": r["change"], "change 95% CI": _fmt_ci(r["change_ci"]),
             "random control change": r["control_change"], "control 95% CI": _fmt_ci(r["control_ci"])}
            for r in (table_rows(met) if subset is None else metric_rows(met["subsets"][subset]))]
    return pd.DataFrame(rows)


def verdict_block(m: dict[str, Any], subset: str | None = None) -> None:
    """The verdict line, the disagreement sentence and the notes on what was not measured."""
    v = repair_verdict(m, subset=subset)
    st.markdown(f"**{v.line()}**")
    if v.disagreement:
        st.warning(v.disagreement, icon=":material/compare_arrows:")
    if v.skipped and subset is None:
        st.caption("Not measured:  \n" + "  \n".join(f"- {s}" for s in v.skipped))


def sweep_frame(m: dict[str, Any]) -> pd.DataFrame | None:
    """Long table (k, metric, value, lo, hi) from the manifest's k sweep, with the k = 0 baseline; None without a sweep.

    `artifix.repair.sweep` writes {"rows": [{"k", "fd": {"value", "ci", "marginal", ...}, "swd", "artifact_rate"}], ...};
    a plain list of rows is read too.
    """
    sweep = m.get("sweep")
    if not sweep:
        return None
    steps = sweep.get("rows", []) if isinstance(sweep, dict) else list(sweep)
    rows = []
    for i, s in enumerate(steps):
        for name in ("fd", "swd", "artifact_rate"):
            r = s.get(name)
            if not isinstance(r, dict) or r.get("value") is None:
                continue
            ci = r.get("ci") or [None, None]
            rows.append({"k": int(s["k"]), "metric": name, "value": float(r["value"]), "lo": ci[0], "hi": ci[1]})
            if i == 0 and int(s["k"]) == 1:  # the generator before any removal
                base = sweep.get("before_artifact_rate") if name == "artifact_rate" and isinstance(sweep, dict) else None
                if base:
                    rows.append({"k": 0, "metric": name, "value": float(base["value"]), "lo": base["ci"][0], "hi": base["ci"][1]})
                elif r.get("marginal") is not None and name != "artifact_rate":
                    rows.append({"k": 0, "metric": name, "value": float(r["value"]) - float(r["marginal"]), "lo": None, "hi": None})
    return pd.DataFrame(rows).sort_values(["metric", "k"]).reset_index(drop=True) if rows else None


def sweep_chart(df: pd.DataFrame):
    """FD, SWD and artifact rate against k, one panel each, with their intervals."""
    import altair as alt  # on first use: 0.4-0.6 s of import that every page's first load would otherwise pay

    base = alt.Chart(df).encode(x=alt.X("k:Q", title="units removed (k)", axis=alt.Axis(tickMinStep=1)))
    band = base.mark_area(opacity=0.25).encode(y=alt.Y("lo:Q", title=None, scale=alt.Scale(zero=False)), y2="hi:Q")
    line = base.mark_line(point=True).encode(y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
                                             tooltip=["k", "metric", alt.Tooltip("value:Q", format=".4f"), "lo", "hi"])
    return (band + line).properties(width=260, height=200).facet(column=alt.Column("metric:N", title=None)).resolve_scale(y="independent")


def run_repair(d: Dash, n: int, sweep: bool = False) -> dict[str, Any] | None:
    """Run the repair on the approved units (spinner); the manifest, or None after showing the error."""
    rep = st.session_state.get("last_report")  # the Units page's ranking orders the sweep, when there is one
    ranking = [int(u) for u in rep.table["unit"]] if rep is not None and getattr(rep, "layer", None) == d.layer else None
    try:
        with stages(f"repairing: exporting the cleaned generator, then {n} samples before / after / random control and their metrics"
                        + (", and the k sweep" if sweep else "")):
            with d.using_g() as g:
                return session.repair_approved(g, d.layer, d.store, d.run_id, out_dir(d), seed=d.seed, n=n, clf=d.classifier(),
                                               real=d.opts.get("real"), ranking=ranking, sweep=sweep, sweep_n=d.opts.get("sweep_n"),
                                               high_pool=d.opts.get("high_pool"), cache=d.cache,
                                               inception_weights=d.opts.get("inception_weights"))
    except UserError as e:
        st.error(str(e))
        return None


def render(d: Dash) -> None:
    """The Repair page."""
    st.header("Repair and metrics")
    approved = [a for a in d.store.approved_units(d.run_id) if a.layer == d.layer]
    folder = out_dir(d)
    c = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
    if approved:
        c[0].markdown("Approved for removal: " + ", ".join(f"**{a.unit}** (by {a.reviewer})" for a in approved))
    else:
        c[0].info("No approved units yet: approve proposed removals on the Approvals page.")
    n = c[1].number_input("samples", min_value=8, max_value=100_000, value=int(d.opts["repair_n"]), step=100, key="repair_n",
                          help="samples before / after (same seeds) for the metrics")
    sweep = c[2].checkbox("k sweep", value=bool(d.opts.get("sweep")), key="sweep",
                          help="also remove the approved units one at a time (in ranking order) and measure each step")
    if c[3].button("Run repair", type="primary", disabled=not approved, icon=":material/build:", key="run-repair",
                   help="disabled: no approved units of this layer yet (approve some on the Approvals page)" if not approved
                   else "remove the approved units and measure before / after"):
        run_repair(d, int(n), sweep)
    m = load_manifest(folder)
    if m is None:
        st.caption(f"No repair report in `{folder}/` yet.")
        return
    st.subheader(f"Report in `{folder}/`")
    st.markdown(f"Removed **{units_phrase(len(m['units']))}** of `{m['layer']}` ({m['selection']}): {m['units']}; random-unit control: "
                f"{m.get('random_control_units')}. Cleaned weights verified: max |G_clean − G_hooked| = "
                f"{m['export']['max_abs_diff']:.2e}. Metrics on {m['metrics']['n']} paired samples; negative change = closer to the reference.")
    if m.get("skipped_measures"):
        st.info(f"No reference data (--real) for this generator: skipped {', '.join(x.upper() for x in m['skipped_measures'])}; "
                "the table holds the reference-free measures only (artifact rate, pixel change).")
    fmt = {k: st.column_config.NumberColumn(format="%.4f") for k in ("before", "after", "change", "random control change")}
    verdict_block(m)
    st.dataframe(metrics_table(m), hide_index=True, width="stretch", column_config=fmt, key="metrics-random")
    subsets = (m.get("metrics") or {}).get("subsets") or {}
    if "high_activation" in subsets:
        st.markdown(f"**On the samples where the removed units fire most** ({subsets['high_activation'].get('samples')}):")
        verdict_block(m, "high_activation")
        st.dataframe(metrics_table(m, "high_activation"), hide_index=True, width="stretch", column_config=fmt, key="metrics-high")
    if m.get("provenance"):
        with st.expander("Provenance: reference data, feature space, classifier, flags, version, device"):
            st.markdown(provenance_markdown(m["provenance"]).replace("## Provenance\n", ""))
    else:
        st.caption("This report records no provenance (written by an older artifix).")
    st.subheader("Downloads")
    cols = st.columns(4)
    # the cleaned generator's files sit next to the manifest; only files of the report folder are offered
    files = [(f"cleaned generator ({role})", folder / Path(f["path"]).name) for role, f in (m.get("export", {}).get("files") or {}).items()
             if isinstance(f, dict) and f.get("path")]
    files += [("report", folder / "report.md"), ("model card", folder / "MODEL_CARD.md"), ("manifest", folder / "manifest.json")]
    for i, (role, p) in enumerate(files):
        if p.is_file():
            cols[i % 4].download_button(f"{role}: {p.name}", p.read_bytes(), file_name=p.name, key=f"dl-{i}",
                                        icon=":material/download:")
    st.subheader("Against the number of units removed")
    df = sweep_frame(m)
    if df is None:
        st.info("No sweep in this report: the repair measured one set of units, so there is no curve against k.")
    else:
        st.altair_chart(sweep_chart(df))
        sw = m["sweep"]
        if isinstance(sw, dict) and "k_best" in sw:
            st.caption(f"Units removed in order {sw.get('order')}; stop rule: {sw.get('criterion')} must drop beyond its paired 95 % "
                       f"interval; k_best = {sw['k_best']}" + (f", stopped at k = {sw['stopped_at']}" if sw.get("stopped_at") else "")
                       + f"; {sw.get('n')} samples per step. Shaded bands: 95 % intervals, where the report has them.")
    imgs = [p for p in (folder / "before_after_flagged.png", folder / "before_after_clean.png") if p.is_file()]
    if imgs:
        st.subheader("Before / after")
        st.caption("Rows: before; approved units removed; random-unit control.")
        for col, p in zip(st.columns(len(imgs), gap="large"), imgs):
            col.image(str(p), caption=f"{p.stem.split('_')[-1]} samples", width="stretch")
