"""The demo's first part: the example GAN's OWN defects (nothing planted), repaired by the unit set the natural
benchmark chose, shown before/after beside the random-unit control, with the recorded blind A/B result.

Cheap on purpose (a few forward passes): the set selection, the measurements and the A/B judgements are the
committed results of `bench/natural/run.py --tag=-check` (data/example/natural/results-check.json, the selection with
its held-out check, the product's default; docs/natural-artifacts.md);
this part renders the repair for a person to see and reports those numbers, it does not recompute them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..model.generator import LoadedGenerator, images_at
from ..model.images import grid, save_png
from ..model.trace import Trace, ablation
from ..repair import high_activation_samples
from .model import DATA_DIR

RESULTS = DATA_DIR / "natural" / "results-check.json"


def _rate(sub: dict[str, Any]) -> str:
    r = sub["artifact_rate"]
    d, c = r["repair_diff"], r["control_diff"]
    return (f"{r['before']['value']:.3f} -> {r['after']['value']:.3f} ({d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]); "
            f"random control {c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]")


def _direction(d: dict[str, Any]) -> str:
    """'worse' / 'better' / 'not significant' for a lower-is-better change with its interval."""
    lo, hi = d["ci"]
    return "worse" if lo > 0 else "better" if hi < 0 else "not significant"


def _pref(r: dict[str, Any]) -> str:
    decided = r["wins"] + r["losses"]
    if not decided:
        return f"no decided pair ({r['ties']} of {r['answers']} answered 'same')"
    return (f"preferred in {r['wins']} of {decided} decided pairs ({r['win_rate']:.0%}, Wilson 95 % [{r['win_ci'][0]:.0%}, "
            f"{r['win_ci'][1]:.0%}]), ties {r['tie_rate']:.0%}")


def _targets(m: dict[str, Any], abr: dict[str, Any] | None) -> str:
    """Which of the benchmark's targets (docs/natural-artifacts.md) these recorded numbers meet."""
    hi, rnd = m["high_activation"]["artifact_rate"], m["random"]["artifact_rate"]
    rel = -hi["repair_diff"]["diff"] / max(hi["before"]["value"], 1e-9)
    checks = {"artifact rate -40 % relative on high-activation samples": rel >= 0.4,
              "artifact rate down beyond its interval on random samples": rnd["repair_diff"]["ci"][1] < 0,
              "random control within its interval of 0": all(s["control_diff"]["ci"][0] <= 0 <= s["control_diff"]["ci"][1] for s in (hi, rnd)),
              "blind A/B preferred in >= 80 % of decided pairs, ties <= 30 %": bool(abr) and abr["repair"]["win_rate"] >= 0.8
              and abr["repair"]["tie_rate"] <= 0.3,
              "FD / SWD on random samples not worse beyond their intervals": all(_direction(v) != "worse" for v in m["random"]["repair"].values())}
    met = [k for k, ok in checks.items() if ok]
    missed = [k for k, ok in checks.items() if not ok]
    return (f"Targets met ({len(met)} of {len(checks)}): " + ("; ".join(met) or "none") + ". Missed: " + ("; ".join(missed) or "none")
            + f" (the relative drop on high-activation samples is {rel:.0%}). docs/natural-artifacts.md says by how much and why.")


def natural_story(g: LoadedGenerator, out: Path, say: Callable[[str], None] = print, n_show: int = 8, seed: int = 3) -> dict[str, Any]:
    """Render the natural repair on fresh high-activation samples and summarise the benchmark; returns {'markdown', ...}."""
    res = json.loads(RESULTS.read_text())
    rep = res["repair"]
    layer, units, control = rep["layer"], rep["units"], rep["control"][rep["layer"]]
    ids = high_activation_samples(g, {layer: units}, seed, n_show, 20 * n_show)
    rows = [images_at(g, seed, ids)]
    for us in (units, control):
        with Trace(g.module, edit={layer: ablation(us)}):
            rows.append(images_at(g, seed, ids))
    save_png(out / "natural_before_after.png", grid(np.concatenate(rows), ncol=n_show, scale=2))
    m = rep["metrics"]["subsets"]
    abr = res.get("ab")
    ab_line = "not judged yet" if not abr else f"repair {_pref(abr['repair'])}; random-unit control {_pref(abr['control'])}"
    fd = m["random"]["repair"]
    fd_line = "; ".join(f"{k} {v['a']:.1f} -> {v['b']:.1f} ({v['diff']:+.1f} [{v['ci'][0]:+.1f}, {v['ci'][1]:+.1f}], {_direction(v)}; "
                        f"random control {m['random']['control'][k]['diff']:+.1f})" for k, v in fd.items())
    say(f"[natural] the example's own defects: removing {layer} units {units} (chosen by set selection from blind flags by eye)")
    say(f"[natural] artifact rate on fresh high-activation samples: {_rate(m['high_activation'])}")
    say(f"[natural] blind A/B by eye: {ab_line}")
    say(f"[natural] on fresh random samples: {fd_line} (docs/natural-artifacts.md)")
    md = ["## Part 1: the example's own defects (nothing planted)", "",
          f"Flags by eye (blind to any score): {sum(res['n']['train'].values()) + sum(res['n']['heldout'].values())} decided of 420 samples; "
          f"set selection (greedy forward on the joint ablation, classifier of the training half) proposed layer `{layer}` "
          f"units {units}. Rows: before; the set removed; {len(control)} random units removed (control). Fresh samples "
          f"(seed {seed}) where the removed units fire most:", "", "![natural](natural_before_after.png)", "",
          f"- Artifact rate (classifier trained only on the held-out half), fresh high-activation samples: {_rate(m['high_activation'])}",
          f"- ... fresh random samples: {_rate(m['random'])}",
          f"- FD / SWD on fresh random samples: {fd_line}",
          f"- Blind A/B judged by eye: {ab_line}", "",
          _targets(m, abr), "",
          "Recorded by `bench/natural/run.py` (docs/natural-artifacts.md); this demo renders the repair, it does not re-measure it.", "",
          "## Part 2: planted artifact units (a known ground truth)", ""]
    return {"layer": layer, "units": units, "control": control, "samples": ids, "ab": abr, "markdown": md}
