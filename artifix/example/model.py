"""The bundled example GAN: DCGAN-tutorial-shaped generator and discriminator for 64x64 scenes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .. import resources
from . import scenes

DATA_DIR = resources.example_dir()
CHECKPOINT = DATA_DIR / "dcgan_scenes.pt"
NZ = 100
NGF = 32
NDF = 24
LAYER = "main.8"  # default layer to diagnose: 64 units at 16x16, after the second-to-last ReLU block


class Generator(nn.Module):
    """z (N, nz, 1, 1) -> image (N, 3, 64, 64) in [-1, 1], as in the PyTorch DCGAN tutorial."""

    def __init__(self, nz: int = NZ, ngf: int = NGF, nc: int = 3) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),  # 4x4
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),  # 8x8
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),  # 16x16
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),  # 32x32
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),  # 64x64
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    """image (N, 3, 64, 64) -> logit (N,), DCGAN-tutorial shape without the final sigmoid."""

    def __init__(self, ndf: int = NDF, nc: int = 3) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),  # 32
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),  # 16
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),  # 8
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),  # 4
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


def make_generator(nz: int = NZ, ngf: int = NGF) -> Generator:
    """Factory used by the example's generator spec (`artifix.example:make_generator`)."""
    return Generator(nz=nz, ngf=ngf)


def make_discriminator(ndf: int = NDF) -> Discriminator:
    """Factory for the example's discriminator."""
    return Discriminator(ndf=ndf)


# ---------------------------------------------------------------------------------------- the bundled review

REVIEW_DIR = DATA_DIR / "review"  # the maintainers' review of the example: flags.csv, approvals.json, classifier.pt


def bundled_review() -> dict:
    """The maintainers' recorded review of the unmodified example (approvals.json)."""
    return json.loads((REVIEW_DIR / "approvals.json").read_text())


def seed_bundled_review(store, run_id: int, fingerprint: str, layer: str) -> dict | None:
    """On the unmodified example with an empty run, import the bundled flags and approvals; returns what was added."""
    review = bundled_review()
    if fingerprint != review["fingerprint"] or layer != review["layer"]:
        return None
    counts = store.counts(run_id)
    if counts["flag_events"] or counts["masked"] or len(store.unit_decisions(run_id)):
        return None  # the team's own labels win: never mix the bundled review into them
    imported = store.import_labels(run_id, REVIEW_DIR / "flags.csv", reviewer=review["reviewer"])
    store.propose_units(run_id, [(layer, int(a["unit"])) for a in review["approved"]], "artifix", note="bundled example review")
    for a in review["approved"]:
        store.decide_unit(run_id, layer, int(a["unit"]), "approved", review["reviewer"], note=a["note"])
    return {"flags": imported, "approved": [int(a["unit"]) for a in review["approved"]], "reviewer": review["reviewer"]}


# ---------------------------------------------------------------------------------------- the example's profile

FACTORY = "artifix.example:make_generator"
DISSECT_LAYERS = ("main.2", "main.5", "main.8", "main.11")
# the example's causal-check layer: 20 units are 16 % of main.5 but a third of main.8, whose ablation wrecks the images
ACE_LAYER = "main.5"
REAL_SCENES_SEED = 2  # the example GAN trains on scene stream 1; stream 2 is held out as its reference data


def reference_scenes(n: int) -> Iterator[np.ndarray]:
    """The example's reference images: the first n scenes of the held-out stream, uint8 NHWC in batches of 256."""
    for b in scenes.stream(REAL_SCENES_SEED, n, 256):
        yield b.images


def example_profile() -> dict:
    """The example's generator-specific defaults, as the fields of `artifix.profiles.Profile`."""
    review = bundled_review()
    return {"name": "bundled example", "default_layer": LAYER, "dissect_layers": DISSECT_LAYERS, "ace_layer": ACE_LAYER,
            "segmenter": DATA_DIR / "segmenter.pt",
            "reference": {"describe": {"kind": "scenes", "seed": REAL_SCENES_SEED}, "batches": reference_scenes,
                          "label": "bundled scenes", "note": "generated deterministically from the seed (artifix.example.scenes); no file"},
            "review": {**review, "directory": str(REVIEW_DIR)}}
