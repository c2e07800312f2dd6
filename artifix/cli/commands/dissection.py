"""Concept dissection (issue 11): `artifix dissect` (label units with concepts, check them causally) and `paint`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ... import workflow as W
from ...concepts import dissect as D
from ...report import dissection as R
from ...errors import UserError
from ...io import check_output_folder, output_folder, write_json_atomic, write_text_atomic
from ...model.images import grid, save_png
from ...profiles import profile_for
from ..registry import Context, command
from .common import check_n, default_layer, load, parse_units


def _segmenter_from_options(o: dict[str, Any], g) -> Any:
    """The segmenter --segmenter names, else the generator profile's; a UserError when there is none."""
    return W.segmenter_for(profile_for(g.spec), o.get("segmenter"), o.get("segmenter_classes"), required=True)


def _dissect_layers(o: dict[str, Any], g) -> list[str]:
    return W.dissect_layers(profile_for(g.spec), o.get("layers"))


def _ace_layer(o: dict[str, Any], g, layers: list[str]) -> str:
    return W.ace_layer(g, profile_for(g.spec), o.get("ace_layer") or o.get("layer"), layers)


def _concepts(o: dict[str, Any], seg) -> list[str]:
    names = W.split_names(o.get("concepts"))
    if not names:
        return [c for c in ("tree", "building") if c in seg.classes]
    for c in names:
        D.class_index(seg.classes, c)
    return names


@command("dissect", "label every unit of some layers with its best-matching concept (IoU), count interpretable units per layer, "
         "and check concepts causally (ablate their top units vs random units)",
         {"generator": None, "sample": ["seed", "batch", "layer"],
          "dissect": ["layers", "dissect_n", "segmenter", "segmenter_classes", "iou_min", "concepts", "ace_layer", "ace_units", "ace_n"],
          "metrics": ["confidence"],
          "run": ["out", "cache", "threads"]})
