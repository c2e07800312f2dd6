"""The edits to bake, checked and normalised, and how G is called on its inputs (export's shared vocabulary).

An edit is `{layer: units | (units, alpha) | Ablation}`; `_normalize_edits` turns it into
`{layer: (units, alphas)}` with distinct non-negative units and one alpha in [0, 1] per unit, or a UserError.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Mapping, Union

import torch

from ..errors import UserError
from ..model.trace import Ablation, ablation

Inputs = Union[torch.Tensor, tuple]  # z, or (z, y) for a conditional G (y may be None)
Call = Callable[[Any, tuple[Any, ...]], Any]  # (model, args) -> images; an adapter's forward (default: model(*args))


def _check_units(layer: str, units: Any) -> tuple[int, ...]:
    """Units as a tuple of distinct non-negative ints, or a UserError."""
    if isinstance(units, (int, float)) or isinstance(units, torch.Tensor) and units.dim() == 0:
        units = [units]
    out: list[int] = []
    for u in units:
        try:
            ok = not isinstance(u, (bool, str)) and int(u) == u
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"units of layer {layer!r} must be whole numbers, got {u!r}.")
        out.append(int(u))
    if not out:
        raise UserError(f"no units given for layer {layer!r}; name at least one unit to remove.")
    if any(u < 0 for u in out):
        raise UserError(f"unit {min(out)} of layer {layer!r} is out of range: units are numbered from 0.")
    dup = sorted(u for u, c in Counter(out).items() if c > 1)
    if dup:
        raise UserError(f"unit {dup[0]} is listed twice for layer {layer!r}; give each unit once.")
    return tuple(out)


def _check_alpha(layer: str, alpha: Any, n: int) -> tuple[float, ...]:
    """Alpha as one float per unit in [0, 1], or a UserError."""
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.tolist()
    vals = [alpha] * n if isinstance(alpha, (int, float)) else list(alpha)
    if len(vals) != n:
        raise UserError(f"got {len(vals)} alpha values for {n} units of layer {layer!r}; give one per unit or a single value.")
    try:
        out = [float(a) for a in vals]
    except (TypeError, ValueError):
        raise UserError(f"alpha values of layer {layer!r} must be numbers in [0, 1], got {alpha!r}.") from None
    bad = [a for a in out if not (math.isfinite(a) and 0.0 <= a <= 1.0)]
    if bad:
        raise UserError(f"alpha {bad[0]} for layer {layer!r} is outside [0, 1]; 1 removes a unit, 0 keeps it.")
    return tuple(out)


def _normalize_edits(edits: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], tuple[float, ...]]]:
    """{layer: (units, alphas)} from {layer: units | (units, alpha) | Ablation}."""
    if not edits:
        raise UserError("no edits given: name at least one layer and the units to remove.")
    out = {}
    for layer, spec in edits.items():
        if isinstance(spec, Ablation):
            if spec.mask is not None or spec.replacement is not None:
                raise UserError(f"the edit of layer {layer!r} has a pixel mask or replacement values; only a per-unit "
                                "alpha with replacement 0 can be exported.")
            units, alpha = spec.units, spec.alpha
        elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], (tuple, list, range, torch.Tensor)):
            units, alpha = spec
        else:
            units, alpha = spec, 1.0
        u = _check_units(layer, units)
        out[str(layer)] = (u, _check_alpha(layer, alpha, len(u)))
    return out


def _edit_fns(norm: Mapping[str, tuple[tuple[int, ...], tuple[float, ...]]]) -> dict[str, Ablation]:
    """The Trace edits for normalized edits."""
    return {layer: ablation(u, list(a)) for layer, (u, a) in norm.items()}


def _as_args(x: Any) -> tuple[Any, ...]:
    """Model arguments from a tensor or a (z, y) tuple; a trailing None (unconditional y) is dropped."""
    if isinstance(x, torch.Tensor):
        return (x,)
    args = tuple(x)
    while args and args[-1] is None:
        args = args[:-1]
    return args


def _call(model: Callable[..., Any], args: tuple[Any, ...], call: Call | None = None) -> torch.Tensor:
    """model(*args) (or call(model, args)), which must return a tensor."""
    out = model(*args) if call is None else call(model, args)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the generator returned a {type(out).__name__}; verification needs a tensor output.")
    return out
