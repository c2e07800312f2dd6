"""Command handlers: thin glue between the CLI registry and the library stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from contextlib import nullcontext

from .cli import Context, command
from .trace import Trace
from .errors import UserError



def parse_units(text: str | int | list[int]) -> list[int]:
    """Parse '3,17' (or a list) into unit indices."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, list):
        return [int(u) for u in text]
    try:
        units = [int(u) for u in str(text).split(",") if u.strip()]
    except ValueError:
        raise UserError(f"units must be comma-separated integers like '3,17', got {text!r}.") from None
    if not units:
        raise UserError("no units given; pass units like '3,17'.")
    return units


def ablation_from_options(g, o: dict[str, Any]) -> dict[str, Any] | None:
    """The {layer: Ablation} edit described by --layer/--ablate/--alpha, validated against G."""
    from .trace import ablation, get_layer, layer_shapes  # noqa: F401

    if o.get("ablate") is None:
        if o.get("layer"):
            get_layer(g.module, o["layer"])
        return None
    if not o.get("layer"):
        raise UserError("--ablate needs --layer to say which layer the units belong to.")
    get_layer(g.module, o["layer"])
    if not 0.0 <= o["alpha"] <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {o['alpha']}.")
    return {o["layer"]: ablation(parse_units(o["ablate"]), o["alpha"])}


def load(ctx: Context):
    """Load the generator the settings describe (default: the bundled example)."""
    from .generator import load_generator, spec_from_options

    return load_generator(spec_from_options(ctx.opts))


def _check_n(n: int, what: str = "--n") -> int:
    if n <= 0:
        raise UserError(f"{what} must be a positive number of samples, got {n}.")
    return n


@command("sample", "sample the generator with fixed seeds and write a grid PNG (and optionally each image)",
         {"generator": None, "sample": ["seed", "n", "start", "batch", "class_id", "grid", "images", "layer", "ablate", "alpha"],
          "run": ["threads"]})
def cmd_sample(ctx: Context) -> dict[str, Any]:
    from .generator import sample_batches
    from .images import grid, save_png
    from .progress import track

    o = ctx.opts
    n, batch = _check_n(o["n"]), _check_n(o["batch"], "--batch")
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
    from .generator import latents
    from .trace import layer_shapes

    g = load(ctx)
    z, y = latents(g.spec, 0, [0, 1])
    rows = layer_shapes(g.module, z) if y is None else layer_shapes(g.module, z, y)
    if not ctx.json:
        width = max([len(r["layer"]) for r in rows] + [5])
        ctx.say(f"{'layer':<{width}}  {'type':<18} output shape (batch of 2)")
        for r in rows:
            ctx.say(f"{r['layer']:<{width}}  {r['type']:<18} {r['shape']}")
    return {"fingerprint": g.fingerprint, "layers": rows}
