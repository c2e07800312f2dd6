"""The `module` adapter (a factory + state dict / safetensors, or a pickled module: today's loading path) and
`torchscript` (a TorchScript file: sampled, measured and gated, but hooks cannot enter it)."""

from __future__ import annotations

from pathlib import Path

from ..model.generator import GeneratorSpec, _is_torchscript
from .base import Adapter

TS_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".zip", ".torchscript")


class ModuleAdapter(Adapter):
    """A torch.nn.Module called as G(z) or G(z, y); loaded by generator.load_generator's own code."""

    name = "module"


class TorchScriptAdapter(Adapter):
    """A TorchScript generator file: metrics and gate only (no hooks, so no scoring, repair or export)."""

    name = "torchscript"
    hookable = False

    def detect(self, spec: GeneratorSpec) -> bool:
        """A --generator (or lone --checkpoint) that is a TorchScript archive."""
        path = spec.generator if spec.generator and ":" not in spec.generator else (None if spec.generator else spec.checkpoint)
        return bool(path) and Path(path).suffix in TS_SUFFIXES + (".pkl",) and Path(path).is_file() and _is_torchscript(Path(path))


REFUSAL = ("{what} needs hooks inside the generator, and a TorchScript file cannot carry them; use the Python generator "
           "(--generator 'module:callable' with --checkpoint) for {what}, or run 'artifix metrics' / 'artifix gate' on this file.")
