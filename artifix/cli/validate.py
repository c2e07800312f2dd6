"""Range checks of every numeric option, run by the CLI before any command loads or computes anything."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..errors import UserError

_SAMPLES = "a positive number of samples"
_POSITIVE = "a positive number"
_NONNEG = "0 or more"

# option name -> (test, what the value must be); None values (unset optional options) are not checked
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{name: (lambda v: v > 0, _SAMPLES) for name in (
        "n", "stats_n", "repair_n", "sweep_n", "dissect_n", "swd_n", "kid_subset_size", "real_n", "pool")},
    **{name: (lambda v: v > 0, _POSITIVE) for name in (
        "batch", "top", "review_k", "alpha_steps", "alpha_batch", "alpha_lr", "page_size", "kid_subsets", "cv_folds",
        "inner_folds", "calibration_bins", "truncation")},
    **{name: (lambda v: v >= 0, _NONNEG) for name in (
        "seed", "start", "metrics_seed", "cv_seed", "exact_top", "high_pool", "collateral_n", "ace_n", "index", "bootstrap",
        "swd_bootstrap", "threads", "feature_batch", "torchscript_size", "preview_n", "class_id", "collateral_weight",
        "alpha_l2", "min_gain", "classes")},
    "k": (lambda v: v > 0, "a positive number of units"),
    "ace_units": (lambda v: v > 0, "a positive number of units"),
    "confidence": (lambda v: 0 < v < 1, "between 0 and 1 (e.g. 0.95)"),
    "alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "rare_rate": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "top_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "iou_min": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "port": (lambda v: 0 < v < 65536, "a TCP port (1..65535)"),
    "mode": (lambda v: v in ("add", "remove"), "'add' or 'remove'"),
}


def check_options(opts: Mapping[str, Any]) -> None:
    """Raise UserError (one sentence, exit 2) for the first option outside its range; cheap, touches nothing."""
    for name, value in opts.items():
        rule = RULES.get(name)
        if rule is None or value is None or isinstance(value, bool):
            continue
        ok, what = rule
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise UserError(f"--{name.replace('_', '-')} must be {what}, got {value!r}.")
