"""Feature extractors for FD and KID: EfficientNet-Lite0 (default, offline), FID Inception-v3, TorchScript.

Every extractor takes uint8 images (NHWC or NCHW, numpy or torch), resizes each image *from uint8*
with PIL's antialiased bicubic filter in float mode, one channel at a time, clipped to [0, 255]
(clean-fid's "clean" resize), normalises as its network expects, and returns float32 features
(N, dim). Work is batched (`feature_batch` images per forward pass) under `torch.inference_mode()`,
in channels-last layout with batch-norm folded into the preceding convolutions; the result does not
depend on the batch size beyond float rounding (about 1e-6 relative).

Extractors are looked up by name in a registry that validates names: `get_extractor("effnet-lite0")`,
`get_extractor("inception", inception_weights=PATH)`, `get_extractor("torchscript:net.pt")`.
Nothing is ever downloaded.

The modules: `extractor` (the base class and shared preprocessing), `effnet` (EfficientNet-Lite0), `inception`
(FID Inception-v3); this one holds the TorchScript extractor and the registry.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import defaults
from ..errors import UserError
from ..io import sha256_file
from .effnet import EffNetLite0
from .extractor import Extractor
from .inception import Inception

_RANGES = {"[0,1]": (0.0, 1.0), "[-1,1]": (-1.0, 1.0), "[0,255]": (0.0, 255.0)}


class TorchScriptFeatures(Extractor):
    """A user's TorchScript network: float32 NCHW input in `torchscript_range` at `torchscript_size`,
    any output flattened to (N, d). The tag is `ts` + the first 8 hex digits of the file's SHA-256."""

    name = "torchscript"

    def __init__(self, path: str | os.PathLike, batch: int | None = None, channels_last: bool = True,
                 torchscript_size: int | None = None, torchscript_range: str | None = None,
                 device: str | torch.device | None = None, **_: Any) -> None:
        super().__init__(batch, channels_last, device)
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"TorchScript feature network not found: {p} (use 'torchscript:PATH' with an existing file).")
        self._sha = sha256_file(p)
        self.tag = "ts" + self._sha[:8]
        self.path = str(p)
        size = defaults.get("metrics", "torchscript_size") if torchscript_size is None else int(torchscript_size)
        self.size = (size, size) if size and size > 0 else None
        rng = (torchscript_range or defaults.get("metrics", "torchscript_range")).replace(" ", "")
        if rng not in _RANGES:
            raise UserError(f"torchscript_range must be one of {', '.join(_RANGES)}; got {rng!r}.")
        self.range = rng
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(p), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - the user's file
            raise UserError(f"{p} is not a TorchScript file torch.jit.load can read ({type(e).__name__}); "
                            "save your network with torch.jit.script(net).save(path) or torch.jit.trace.") from None
        self.net = net.eval().to(self.device)
        if self.size is not None:
            self.dim = int(self(np.zeros((1, *self.size, 3), np.uint8)).shape[1])

    def _weights_id(self) -> dict[str, Any]:
        return {"weights_sha256": self._sha, "range": self.range}

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = _RANGES[self.range]
        return x * ((hi - lo) / 255.0) + lo

    def __call__(self, images: Any) -> np.ndarray:
        try:
            out = super().__call__(images)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's network failed on our input
            raise UserError(f"TorchScript feature network {self.path} failed on a batch of shape "
                            f"(N, 3, {self.size or 'H, W'}) in {self.range}: {type(e).__name__}: {e}") from None
        self.dim = int(out.shape[1]) if out.ndim == 2 and out.shape[0] else self.dim
        return out


EXTRACTORS: dict[str, Callable[..., Extractor]] = {
    "effnet-lite0": EffNetLite0,
    "inception": Inception,
}

TORCHSCRIPT_PREFIX = "torchscript:"


def extractor_names() -> list[str]:
    """Valid feature-space names (the TorchScript form takes a path)."""
    return [*EXTRACTORS, TORCHSCRIPT_PREFIX + "PATH"]


def get_extractor(name: str | Extractor | None = None, **opts: Any) -> Extractor:
    """The extractor called `name` (default: the `features` option), built with `opts`.

    `opts` may hold batch, channels_last, fold_bn, inception_weights, torchscript_size, torchscript_range;
    options an extractor does not use are ignored. An unknown name is a UserError listing the valid ones.
    """
    if isinstance(name, Extractor):
        return name
    name = (name or defaults.get("metrics", "features")).strip()
    if name.startswith(TORCHSCRIPT_PREFIX):
        path = name[len(TORCHSCRIPT_PREFIX):]
        if not path:
            raise UserError("Feature space 'torchscript:PATH' needs a path after the colon, e.g. torchscript:net.pt.")
        return TorchScriptFeatures(path, **opts)
    factory = EXTRACTORS.get(name.lower())
    if factory is None:
        raise UserError(f"Unknown feature space {name!r}; valid names: {', '.join(extractor_names())}.")
    return factory(**opts)
