"""rosinality/stylegan2-pytorch generators: `g_ema` state dicts built with the checkout's `Generator(**--kwargs)`.

Sampling is `g([z], truncation=psi, truncation_latent=mean, randomize_noise=False)`, which returns a tuple
(images, latents); `mean` is the mean of g.style over 4096 latents from a fixed seed (what g.mean_latent
does, without its unseeded randn). The checkpoint keeps its layout ({'g', 'd', 'g_ema', 'args', ...});
its `args` (an argparse.Namespace) is allowed by the safe loader.

Exact baking: EqualLinear layers (style.*, *.modulation) scale weight row u and bias u; the last StyledConv
(`convs.<last>`) feeds only the last ToRGB, which is not demodulated, so its style channel u
(to_rgbs.<last>.conv.modulation row u) carries the edit. Other StyledConvs feed a demodulated convolution
and cannot be baked (see adapters/stylegan.py); they fall back to a verified TorchScript module.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..model.generator import (GeneratorSpec, LoadedGenerator, extract_state_dict, load_into, read_checkpoint, resolve_factory)
from .base import Adapter, Edits, add_code_path, bake_with_rules, finish, fixed_normal, named, scale_rows, state_dict_keys

MEAN_N = 4096
MEAN_ATTR = "_artifix_mean_latent"  # a plain attribute, not a buffer: the state dict (and the export) stay as they were
KEYS = ("input.input", "conv1.conv.weight", "to_rgb1.conv.weight")


class RosinalityAdapter(Adapter):
    """stylegan2-pytorch (rosinality) Generator: list in, (images, latents) out."""

    name = "rosinality"
    safe_globals = (argparse.Namespace,)

    def detect(self, spec: GeneratorSpec) -> bool:
        """A state dict with rosinality's names (input.input, conv1.conv, to_rgb1)."""
        keys = state_dict_keys(spec, self.safe_globals)
        return all(k in keys for k in KEYS)

    def load(self, spec: GeneratorSpec) -> LoadedGenerator:
        """Generator(**kwargs) from --generator (default 'model:Generator' on --code-path), weights from g_ema."""
        add_code_path(spec.code_path)
        target = spec.generator or "model:Generator"
        if not spec.checkpoint:
            raise UserError("the rosinality adapter needs --checkpoint (the .pt file holding g_ema).")
        try:
            module = resolve_factory(target)(**dict(spec.kwargs))
        except TypeError as e:
            raise UserError(f"calling {target} with kwargs {dict(spec.kwargs)} failed: {e}; pass the training sizes with "
                            "--kwargs, e.g. '{\"size\": 256, \"style_dim\": 512, \"n_mlp\": 8}'.") from None
        obj = read_checkpoint(spec.checkpoint, spec.trust_pickle, self.safe_globals)
        sd = extract_state_dict(obj, spec.key, spec.checkpoint)
        load_into(module, sd.state_dict() if isinstance(sd, nn.Module) else sd, spec.checkpoint)
        dim = int(getattr(module, "style_dim", 0) or 0)
        if dim <= 0:
            raise UserError(f"{target} has no style_dim; point --generator at rosinality's model.py:Generator.")
        spec = replace(spec, latent=(dim,), classes=0, truncation_space="w")
        loaded = finish(module, spec, self)
        if spec.truncation is not None and spec.truncation < 1:
            with torch.no_grad():
                setattr(module, MEAN_ATTR, module.style(fixed_normal(MEAN_N, dim)).mean(0, keepdim=True))
        return loaded

    def forward(self, module: nn.Module, spec: GeneratorSpec, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """g([z], truncation=psi, truncation_latent=mean, randomize_noise=False)[0]."""
        psi = 1.0 if spec.truncation is None else float(spec.truncation)
        mean = getattr(module, MEAN_ATTR, None)
        out = module([z.reshape(z.shape[0], -1)], truncation=psi, truncation_latent=None if mean is None else mean.to(z.device),
                     randomize_noise=False)
        return out[0] if isinstance(out, (tuple, list)) else out

    def default_layers(self, module: nn.Module) -> list[str]:
        """The StyledConv at 32 px (or the last one when smaller), then the other StyledConvs."""
        convs = [n for n, _ in module.named_modules() if re.fullmatch(r"convs\.\d+", n)]
        if not convs:
            return []
        size = int(getattr(module, "size", 2 ** (len(convs) // 2 + 2)))
        res = min(size, 32)
        best = f"convs.{2 * (int(math.log2(res)) - 3) + 1}"
        best = best if best in convs else convs[-1]
        return [best] + [c for c in convs if c != best]

    def bake(self, module: nn.Module, edits: Edits, example: Any = None) -> Any:
        """EqualLinear layers and the last StyledConv bake exactly; the rest is refused."""
        return bake_with_rules(module, edits, _rule)


def _is_equal_linear(m: nn.Module | None) -> bool:
    """rosinality's EqualLinear: weight [out, in], bias [out], runtime scale, optional fused leaky ReLU."""
    w = getattr(m, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2 and hasattr(m, "scale") and hasattr(m, "lr_mul")


def _rule(work: nn.Module, layer: str, s: torch.Tensor) -> tuple[str, list[str]] | str:
    """How to bake out[:, u] *= s[u] at `layer` of a rosinality Generator, or why not."""
    m = named(work, layer)
    if _is_equal_linear(m):
        return "scale-output", [f"{layer}.{p}" for p in scale_rows(m, s)]
    convs = getattr(work, "convs", None)
    rgbs = getattr(work, "to_rgbs", None)
    if convs is not None and rgbs is not None and len(rgbs) and layer == f"convs.{len(convs) - 1}":
        mod = getattr(getattr(rgbs[-1], "conv", None), "modulation", None)
        if _is_equal_linear(mod) and not getattr(rgbs[-1].conv, "demodulate", True):
            last = len(rgbs) - 1
            return "scale-consumer-style", [f"to_rgbs.{last}.conv.modulation.{p}" for p in scale_rows(mod, s)]
    return (f"{layer} feeds a demodulated convolution, whose normalisation no weight change can reproduce; only EqualLinear "
            f"layers (style.*, *.modulation) and the last StyledConv bake exactly")