def cmd_dissect(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    n, batch = check_n(o["dissect_n"], "--dissect-n"), check_n(o["batch"], "--batch")
    if o["ace_n"] < 0 or o["ace_units"] <= 0:
        raise UserError("--ace-n must be >= 0 and --ace-units positive.")
    W.check_confidence(o["confidence"])
    if not 0 <= o["iou_min"] < 1:
        raise UserError(f"--iou-min must be in [0, 1), got {o['iou_min']}.")
    out = check_output_folder(o["out"] or "artifix-dissect")
    g = load(ctx)
    layers = D._check_layers(g, _dissect_layers(o, g))  # fail on a bad layer before loading or sampling anything
    seg = _segmenter_from_options(o, g)
    concepts = _concepts(o, seg)
    ace_layer = _ace_layer(o, g, layers) if concepts and o["ace_n"] else None
    run_layers = layers + ([ace_layer] if ace_layer and ace_layer not in layers else [])
    ctx.say(f"dissecting {', '.join(run_layers)} on {n} samples against {len(seg.classes)} classes ({seg.source})")
    res = D.cached_dissect(g, run_layers, seg, o["seed"], n, o["cache"] or ".artifix-cache", batch)
    for d in res.values():
        d.iou_min = o["iou_min"]
    ace = []
    for c in concepts if ace_layer else []:
        units = res[ace_layer].top_units(c, o["ace_units"])
        ctx.say(f"causal check: ablating the top {len(units)} '{c}' units of {ace_layer} on {o['ace_n']} samples (+ random control)")
        ace.append(D.ablation_effect(g, ace_layer, units, seg, c, o["seed"], o["ace_n"], confidence=o["confidence"]))
    shown = {k: res[k] for k in layers}
    rows = [r for d in shown.values() for r in d.best()]
    with output_folder(out, command="dissect") as folder:
        tmp = folder.path
        write_text_atomic(tmp / "dissection.csv", pd.DataFrame(rows).to_csv(index=False))
        write_json_atomic(tmp / "dissection.json", {"fingerprint": g.fingerprint, "segmenter": seg.source, "classes": list(seg.classes),
                                                    "seed": o["seed"], "n": n, "layers": [d.to_json() for d in res.values()],
                                                    "summary": D.summary_rows(shown), "ace": ace})
        save_png(tmp / "dissection.png", R.charts(shown))
        for name, d in shown.items():
            save_png(tmp / f"chart_{name}.png", R.chart(d))
        write_text_atomic(tmp / "dissection.md", R.report_markdown(shown, ace, concepts=concepts))
    if not ctx.json:
        for r in D.summary_rows(shown):
            per = ", ".join(f"{c} {r[c]}" for c in seg.classes if r[c])
            ctx.say(f"{r['layer']}: {r['interpretable']} of {r['units']} units interpretable ({per})")
        for a in ace:
            ctx.say(f"ablating the top {len(a['units'])} '{a['concept']}' units of {a['layer']} removes {a['removed_fraction']:.1%} "
                    f"of its pixels ({a['confidence']:.0%} CI {a['removed_ci'][0]:.1%}..{a['removed_ci'][1]:.1%}); "
                    f"{len(a['control_units'])} random units remove {a['control_removed_fraction']:.1%}")
        ctx.say(f"wrote dissection.md, dissection.csv, dissection.json and dissection.png to {out}/")
    return {"fingerprint": g.fingerprint, "segmenter": seg.source, "n": n, "summary": D.summary_rows(shown), "ace": ace,
            "out": str(out)}


def parse_region(text: str | None, size: tuple[int, int]) -> np.ndarray:
    """A bool (H, W) mask from 'x0,y0,x1,y1' in image pixels (x1, y1 exclusive); the whole image when None."""
    h, w = size
    m = np.zeros((h, w), bool)
    if not text:
        m[:] = True
        return m
    try:
        x0, y0, x1, y1 = (int(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(f"--region must be 'x0,y0,x1,y1' in pixels, got {text!r}.") from None
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise UserError(f"--region {text} must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}.")
    m[y0:y1, x0:x1] = True
    return m


@command("paint", "add or remove a concept's units in a region of one sample (GANpaint) and write the before/after PNG",
         {"generator": None, "sample": ["seed", "batch", "layer"],
          "dissect": ["dissect_n", "segmenter", "segmenter_classes", "ace_units", "concept", "units", "region", "mode", "index"],
          "run": ["out", "cache", "threads"]})
def cmd_paint(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    out = check_output_folder(o["out"] or "artifix-out")
    g = load(ctx)
    layer = default_layer(ctx, g)
    if o["index"] < 0:
        raise UserError(f"--index must be >= 0, got {o['index']}.")
    if o["mode"] not in ("add", "remove"):
        raise UserError(f"--mode must be 'add' or 'remove', got {o['mode']!r}.")
    if o["units"]:
        units = parse_units(o["units"])
    elif o["concept"]:
        seg = _segmenter_from_options(o, g)
        D.class_index(seg.classes, o["concept"])
        d = D.cached_dissect(g, [layer], seg, o["seed"], check_n(o["dissect_n"], "--dissect-n"), o["cache"] or ".artifix-cache",
                             check_n(o["batch"], "--batch"))[layer]
        units = d.top_units(o["concept"], o["ace_units"])
    else:
        raise UserError("say what to paint: --concept NAME (its top units) or --units '3,17'.")
    before = D.images_with(g, o["seed"], [o["index"]])[0]
    mask = parse_region(o["region"], before.shape[:2])
    before, after = D.paint(g, layer, units, mask, o["mode"], o["seed"], o["index"])
    outline = W.region_outline(before, mask)
    name = f"paint_{layer}_{o['index']}_{o['mode']}.png"
    with output_folder(out, owns=[name], command="paint") as folder:
        save_png(folder.path / name, grid(np.stack([outline, after]), ncol=2, scale=4))
    path = out / name
    ctx.say(f"{o['mode']} {len(units)} units of {layer} in sample {o['index']}: before (region outlined) | after -> {path}")
    return {"layer": layer, "units": units, "mode": o["mode"], "index": o["index"], "region": o["region"], "png": str(path)}
