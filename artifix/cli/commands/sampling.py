"""`artifix sample` and `artifix layers`: looking at the generator."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UserError
from ...model.generator import latents, sample_batches
from ...model.images import grid, save_png
from ...model.trace import Trace, layer_shapes
from ...progress import track
from ..registry import Context, command
from .common import ablation_from_options, check_n, load, require_hooks


@command("sample", "sample the generator with fixed seeds and write a grid PNG (and optionally each image)",
         {"generator": None, "sample": ["seed", "n", "start", "batch", "class_id", "grid", "images", "layer", "ablate", "alpha"],
          "run": ["threads"]})
def cmd_sample(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    n, batch = check_n(o["n"]), check_n(o["batch"], "--batch")
    if o["start"] < 0:
        raise UserError(f"--start must be >= 0, got {o['start']}.")
    g = load(ctx)
    edit = ablation_from_options(g, o)
    out_dir = Path(o["images"]) if o["images"] else None
    keep: list[np.ndarray] = []
    written = 0
    with Trace(g.module, edit=edit) if edit else nullcontext():
        batches = list(track(sample_batches(g, o["seed"], o["start"], n, batch, o["class_id"]), n, "sampling", lambda b: len(b[0])))
    for idx, imgs in batches:
        arr = imgs.numpy()
        if len(keep) * batch < 256:
            keep.append(arr)
        if out_dir is not None:
            for i, im in zip(idx, arr):
                save_png(out_dir / f"{i:06d}.png", im if im.shape[-1] == 3 else im[..., 0])
                written += 1
    shown = np.concatenate(keep)[:256]
    result: dict[str, Any] = {"fingerprint": g.fingerprint, "seed": o["seed"], "start": o["start"], "n": n,
                              "image_shape": list(shown.shape[1:])}
    if o["grid"]:
        save_png(o["grid"], grid(shown, scale=2 if shown.shape[1] <= 64 else 1))
        result["grid"] = str(o["grid"])
        ctx.say(f"wrote a grid of {len(shown)} samples to {o['grid']}")
    if out_dir is not None:
        result["images"] = str(out_dir)
        ctx.say(f"wrote {written} images to {out_dir}/")
    return result


@command("layers", "list every hookable layer of the generator with its output shape",
         {"generator": None})
def cmd_layers(ctx: Context) -> dict[str, Any]:
    g = load(ctx)
    require_hooks(g, "listing layers")
    z, y = latents(g.spec, 0, [0, 1])
    if g.adapter is not None and g.adapter.name != "module":  # the family's calling convention, not module(z)
        rows = layer_shapes(g.module, z, y, call=g)
    else:
        rows = layer_shapes(g.module, z) if y is None else layer_shapes(g.module, z, y)
    defaults_ = g.adapter.default_layers(g.module) if g.adapter is not None else []
    if not ctx.json:
        width = max([len(r["layer"]) for r in rows] + [5])
        ctx.say(f"{'layer':<{width}}  {'type':<18} output shape (batch of 2)")
        for r in rows:
            mark = "  (default)" if defaults_ and r["layer"] == defaults_[0] else ""
            ctx.say(f"{r['layer']:<{width}}  {r['type']:<18} {r['shape']}{mark}")
    return {"fingerprint": g.fingerprint, "layers": rows, "adapter": g.spec.adapter, "default_layer": defaults_[0] if defaults_ else None}
