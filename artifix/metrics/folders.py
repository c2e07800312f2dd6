"""`artifix metrics --images DIR --real REF`: the metrics of a folder of images (no generator) against a reference.

The folder is read like a reference folder (recursive, sorted by relative path, one image size); its first
`--n` images are used (all of them when it holds fewer). Everything else (feature space, metrics, intervals,
`--real` formats) is the same as for generated samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from .. import dist
from ..errors import UserError
from .compare import compute_metrics
from .extractor import Extractor
from .features import get_extractor
from .reference import _folder_source, check_real

METRIC_KEYS = ("metrics", "features", "real", "bootstrap", "confidence", "kid_subsets", "kid_subset_size", "fd_inf",
               "inception_weights", "real_n", "real_resize", "swd_n", "swd_bootstrap", "feature_batch", "real_class")


def extractor_from_options(o: Mapping[str, Any]) -> Extractor:
    """The feature extractor the `[metrics]` options describe, TorchScript size and range included."""
    return get_extractor(o.get("features"), batch=o.get("feature_batch"), inception_weights=o.get("inception_weights"),
                         torchscript_size=o.get("torchscript_size"), torchscript_range=o.get("torchscript_range"))


def metrics_of_images(o: Mapping[str, Any], say: Callable[[str], None], show: bool = True) -> dict[str, Any]:
    """Metrics of the image folder `o['images']` against `o['real']`; prints one line per metric when `show`."""
    if o.get("generator") or o.get("checkpoint"):
        raise UserError("--images measures a folder of images, so it takes no --generator or --checkpoint; "
                        "drop one or the other.")
    if o.get("real") is None:
        raise UserError("--images needs --real, the reference to compare the folder with: an image folder, a .zip "
                        "archive, an .npz array or a statistics file.")
    folder = Path(o["images"]).expanduser()
    if not folder.is_dir():
        raise UserError(f"--images {folder} is not a folder; give the folder that holds the images to measure.")
    n = int(o.get("n") or 0)
    if n <= 0:
        raise UserError(f"--n must be a positive number of images, got {n}.")
    check_real(o["real"], n=o.get("real_n"), resize=o.get("real_resize"), features=o.get("features"),
               class_id=o.get("real_class"))
    src = _folder_source(folder, n, False)
    kwargs = {**{k: o[k] for k in METRIC_KEYS if k in o}, "features": extractor_from_options(o)}
    res = compute_metrics(src.batches(), n=src.count, seed=o.get("metrics_seed"), cache=o.get("cache"), progress=say, **kwargs)
    if show:
        for name, r in res.items():
            ci = f" [{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]" if r.get("ci") else ""
            say(f"{name:<24} {r['value']:.4g}{ci}")
    return {"images": str(folder), "n": src.count, "metrics": res}


def metrics_of_folder(ctx: Any) -> dict[str, Any] | None:
    """The CLI's `metrics --images` (ctx: the command context); only rank 0 returns the result under torchrun."""
    out = metrics_of_images(ctx.opts, ctx.say, show=not ctx.json and dist.is_main())
    return out if dist.is_main() else None
