"""Generator adapters: one protocol (`base.Adapter`), a registry, one module per family.

`--adapter NAME` picks one; without it the family is detected from the files (a TorchScript archive, a
StyleGAN network pickle, a rosinality or ProGAN state dict), else `module` (a factory + state dict: the
original loading path, unchanged). Third-party packages add families through the `artifix.adapters`
entry-point group: each entry point names an `Adapter` subclass (or instance) whose `name` is its key.

    [project.entry-points."artifix.adapters"]
    mygan = "mygan_artifix:MyGANAdapter"
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points

from ..errors import UserError
from ..model.generator import EXAMPLE_FACTORY, GeneratorSpec
from .base import Adapter
from .module import REFUSAL, ModuleAdapter, TorchScriptAdapter
from .proggan import ProGANAdapter
from .rosinality import RosinalityAdapter
from .stylegan import StyleGANAdapter

GROUP = "artifix.adapters"
BUILTIN: tuple[type[Adapter], ...] = (ModuleAdapter, TorchScriptAdapter, StyleGANAdapter, RosinalityAdapter, ProGANAdapter)
# detection order: file formats that are unambiguous first, then state-dict layouts
DETECT_ORDER = ("torchscript", "stylegan", "rosinality", "proggan")

_registry: dict[str, Adapter] = {}
_plugins_loaded = False

__all__ = ["Adapter", "GROUP", "REFUSAL", "register", "get", "names", "detect", "for_spec"]


def register(adapter: Adapter | type[Adapter]) -> Adapter:
    """Add an adapter (class or instance) to the registry under its `name`; returns the instance."""
    inst = adapter() if isinstance(adapter, type) else adapter
    if not isinstance(inst, Adapter) or not inst.name:
        raise TypeError(f"{adapter!r} is not an artifix Adapter with a name")
    _registry[inst.name] = inst
    return inst


def _load_plugins() -> None:
    """Register the adapters installed packages declare in the artifix.adapters entry-point group (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=GROUP):
        try:
            inst = register(ep.load())
        except Exception as e:  # a broken plugin must not stop the built-in families
            raise UserError(f"the adapter plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}; "
                            "fix or uninstall that package.") from None
        if inst.name != ep.name:
            _registry[ep.name] = inst


def _ensure() -> None:
    if not _registry:
        for cls in BUILTIN:
            register(cls)
    _load_plugins()


def names() -> list[str]:
    """Every registered adapter name (built-in first, then plugins)."""
    _ensure()
    return list(_registry)


def get(name: str) -> Adapter:
    """The adapter called `name`, or a UserError naming the known ones."""
    _ensure()
    if name in _registry:
        return _registry[name]
    close = difflib.get_close_matches(name, list(_registry), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown --adapter {name!r}; known adapters: {', '.join(_registry)}.{hint}")


def detect(spec: GeneratorSpec) -> str:
    """The adapter name the spec's files call for: built-in formats, then plugins, else 'module'."""
    _ensure()
    if spec.generator == EXAMPLE_FACTORY:
        return "module"
    builtin = {c.name for c in BUILTIN}
    order = list(DETECT_ORDER) + [n for n in _registry if n not in builtin]
    for name in order:
        if _registry[name].detect(spec):
            return name
    return "module"


def for_spec(spec: GeneratorSpec) -> Adapter:
    """The spec's adapter: --adapter when given, else detected."""
    return get(spec.adapter) if spec.adapter else get(detect(spec))
