"""Image-quality metrics with their protocols in their names: FD / FID, KID, SWD, FD-inf, bootstrap intervals.

Public API (what the CLI calls):
- `compute_metrics(fake_batches, real=..., n=..., metrics=..., features=..., ...)` -> {name: {"value", "ci", ...}}
- `paired_compare(batches_a, batches_b, ...)` -> {name: {"a", "b", "diff", "ci", "significant", ...}}
- `get_extractor(name, **opts)`, `load_real(real, extractor, ...)`, `save_stats(path, stats)`
Building blocks: `Moments`, `frechet_distance` (fd), `kid.kid`, `swd.swd` (the submodules `fd`, `kid`, `swd`).
"""

from .compare import compute_metrics, format_n, metric_name, paired_compare, paired_compare_many, parse_metrics, needs_features
from .fd import FDReference, Moments, fd_features, frechet_distance, trace_sqrt_product
from .extractor import Extractor
from .features import EXTRACTORS, extractor_names, get_extractor
from .kid import mmd2_unbiased
from .reference import RealStats, compute_stats, load_real, load_stats, save_stats
from .swd import SWDSet, swd_compare

__all__ = [
    "compute_metrics", "paired_compare", "paired_compare_many", "parse_metrics", "needs_features", "format_n", "metric_name",
    "Moments", "FDReference", "frechet_distance", "fd_features", "trace_sqrt_product",
    "EXTRACTORS", "Extractor", "extractor_names", "get_extractor",
    "mmd2_unbiased", "SWDSet", "swd_compare",
    "RealStats", "compute_stats", "load_real", "load_stats", "save_stats",
]
