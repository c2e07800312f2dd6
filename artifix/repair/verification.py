"""Check a cleaned generator against the hooked original, and the TorchScript fallback that runs the hooks itself.

`export_cleaned` checks what it writes: the weights as stored (dtype included), loaded into a fresh copy
of G, against the hooked original on 64 seeded latents; the max absolute difference must be <= 1e-5.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import RuntimeFailure
from ..io import atomic_path
from ..model.trace import Ablation, Trace
from .edits import Call, Inputs, _as_args, _call, _edit_fns, _normalize_edits

TOLERANCE = 1e-5
VERIFY_N = 64


def _batches(inputs: Inputs | Callable[[range], Inputs], n: int, batch: int) -> Iterator[tuple[Any, ...]]:
    """Argument tuples for verification: from a latents function over index ranges, or slices of given inputs."""
    if callable(inputs) and not isinstance(inputs, torch.Tensor):
        for s in range(0, n, batch):
            yield _as_args(inputs(range(s, min(s + batch, n))))
        return
    args = _as_args(inputs)
    rows = args[0].shape[0]
    for s in range(0, rows, batch):
        yield tuple(a[s:s + batch] if isinstance(a, torch.Tensor) else a for a in args)


def verify(original: nn.Module, baked: Callable[..., torch.Tensor], layer: str | Mapping[str, Any],
           units: Sequence[int] | None = None, alpha: Sequence[float] | float = 1.0, *,
           inputs: Inputs | Callable[[range], Inputs], n: int = VERIFY_N, batch: int = 16, call: Call | None = None) -> float:
    """Max |baked(z) - original-with-Trace-ablation(z)| over the inputs (or n latents from a latents function)."""
    norm = _normalize_edits({layer: (list(units or []), alpha)} if isinstance(layer, str) else layer)
    fns = _edit_fns(norm)
    worst = 0.0
    with torch.inference_mode():
        for args in _batches(inputs, n, batch):
            with Trace(original, edit=fns, retain=False):
                want = _call(original, args, call)
            got = _call(baked, args, call)
            if got.shape != want.shape:
                raise RuntimeFailure(f"the cleaned generator's output has shape {tuple(got.shape)}, not {tuple(want.shape)}.")
            d = (got.double() - want.double()).abs()
            if not torch.isfinite(d).all():
                return math.inf
            worst = max(worst, float(d.max()) if d.numel() else 0.0)
    return worst


# ------------------------------------------------------------------------------------------ TorchScript


class _EditedGenerator(nn.Module):
    """G with the ablation hooks applied inside forward, for tracing into TorchScript."""

    def __init__(self, generator: nn.Module, edits: Mapping[str, Ablation], call: Call | None = None) -> None:
        super().__init__()
        self.generator = generator
        self._edits = dict(edits)
        self._call = call

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        with Trace(self.generator, edit=self._edits, retain=False):
            return self.generator(*inputs) if self._call is None else self._call(self.generator, inputs)


def hooked_torchscript(model: nn.Module, edits: Mapping[str, Any], example: Inputs, call: Call | None = None) -> torch.jit.ScriptModule:
    """torch.jit.trace of a copy of `model` running the ablation hooks inside its forward (through `call` when given)."""
    wrapper = _EditedGenerator(copy.deepcopy(model), _edit_fns(_normalize_edits(edits)), call).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 marks TorchScript deprecated; still supported
        return torch.jit.trace(wrapper, _as_args(example), check_trace=False)


def save_hooked_torchscript(model: nn.Module, edits: Mapping[str, Any], example: Inputs, call: Call | None,
                            path: Path) -> torch.jit.ScriptModule:
    """Write `hooked_torchscript` of the model to `path` atomically and load it back (on the CPU) to be checked."""
    scripted = hooked_torchscript(model, edits, example, call)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with atomic_path(path) as tmp:
            torch.jit.save(scripted, str(tmp))
        return torch.jit.load(str(path), map_location="cpu")
