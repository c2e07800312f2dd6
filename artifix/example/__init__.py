"""The bundled example: its generator (model), the scenes it draws, planted defects, and the demos.

`artifix.example:make_generator` (the factory string the bundled checkpoint records) resolves here."""

from __future__ import annotations

# re-exported: `artifix.example:make_generator` is the factory string the bundled checkpoint records, and the
# generator classes keep the import path they have always had
from .model import FACTORY, LAYER, NDF, NGF, NZ, Discriminator, Generator, make_discriminator, make_generator

__all__ = ["FACTORY", "LAYER", "NDF", "NGF", "NZ", "Discriminator", "Generator", "make_discriminator", "make_generator"]
