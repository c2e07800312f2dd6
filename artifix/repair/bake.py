"""Bake unit removals into a copy of G's weights, layer by layer, with the rules of `rules.py`.

Several layers bake into one copy one after another; each rule is an exact rewrite of the current weights
(a BN fold uses the already edited w and b), so the edits compose as the simultaneous hooks do.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from torch import nn

from ..model.trace import get_layer
from .edits import Inputs, _normalize_edits
from .rules import Applied, _Probe, _probe, apply_rules


@dataclass
class LayerBake:
    """How one layer's edit was baked: method, edited parameters, modules passed through, or why not."""

    layer: str
    units: tuple[int, ...]
    alpha: tuple[float, ...]
    exact: bool
    method: str  # scale-output | scale-input | fold-batchnorm | scale-output-behind | refused
    edited: tuple[str, ...] = ()  # state-dict names of the changed tensors
    path: tuple[str, ...] = ()  # modules between the layer and the edited module
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        d = asdict(self)
        for k in ("units", "alpha", "edited", "path"):
            d[k] = list(d[k])
        return d


@dataclass
class BakeResult:
    """A deep copy of G with the edits in its weights (None when any layer could not be baked exactly)."""

    model: nn.Module | None
    layers: list[LayerBake]

    @property
    def exact(self) -> bool:
        """True when every layer's edit is in the weights exactly."""
        return self.model is not None and all(lb.exact for lb in self.layers)

    @property
    def reason(self) -> str:
        """Why baking was not exact ('' when it was)."""
        return "; ".join(f"{lb.layer}: {lb.reason}" for lb in self.layers if not lb.exact)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (without the model)."""
        return {"exact": self.exact, "reason": self.reason, "layers": [lb.to_json() for lb in self.layers]}


def _bake_layer(model: nn.Module, layer: str, units: tuple[int, ...], alpha: tuple[float, ...],
                probe: _Probe | None) -> LayerBake:
    """Bake one layer's edit into `model` in place, or leave it untouched and say why not."""
    out = apply_rules(model, layer, get_layer(model, layer), units, alpha, probe)
    if isinstance(out, Applied):
        return LayerBake(layer, units, alpha, True, out.method, tuple(out.edited), tuple(out.path))
    return LayerBake(layer, units, alpha, False, "refused", reason=out.reason)


def bake_edits(model: nn.Module, edits: Mapping[str, Any], example: Inputs | None = None) -> BakeResult:
    """Bake several layers' ablations into one deep copy of `model` (the rules: see rules.py)."""
    norm = _normalize_edits(edits)
    for layer in norm:
        get_layer(model, layer)
    probe = _probe(model, example, list(norm)) if example is not None else None
    work = copy.deepcopy(model)
    layers = [_bake_layer(work, layer, u, a, probe) for layer, (u, a) in norm.items()]
    ok = all(lb.exact for lb in layers)
    return BakeResult(work if ok else None, layers)


def bake_ablation(model: nn.Module, layer: str, units: Sequence[int], alpha: Sequence[float] | float = 1.0,
                  example: Inputs | None = None) -> BakeResult:
    """Deep copy of `model` with the hook edit out[:, u] *= 1 - alpha_u at `layer` baked into its weights."""
    return bake_edits(model, {layer: (list(units), alpha)}, example)
