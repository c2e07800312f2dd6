"""The one table of defaults. API functions, CLI flags and `artifix.toml` keys all read it.

Each option lives in a section (the TOML table name) and has one name used everywhere:
`[generator] latent = "100,1,1"` in TOML, `--latent 100,1,1` on the command line,
`defaults.get("generator", "latent")` in code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    """One setting: its section, name, default, parser for CLI/TOML strings, and help text."""

    section: str
    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    flag: bool = False  # a boolean switch (store_true) on the command line

    @property
    def cli(self) -> str:
        """The command-line flag, e.g. `--trust-pickle`."""
        return "--" + self.name.replace("_", "-")


def _bool(s: str) -> bool:
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {s!r}")


OPTIONS: tuple[Option, ...] = (
    # -- generator spec
    Option("generator", "generator", None,
           "generator factory 'package.module:callable' or 'path/file.py:callable', or a TorchScript file; "
           "default: the bundled example"),
    Option("generator", "checkpoint", None, "checkpoint file (.pt/.pth state dict or dict holding one, or .safetensors)"),
    Option("generator", "key", None, "key of the state dict inside the checkpoint (auto-detected when omitted)"),
    Option("generator", "kwargs", None, "JSON object of keyword arguments for the factory, e.g. '{\"ngf\": 32}'"),
    Option("generator", "latent", "100,1,1", "latent shape per sample, e.g. '100' or '512' or '100,1,1'"),
    Option("generator", "truncation", None, "truncate latents to |z| <= T by resampling (normal distribution)", float),
    Option("generator", "classes", 0, "number of classes of a conditional generator (0 = unconditional)", int),
    Option("generator", "class_mode", "index", "how the class reaches G's second argument: 'index' or 'onehot'"),
    Option("generator", "range", "[-1,1]", "generator output range: '[-1,1]' or '[0,1]'"),
    Option("generator", "trust_pickle", False,
           "allow full pickle loading of the checkpoint (runs code inside it; only for files you trust)", _bool, flag=True),
    # -- sampling
    Option("sample", "seed", 0, "sampling seed: sample i is a pure function of (seed, i)", int),
    Option("sample", "n", 64, "number of samples", int),
    Option("sample", "start", 0, "index of the first sample", int),
    Option("sample", "batch", 64, "batch size (results do not depend on it)", int),
    Option("sample", "class_id", None, "sample only this class (conditional generators)", int),
    Option("sample", "grid", "samples.png", "write a grid PNG of the samples here"),
    Option("sample", "images", None, "also write each sample as <index>.png into this folder"),
    Option("sample", "layer", None, "generator layer to trace or edit (dotted module path as in 'artifix layers')"),
    Option("sample", "ablate", None, "comma-separated units of --layer to ablate while sampling, e.g. '3,17'"),
    Option("sample", "alpha", 1.0, "ablation strength in [0, 1] for --ablate", float),
    # -- metrics
    Option("metrics", "features", "effnet-lite0", "feature space: 'effnet-lite0', 'inception' or 'torchscript:PATH'"),
    Option("metrics", "metrics", "fd,kid,swd", "comma-separated metrics to compute"),
    Option("metrics", "real", None, "reference data: image folder, .npz array or statistics file; default: the example's scenes"),
    Option("metrics", "inception_weights", None, "path to pt_inception-2015-12-05 weights (or $ARTIFIX_INCEPTION_WEIGHTS)"),
    Option("metrics", "bootstrap", 200, "bootstrap resamples for confidence intervals", int),
    Option("metrics", "confidence", 0.95, "confidence level of intervals", float),
    Option("metrics", "kid_subsets", 100, "KID: number of random subsets", int),
    Option("metrics", "kid_subset_size", 1000, "KID: subset size (clipped to the sample count)", int),
    Option("metrics", "fd_inf", False, "also extrapolate FD to infinite N (FID-inf)", _bool, flag=True),
    # -- shared run settings
    Option("run", "out", None, "output folder"),
    Option("run", "cache", ".artifix-cache", "cache folder for reference statistics and rendered data"),
    Option("run", "threads", 0, "torch CPU threads (0 = torch's default)", int),
)

_BY_KEY: dict[tuple[str, str], Option] = {(o.section, o.name): o for o in OPTIONS}


def option(section: str, name: str) -> Option:
    """The option `section.name`; KeyError if it is not in the table."""
    return _BY_KEY[(section, name)]


def get(section: str, name: str) -> Any:
    """The default value of `section.name`."""
    return _BY_KEY[(section, name)].default


def section(section: str) -> dict[str, Any]:
    """All defaults of one section as a dict."""
    return {o.name: o.default for o in OPTIONS if o.section == section}
