"""Planted defects: a known ground truth for the scoring and repair benchmarks, and the demo.

`plant_defects` copies a DCGAN-shaped generator and turns K units of one ReLU layer into artifact units:
their BatchNorm parameters make them fire rarely but strongly (only where the unit's normalised
pre-activation is in its top `rate` fraction), and their outgoing weights into the next transposed
convolution push a fixed set of downstream channels whose pixel colour is magenta, so every firing
draws a visible blotch. Only the planted units' own parameters change, so ablating exactly those units
removes the blotches. `simulate_reviewer` flags samples whose pixels changed and paints where.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..model.generator import LoadedGenerator, fingerprint, forward, images_at, latents
from ..model.trace import Trace, ablation, get_layer


@dataclass(frozen=True)
class PlantedSite:
    """Where to plant: the BatchNorm before the ReLU layer, the ReLU itself, and the next ConvTranspose2d."""

    bn: str = "main.7"
    relu: str = "main.8"
    next_conv: str = "main.9"
    out_conv: str = "main.12"


def _magenta_direction(g: nn.Module, site: PlantedSite) -> torch.Tensor:
    """Per-channel weights (into the layer after next_conv) whose pixel contribution is magenta."""
    out_w = get_layer(g, site.out_conv).weight.detach()  # (C_in, 3, k, k)
    colour = out_w.sum((2, 3))  # (C_in, 3): what each last-hidden channel adds to R, G, B
    target = torch.tensor([1.0, -1.0, 1.0])
    score = colour @ target
    return score.clamp(min=0) / score.clamp(min=0).max().clamp(min=1e-8)


def plant_defects(g: LoadedGenerator, units: list[int], rate: float = 0.0007, strength: float = 6.0,
                  site: PlantedSite = PlantedSite(), seed: int = 0, n_calib: int = 256) -> LoadedGenerator:
    """A copy of G whose `units` at `site.relu` fire in the top `rate` of positions and draw magenta blotches."""
    module = copy.deepcopy(g.module)
    bn = get_layer(module, site.bn)
    nxt = get_layer(module, site.next_conv)
    # calibrate: the normalised pre-activation of each unit at the BN output, on seeded latents
    z, y = latents(g.spec, seed + 10_000, range(n_calib))
    with Trace(module, site.bn) as t:
        forward(LoadedGenerator(module, g.spec, g.fingerprint), z, y)
    pre = t[site.bn]  # (N, C, h, w) BN output
    mean_w = bn.weight.detach().clone()
    with torch.no_grad():
        direction = _magenta_direction(module, site)
        # next BN after next_conv: keep the sign so positive input pushes the channel up
        nbn = _next_bn(module, site)
        sign = torch.sign(nbn.weight.detach()) if nbn is not None else torch.ones_like(direction)
        for u in units:
            v = pre[:, u].flatten()
            std = v.std().clamp(min=1e-6)
            thr = torch.quantile(v, 1 - rate)
            # new BN output = k * (old - thr): positive only above the threshold, steep
            k = strength / std
            bn.weight[u] = mean_w[u] * k
            bn.bias[u] = (bn.bias[u] - thr) * k
            nxt.weight[u] = (direction * sign)[:, None, None] * nxt.weight.detach().abs().mean() * 40
    planted = LoadedGenerator(module, g.spec, "", g.scripted)
    planted.fingerprint = fingerprint(module, g.spec)
    return planted


def _next_bn(module: nn.Module, site: PlantedSite) -> nn.BatchNorm2d | None:
    """The BatchNorm right after next_conv in module order, if any."""
    names = [n for n, _ in module.named_modules()]
    mods = dict(module.named_modules())
    i = names.index(site.next_conv)
    for n in names[i + 1:]:
        if isinstance(mods[n], nn.BatchNorm2d):
            return mods[n]
        if isinstance(mods[n], (nn.ConvTranspose2d, nn.Conv2d)):
            return None
    return None


@dataclass
class Review:
    """What the simulated reviewer did: flagged artifact samples, clean samples and painted masks."""

    artifact: list[int]
    clean: list[int]
    masks: dict[int, np.ndarray]  # sample -> bool (H, W)
    changed_fraction: np.ndarray  # per scanned sample: fraction of pixels that changed


def low_impact_units(g: LoadedGenerator, site: PlantedSite = PlantedSite(), seed: int = 0, n: int = 64, k: int = 16) -> list[int]:
    """The k units of site.relu whose ablation changes G's images least: planting there leaves the rest of G intact."""
    z, y = latents(g.spec, seed + 20_000, range(n))
    with torch.inference_mode():
        base = forward(g, z, y)
        c = get_layer(g.module, site.bn).num_features
        impact = []
        for u in range(c):
            with Trace(g.module, edit={site.relu: ablation([u])}):
                impact.append(float((forward(g, z, y) - base).abs().mean()))
    return sorted(int(u) for u in np.argsort(impact, kind="stable")[:k])


def pixel_change(clean: LoadedGenerator, planted: LoadedGenerator, seed: int, indices: list[int], threshold: int = 40) -> np.ndarray:
    """Per sample, a bool (H, W) map of the visible blotches: pixels that moved by > threshold and turned magenta."""
    a = images_at(clean, seed, indices).astype(np.int16)
    b = images_at(planted, seed, indices).astype(np.int16)
    magenta = (b[..., 0] > 170) & (b[..., 1] < 110) & (b[..., 2] > 170)
    return (np.abs(a - b).max(-1) > threshold) & magenta


def simulate_reviewer(clean: LoadedGenerator, planted: LoadedGenerator, seed: int, n_scan: int, n_flag: int = 30,
                      n_clean: int = 30, min_area: float = 0.004) -> Review:
    """Scan samples 0..n_scan-1; flag up to n_flag with visible blotches (painting them) and n_clean without any."""
    changed = np.concatenate([pixel_change(clean, planted, seed, list(range(s, min(s + 64, n_scan)))) for s in range(0, n_scan, 64)])
    frac = changed.reshape(len(changed), -1).mean(1)
    artifact = [int(i) for i in np.flatnonzero(frac >= min_area)[:n_flag]]
    clean_ids = [int(i) for i in np.flatnonzero(frac < min_area / 4)[:n_clean]]  # no visible blotch
    return Review(artifact, clean_ids, {i: changed[i] for i in artifact}, frac)
