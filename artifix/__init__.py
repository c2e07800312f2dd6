"""artifix: find the generator units that cause GAN artifacts, remove them, and prove the result is better.

`import artifix` stays light (no torch import); the Python API (`artifix.api`) loads on first use:
`import artifix as ax; g = ax.from_module(G, latent=512); run = ax.open(g, layer="..."); run.score()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("from_module", "load", "bundled_example", "layers", "sample", "open", "Run", "Ranking", "RepairReport")
__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily below
    from .api import Ranking, RepairReport, Run, bundled_example, from_module, layers, load, open, sample  # noqa: F401


def __getattr__(name: str) -> Any:
    """Load the API facade on first access of one of its names (PEP 562)."""
    if name in _API:
        from . import api  # lazy on purpose: `import artifix` stays light (no torch), see the module docstring

        return getattr(api, name)
    raise AttributeError(f"module 'artifix' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
