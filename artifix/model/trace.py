"""Record and edit layer outputs with forward hooks, always removed when the `with` block ends.

    with Trace(G.module, ["main.3", "main.6"], edit={"main.3": ablation(units=[4, 7])}) as t:
        G(z)
    acts = t["main.6"]

Layers are named by their dotted module path as `model.named_modules()` prints it. An edit follows the
ablation rule `out = x * (1 - a) + r * a` (a: per-unit, optionally per-pixel strength in [0, 1];
r: replacement, 0 or a per-unit value such as the unit's mean).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import UserError

EditFn = Callable[[torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised inside a hook to end the forward pass after the last traced layer."""


def hookable_layers(model: nn.Module) -> list[str]:
    """Names of every submodule that can carry a forward hook (the root module excluded)."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`, or a UserError that suggests close names."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else " Run 'artifix layers' to list them."
    raise UserError(f"layer {name!r} is not in the generator.{hint}")


@dataclass(frozen=True)
class Ablation:
    """An edit of one layer: units, strength alpha per unit (or one value), optional pixel mask, replacement."""

    units: tuple[int, ...]
    alpha: tuple[float, ...] | float = 1.0
    mask: torch.Tensor | None = None  # (H, W) or (N, 1, H, W) in [0, 1], at the layer's resolution
    replacement: torch.Tensor | None = None  # per-unit values (len(units),); None = 0

    def strength(self, x: torch.Tensor) -> torch.Tensor:
        """The per-unit (and per-pixel) strength tensor `a`, broadcastable to x (N, C, ...)."""
        c = x.shape[1]
        for u in self.units:
            if not 0 <= u < c:
                raise UserError(f"unit {u} is out of range: the layer has {c} units (0..{c - 1}); pick units in that range.")
        a = torch.zeros(c, dtype=x.dtype, device=x.device)
        alpha = torch.as_tensor(self.alpha, dtype=x.dtype, device=x.device)
        if alpha.dim() and alpha.numel() != len(self.units):
            raise UserError(f"got {alpha.numel()} alpha values for {len(self.units)} units.")
        a[list(self.units)] = alpha.clamp(0, 1)
        a = a.view(1, c, *([1] * (x.dim() - 2)))
        if self.mask is not None:
            m = self.mask.to(x.dtype)
            m = m.view(1, 1, *m.shape) if m.dim() == 2 else m
            a = a * m
        return a

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply `out = x * (1 - a) + r * a`."""
        a = self.strength(x)
        if self.replacement is None:
            return x * (1 - a)
        r = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        r[list(self.units)] = self.replacement.to(x.dtype)
        return x * (1 - a) + r.view(1, -1, *([1] * (x.dim() - 2))) * a


def ablation(units: Iterable[int], alpha: float | Sequence[float] = 1.0, mask: torch.Tensor | None = None,
             replacement: torch.Tensor | None = None) -> Ablation:
    """An `Ablation` edit for the given units."""
    units = tuple(int(u) for u in units)
    alpha_t = alpha if isinstance(alpha, (int, float)) else tuple(float(a) for a in alpha)
    return Ablation(units, alpha_t, mask, replacement)


class Trace:
    """Context manager recording (and optionally editing) the outputs of named layers via forward hooks."""

    def __init__(self, model: nn.Module, layers: str | Sequence[str] = (), edit: Mapping[str, EditFn] | None = None,
                 retain: bool = True, detach: bool = True, stop: bool = False) -> None:
        self.model = model
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        self.edit = dict(edit or {})
        self.retain = retain
        self.detach = detach
        self.stop = stop
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        names = list(dict.fromkeys(self.layers + list(self.edit)))
        self._modules = {n: get_layer(model, n) for n in names}
        self._last = self.layers[-1] if self.layers else None

    def _hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            if name in self.edit:
                if not isinstance(output, torch.Tensor):
                    raise UserError(f"layer {name!r} returns a {type(output).__name__}, so it cannot be edited; pick a layer that returns a tensor.")
                output = self.edit[name](output)
            if self.retain and name in self.layers:
                self.outputs[name] = output.detach() if self.detach and isinstance(output, torch.Tensor) else output
            if self.stop and name == self._last:
                raise StopForward()
            return output

        return hook

    def __enter__(self) -> "Trace":
        try:
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)

    def close(self) -> None:
        """Remove every hook this trace installed."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.outputs[name]


def layer_shapes(model: nn.Module, *inputs: Any, call: Callable[..., Any] | None = None) -> list[dict[str, Any]]:
    """Run one forward (`call(*inputs)`, default `model(*inputs)`) and return every hookable module's name, type and output shape."""
    rows: dict[str, dict[str, Any]] = {}
    handles = []

    def make(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            rows.setdefault(name, {"layer": name, "type": type(module).__name__, "shape": shape})

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make(name, module)))
        with torch.inference_mode():
            (call or model)(*inputs)
    finally:
        for h in handles:
            h.remove()
    order = {n: i for i, n in enumerate(hookable_layers(model))}
    never = [{"layer": n, "type": type(m).__name__, "shape": None} for n, m in model.named_modules() if n and n not in rows]
    return sorted(rows.values(), key=lambda r: order.get(r["layer"], 0)) + never
