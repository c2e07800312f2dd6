"""The adapter protocol: what artifix needs from a generator family, and helpers the families share.

An adapter turns a `GeneratorSpec` into a `LoadedGenerator` and knows the family's conventions:
the latent (z size, classes: filled into the spec), the forward pass to images in [-1, 1] NCHW with
deterministic noise and the family's truncation, the hookable module tree and its sensible default
layers, how an edit bakes exactly into the weights, and how the cleaned generator is written back in
the input's own format (verified against the hooked original, max |difference| <= 1e-5).
"""

from __future__ import annotations

import copy
import functools
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..model.generator import GeneratorSpec, LoadedGenerator, extract_state_dict, fingerprint, latents, read_checkpoint
from ..repair.bake import BakeResult, LayerBake, bake_edits

Edits = Mapping[str, tuple[tuple[int, ...], tuple[float, ...]]]  # {layer: (units, alphas)} as export normalises them
Rule = Callable[[nn.Module, str, torch.Tensor], "tuple[str, list[str]] | str"]  # (work, layer, scales) -> (method, names) | reason


class Adapter:
    """One generator family. Subclasses set `name` and override what differs from a plain `G(z[, y])` module."""

    name: str = ""
    hookable: bool = True  # False: hooks cannot enter the module (TorchScript), so scoring and repair refuse
    own_format: bool = False  # True: `export` writes the family's own file format instead of repair.export_cleaned's
    safe_globals: tuple[Any, ...] = ()  # classes torch.load(weights_only=True) may rebuild for this family's checkpoints

    def detect(self, spec: GeneratorSpec) -> bool:
        """True when the spec's files look like this family (never runs code from them)."""
        return False

    def load(self, spec: GeneratorSpec) -> LoadedGenerator:
        """Build the generator, in eval mode with gradients off; the spec gains latent shape and classes."""
        raise NotImplementedError

    def forward(self, module: nn.Module, spec: GeneratorSpec, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images in the spec's range, NCHW, for latents z (and class inputs y), with deterministic noise."""
        return module(z) if y is None else module(z, y)

    def latents(self, spec: GeneratorSpec, seed: int, indices: Sequence[int], class_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents (and class inputs) of the given sample indices: row i depends only on (seed, indices[i])."""
        return latents(spec, seed, indices, class_id)

    def default_layers(self, module: nn.Module) -> list[str]:
        """Sensible layers to diagnose, best first ([] = the user must name one with --layer)."""
        return []

    def bake(self, module: nn.Module, edits: Edits, example: Any = None) -> BakeResult:
        """A deep copy of the module with the edits baked exactly into its weights (model None when impossible)."""
        return bake_edits(module, edits, example)

    def export(self, g: LoadedGenerator, edits: Edits, out_dir: Path, *, seed: int, n: int, tolerance: float) -> Any:
        """Write the cleaned generator in the family's own format (only for adapters with own_format)."""
        raise NotImplementedError


def finish(module: nn.Module, spec: GeneratorSpec, adapter: Adapter, scripted: bool = False) -> LoadedGenerator:
    """Eval mode, no gradients, content fingerprint: the LoadedGenerator of a built module."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    spec = replace(spec, adapter=adapter.name)
    return LoadedGenerator(module, spec, fingerprint(module, spec), scripted, adapter)


def add_code_path(path: str | None) -> None:
    """Put the user's model code folder first on sys.path (kept: unpickled classes import from it later too)."""
    if not path:
        return
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"--code-path {path} is not a folder; point it at your model code checkout (the folder holding dnnlib/ and torch_utils/).")
    s = str(p.resolve())
    if s not in sys.path:
        sys.path.insert(0, s)


def fixed_normal(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """n x d standard normal rows from a fixed PCG64 stream (for mean latents; the same on every platform)."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def scale_rows(fc: nn.Module, s: torch.Tensor) -> list[str]:
    """Multiply output feature u of a fully connected layer (weight [out, in], bias [out]) by s[u]."""
    fc.weight.mul_(s.to(fc.weight.dtype).view(-1, 1))
    names = ["weight"]
    if getattr(fc, "bias", None) is not None:
        fc.bias.mul_(s.to(fc.bias.dtype))
        names.append("bias")
    return names


def bake_with_rules(module: nn.Module, edits: Edits, rule: Rule,
                    fallback: Callable[[nn.Module, Edits, Any], BakeResult] | None = None, example: Any = None) -> BakeResult:
    """Bake each layer with the family's `rule` (in a deep copy); layers it declines go to `fallback` (repair/rules.py's generic rules)."""
    work = copy.deepcopy(module)
    layers: list[LayerBake] = []
    for layer, (units, alpha) in edits.items():
        s = torch.ones(_channels(work, layer), dtype=torch.float64)
        if max(units) >= len(s):
            raise UserError(f"unit {max(units)} is out of range: layer {layer!r} has {len(s)} units (0..{len(s) - 1}).")
        s[list(units)] = 1 - torch.tensor(alpha, dtype=torch.float64)
        with torch.no_grad():
            got = rule(work, layer, s)
        if isinstance(got, tuple):
            method, edited = got
            layers.append(LayerBake(layer, units, alpha, True, method, tuple(edited)))
            continue
        if fallback is not None:
            generic = fallback(work, {layer: (units, alpha)}, example)
            if generic.exact:
                work = generic.model  # the generic rules baked it into their own copy
                layers.extend(generic.layers)
                continue
            got = got + "; " + generic.reason
        layers.append(LayerBake(layer, units, alpha, False, "refused", reason=got))
    ok = all(lb.exact for lb in layers)
    return BakeResult(work if ok else None, layers)


def _channels(model: nn.Module, layer: str) -> int:
    """Output channels of a layer, from its own (or its first weighted submodule's) sizes."""
    for m in dict(model.named_modules())[layer].modules():
        for attr in ("out_channels", "out_features", "out_channel", "num_features"):
            if isinstance(getattr(m, attr, None), int):
                return int(getattr(m, attr))
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            return int(w.shape[1] if w.dim() == 5 else w.shape[0])  # rosinality keeps modulated weights as [1, out, in, k, k]
    raise UserError(f"cannot tell how many units layer {layer!r} has; pick a layer with weights.")


def state_dict_keys(spec: GeneratorSpec, allow: tuple[Any, ...] = ()) -> frozenset[str]:
    """Tensor names of the spec's checkpoint state dict, read safely (empty when it cannot be); cached per file version."""
    if not spec.checkpoint or not Path(spec.checkpoint).is_file():
        return frozenset()
    st = Path(spec.checkpoint).stat()
    return _keys(str(Path(spec.checkpoint).resolve()), st.st_mtime_ns, st.st_size, spec.key, allow)


@functools.lru_cache(maxsize=8)
def _keys(path: str, _mtime: int, _size: int, key: str | None, allow: tuple[Any, ...]) -> frozenset[str]:
    try:
        sd = extract_state_dict(read_checkpoint(path, False, allow), key, path)
    except Exception:  # detection only: the loader that runs next reports a bad file in its own words
        return frozenset()
    return frozenset(sd.state_dict() if isinstance(sd, nn.Module) else sd)


def named(module: nn.Module, layer: str) -> nn.Module | None:
    """The submodule called `layer`, or None."""
    return dict(module.named_modules()).get(layer)
