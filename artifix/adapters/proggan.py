"""ProGAN in GAN Dissection's layout: an nn.Sequential `layer1 ... layerN, output_RxR` read from a state dict.

The network is built here (no user code): every size comes from the state dict's conv weights
(`layer<i>.conv.weight` [out, in, k, k], `layer<i>.wscale.b`, `output_<R>x<R>.conv.weight`). layer1 maps the
z vector (as a 1x1 map) to 4x4 with a 4x4 kernel, even layers keep the resolution, odd layers from layer3
double it first; each block is pixel norm -> [2x nearest] -> conv (no bias) -> x * scale + b -> leaky ReLU.

Exact baking of out[:, u] *= s_u at a block `layer<i>` (or its `.wscale` / `.relu`): conv weight row u and b[u]
times s_u (leaky ReLU is positively homogeneous). The pixel norm of the next block is not per-channel, so
the edit is baked where it is made, never downstream. A block's `.conv` bakes by the generic conv rule.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..model.generator import GeneratorSpec, LoadedGenerator, extract_state_dict, load_into, read_checkpoint
from ..repair.bake import bake_edits
from .base import Adapter, Edits, bake_with_rules, finish, named, state_dict_keys

LAYER = re.compile(r"layer(\d+)\.conv\.weight")
OUTPUT = re.compile(r"output_(\d+)x\1\.conv\.weight")


class PixelNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + 1e-8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class Double(nn.Module):
    """2x nearest-neighbour upsampling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest")


class WScale(nn.Module):
    """Equalised learning rate: x * gain / sqrt(fan_in) + b (per channel)."""

    def __init__(self, channels: int, fan_in: int, gain: float) -> None:
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.b.view(1, -1, 1, 1)


class Block(nn.Module):
    """pixel norm -> [2x up] -> conv -> wscale -> leaky ReLU (output blocks: no up, no activation)."""

    def __init__(self, cin: int, cout: int, k: int, up: bool = False, output: bool = False) -> None:
        super().__init__()
        self.norm = PixelNorm()
        if up:
            self.up = Double()
        self.conv = nn.Conv2d(cin, cout, k, 1, (k - 1) if k == 4 else k // 2, bias=False)
        self.wscale = WScale(cout, cin, 1.0 if output else math.sqrt(2) / k)
        if not output:
            self.relu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if hasattr(self, "up"):
            x = self.up(x)
        x = self.wscale(self.conv(x))
        return self.relu(x) if hasattr(self, "relu") else x


class ProgressiveGenerator(nn.Sequential):
    """GAN Dissection's ProGAN generator, sized from a state dict."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        idx = sorted(int(m.group(1)) for k in sd if (m := LAYER.fullmatch(k)))
        outs = [k for k in sd if OUTPUT.fullmatch(k)]
        if not idx or idx != list(range(1, len(idx) + 1)) or len(outs) != 1:
            raise UserError("the state dict is not in GAN Dissection's ProGAN layout (layer1..layerN.conv.weight and one "
                            "output_RxR.conv.weight); pick another --adapter.")
        seq: list[tuple[str, nn.Module]] = []
        for i in idx:
            w = sd[f"layer{i}.conv.weight"]
            seq.append((f"layer{i}", Block(int(w.shape[1]), int(w.shape[0]), int(w.shape[2]), up=i >= 3 and i % 2 == 1)))
        w = sd[outs[0]]
        seq.append((outs[0].split(".")[0], Block(int(w.shape[1]), int(w.shape[0]), int(w.shape[2]), output=True)))
        super().__init__(OrderedDict(seq))
        self.z_dim = int(sd["layer1.conv.weight"].shape[1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(z.reshape(z.shape[0], -1, 1, 1))


class ProGANAdapter(Adapter):
    """GAN Dissection's ProGAN (layer1 ... layerN), built from the checkpoint alone."""

    name = "proggan"

    def detect(self, spec: GeneratorSpec) -> bool:
        """A lone checkpoint whose state dict has layer<i>.conv.weight and output_RxR.conv.weight."""
        if spec.generator or not spec.checkpoint:
            return False
        keys = state_dict_keys(spec)
        return "layer1.conv.weight" in keys and any(OUTPUT.fullmatch(k) for k in keys)

    def load(self, spec: GeneratorSpec) -> LoadedGenerator:
        """Build the network from the state dict's sizes and load it."""
        if not spec.checkpoint:
            raise UserError("the proggan adapter needs --checkpoint (a GAN Dissection ProGAN state dict, .pth).")
        sd = extract_state_dict(read_checkpoint(spec.checkpoint, spec.trust_pickle), spec.key, spec.checkpoint)
        sd = sd.state_dict() if isinstance(sd, nn.Module) else sd
        module = ProgressiveGenerator(sd)
        load_into(module, sd, spec.checkpoint)
        return finish(module, replace(spec, latent=(module.z_dim,), classes=0), self)

    def default_layers(self, module: nn.Module) -> list[str]:
        """layer4 (GAN Dissection's choice), then the other blocks."""
        blocks = [n for n, _ in module.named_children() if n.startswith("layer")]
        best = "layer4" if "layer4" in blocks else blocks[len(blocks) // 2]
        return [best] + [b for b in blocks if b != best]

    def bake(self, module: nn.Module, edits: Edits, example: Any = None) -> Any:
        """Blocks bake into their own conv row and bias; conv outputs by the generic rules."""
        return bake_with_rules(module, edits, _rule, bake_edits, example)


def _rule(work: nn.Module, layer: str, s: torch.Tensor) -> tuple[str, list[str]] | str:
    """out[:, u] *= s[u] at a block (or its wscale / relu): conv.weight[u] and wscale.b[u] times s[u]."""
    block_name = layer.rsplit(".", 1)[0] if layer.endswith((".wscale", ".relu")) else layer
    block = named(work, block_name)
    if not isinstance(block, Block) or (layer.endswith(".relu") and not hasattr(block, "relu")):
        return f"{layer} is not a ProGAN block output"
    block.conv.weight.mul_(s.to(block.conv.weight.dtype).view(-1, 1, 1, 1))
    block.wscale.b.mul_(s.to(block.wscale.b.dtype))
    return "scale-block-output", [f"{block_name}.conv.weight", f"{block_name}.wscale.b"]
