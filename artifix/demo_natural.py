"""The demo's first part: the example GAN's OWN defects (nothing planted), repaired by the unit set the natural
benchmark chose, shown before/after beside the random-unit control, with the recorded blind A/B result.

Cheap on purpose (a few forward passes): the set selection, the measurements and the A/B judgements are the
committed results of `bench/natural/run.py` (data/example/natural/results.json, docs/natural-artifacts.md);
this part renders the repair for a person to see and reports those numbers, it does not recompute them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .example import DATA_DIR
from .generator import LoadedGenerator, images_at
from .images import grid, save_png
from .repair import high_activation_samples
from .trace import Trace, ablation

RESULTS = DATA_DIR / "natural" / "results.json"


def _rate(sub: dict[str, Any]) -> str:
    r = sub["artifact_rate"]
    d, c = r["repair_diff"], r["control_diff"]
    return (f"{r['before']['value']:.3f} -> {r['after']['value']:.3f} ({d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]); "
            f"random control {c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]")


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
    ab_line = ("not judged yet" if not abr else
               f"repair preferred in {abr['repair']['wins']} of {abr['repair']['wins'] + abr['repair']['losses']} decided pairs "
               f"({abr['repair']['win_rate']:.0%}, Wilson 95 % [{abr['repair']['win_ci'][0]:.0%}, {abr['repair']['win_ci'][1]:.0%}]), "
               f"ties {abr['repair']['tie_rate']:.0%}; random-unit control preferred in {abr['control']['win_rate']:.0%} "
               f"[{abr['control']['win_ci'][0]:.0%}, {abr['control']['win_ci'][1]:.0%}], ties {abr['control']['tie_rate']:.0%}")
    say(f"[natural] the example's own defects: removing {layer} units {units} (chosen by set selection from blind flags by eye)")
    say(f"[natural] artifact rate on fresh high-activation samples: {_rate(m['high_activation'])}")
    say(f"[natural] blind A/B by eye: {ab_line}")
    md = ["## Part 1: the example's own defects (nothing planted)", "",
          f"Flags by eye (blind to any score) on {sum(res['n']['train'].values()) + sum(res['n']['heldout'].values())} samples; "
          f"set selection (greedy forward on the joint ablation, classifier of the training half) proposed layer `{layer}` "
          f"units {units}. Rows: before; the set removed; {len(control)} random units removed (control). Fresh samples "
          f"(seed {seed}) where the removed units fire most:", "", "![natural](natural_before_after.png)", "",
          f"- Artifact rate (classifier trained only on the held-out half), fresh high-activation samples: {_rate(m['high_activation'])}",
          f"- ... fresh random samples: {_rate(m['random'])}",
          f"- Blind A/B judged by eye: {ab_line}", "",
          "Recorded by `bench/natural/run.py` (docs/natural-artifacts.md); this demo renders the repair, it does not re-measure it.", "",
          "## Part 2: planted artifact units (a known ground truth)", ""]
    return {"layer": layer, "units": units, "control": control, "samples": ids, "ab": abr, "markdown": md}
