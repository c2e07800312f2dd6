"""The exact rules that bake one layer's edit into the weights, tried in order; anything else is refused.

The edit to bake is the hook edit `out[:, u] *= s_u` at `layer`, s_u = 1 - alpha_u in [0, 1] (the ablation
rule with replacement 0 and no pixel mask). Three exact rules are tried in this order:

1. scale-output. `layer` itself is a Conv1/2/3d (any groups), ConvTranspose1/2/3d (groups=1), Linear or
   Embedding (2-D output), BatchNorm / InstanceNorm / GroupNorm (affine). Its output channel u is linear in
   its own weight[u] (ConvTranspose, Embedding: weight[:, u]) and bias[u]; multiplying both by s_u scales
   the channel on every call, exactly as the hook does, whatever consumes it. Used for conv and BN layers.
2. scale-input / fold-batchnorm. `layer` sits in a plain nn.Sequential (nested plain Sequentials are
   followed; their data flow is fixed). Walk forward through modules that commute with a non-negative
   per-channel scale (ReLU, LeakyReLU, PReLU, Dropout, Identity, Upsample, pooling, zero/reflect/replicate
   padding; after Flatten(1, -1) only elementwise ones) to the first module that absorbs the scale:
   Conv (groups=1): weight[:, u] *= s_u.  ConvTranspose (groups=1): weight[u] *= s_u.
   Linear: weight[:, cols_u] *= s_u, cols_u the in_features / C columns Flatten made of channel u (one
   column when the layer's output is already 2-D).
   BatchNorm in eval mode with running statistics: BN(s x) = (s x - m) / sd * w + b, so w' = s w and
   b' = b - (1 - s) m w / sd give the same output for every x. A BN between the layer and a conv absorbs
   the edit itself; the conv behind it keeps its weights. Used for activation layers (ReLU outputs).
3. scale-output-behind. The output leaves the Sequential (or meets a module that cannot absorb it): walk
   backwards from a commuting layer through commuting modules to a module of rule 1 and scale its output
   channel (ReLU(s x) = s ReLU(x) for s >= 0).

Anything else is refused, never guessed: output reaching custom forward code (residual adds, concatenation),
non-commuting modules (Tanh, ReLU6, GroupNorm as consumer, BN with batch statistics, custom modules),
grouped consumers, modules used twice or called outside their Sequential (call counts from one probe
forward when example inputs are given), tied parameters, hooks and parametrizations (spectral / weight
norm). A refused layer gives `exact=False` with every rule's reason; `export_cleaned` then writes, instead
of weights, a TorchScript module that runs the hook edit inside its forward.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any, Callable, Sequence, Union

import torch
from torch import nn

from ..errors import UserError
from .edits import Inputs, _as_args, _call
from .weights import (_BN, _CONV, _CONVT, _PASS_CHANNEL, _PASS_ELEMENTWISE, _SHAPED, _fold_batchnorm, _is_sequential, _leaves,
                      _out_channels, _scalable_output, _scale_input, _scale_output, _stock, _untouchable)


@dataclass
class _Probe:
    """What one forward pass showed: output shapes of named modules and calls per module."""

    shapes: dict[str, tuple[int, ...] | None]
    calls: Counter


def _probe(model: nn.Module, example: Inputs, names: Sequence[str]) -> _Probe:
    """Run `model` once on `example`, counting calls of every module and recording the named outputs' shapes."""
    target = copy.deepcopy(model) if any(m.training for m in model.modules()) else model  # keep BN stats as they are
    modules = dict(target.named_modules())
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: Counter = Counter()
    index = {id(m): n for n, m in modules.items()}
    wanted = set(names)
    handles = []

    def hook(m: nn.Module, _i: Any, out: Any) -> None:
        calls[index[id(m)]] += 1
        n = index[id(m)]
        if n in wanted and n not in shapes:
            shapes[n] = tuple(out.shape) if isinstance(out, torch.Tensor) else None

    try:
        for m in modules.values():
            handles.append(m.register_forward_hook(hook))
        with torch.no_grad():
            _call(target, _as_args(example))
    finally:
        for h in handles:
            h.remove()
    return _Probe(shapes, calls)


# ------------------------------------------------------------------------------------------ outcomes and facts


@dataclass(frozen=True)
class Applied:
    """A rule baked the edit: its method, the tensors it changed, the modules between the layer and them."""

    method: str
    edited: list[str]
    path: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Refused:
    """A rule cannot bake the edit, and why; `final`: no later rule may be tried either."""

    reason: str
    final: bool = False


Outcome = Union[Applied, Refused]


@dataclass
class _Chain:
    """The outermost plain Sequential holding the layer: its leaves in call order, the layer's place, its channels."""

    root: str
    label: str
    leaves: list[tuple[str, nn.Module]]
    at: int
    channels: int | None  # from the probe, else from the nearest shaped module at or behind the layer


@dataclass
class _Site:
    """One layer's edit and what the model shows about it: the facts every rule reads."""

    model: nn.Module
    layer: str
    hooked: nn.Module
    units: tuple[int, ...]
    alpha: tuple[float, ...]
    probe: _Probe | None
    modules: dict[str, nn.Module]
    mult: Counter  # id(module) -> times the module tree holds it
    owners: dict[int, set[int]]  # id(tensor) -> ids of the modules holding it
    rank: int | None = None  # the layer output's number of dims (from the probe)
    chans: int | None = None  # and its channels
    eff_name: str = ""  # the module whose output is the layer's (a plain Sequential's last leaf)
    eff: nn.Module | None = None
    wrapper_why: str = ""  # why a Sequential layer's last leaf does not stand for the whole layer

    def calls(self, name: str) -> int | None:
        """How often the probe forward called module `name` (None without a probe)."""
        return None if self.probe is None else self.probe.calls[name]

    def unit_check(self, c: int | None) -> str:
        """Why a module of `c` channels cannot take the edit ('' when it can); a UserError for units out of range."""
        if c is None:
            return ""
        if self.chans is not None and c != self.chans:
            return f"the layer has {self.chans} channels but the module absorbing the edit expects {c}"
        bad = [u for u in self.units if u >= c]
        if bad:
            raise UserError(f"unit {bad[0]} is out of range: layer {self.layer!r} has {c} units (0..{c - 1}).")
        return ""

    def scale(self, c: int) -> torch.Tensor:
        """The per-channel scale s (1 - alpha at the units, 1 elsewhere) for `c` channels."""
        s = torch.ones(c, dtype=torch.float64)
        s[list(self.units)] = torch.tensor([1.0 - a for a in self.alpha], dtype=torch.float64)
        return s

    def editable(self, m: nn.Module, n: str, shared_ok: bool = False) -> str:
        """Why the weights of `m` cannot take the edit ('' when they can)."""
        why = _untouchable(m)
        if why:
            return f"module {n} cannot be edited: {why}"
        if not shared_ok and self.mult[id(m)] != 1:
            return f"module {n} is used more than once in the model, so editing it changes its other uses too"
        for pname in ("weight", "bias"):
            t = getattr(m, pname, None)
            if isinstance(t, torch.Tensor) and self.owners[id(t)] != {id(m)}:
                return f"{n}.{pname} is shared with another module (tied weights)"
        return ""

    def absorber(self, chain: _Chain, m: nn.Module, n: str) -> str:
        """Why module `n` of the Sequential cannot absorb the scale ('' when it can)."""
        why = self.editable(m, n)
        if not why and self.probe is not None and self.calls(n) != self.calls(chain.root):
            why = f"module {n} is called outside {chain.label}"
        return why

    def apply(self, method: str, name: str, c: int | None, rewrite: Callable[[torch.Tensor], list[str]],
              path: Sequence[str] = ()) -> Outcome:
        """Check the units against `c` channels and rewrite module `name`'s weights with the scale."""
        why = self.unit_check(c)
        if why:
            return Refused(why, final=True)
        with torch.no_grad():
            names = rewrite(self.scale(c))  # type: ignore[arg-type]
        return Applied(method, [f"{name}.{p}" for p in names], list(path))

    @cached_property
    def why_own(self) -> str:
        """Why the layer's own output weights cannot take the edit ('' when they can)."""
        return (self.wrapper_why or _scalable_output(self.eff, self.rank)
                or self.editable(self.eff, self.eff_name, shared_ok=self.eff is self.hooked))

    @cached_property
    def chain(self) -> _Chain | Refused:
        """The plain Sequential whose fixed data flow rules 2 and 3 follow, or a final refusal."""
        root: str | None = None
        cur = self.eff_name
        while True:  # climb to the outermost plain Sequential holding the layer
            parent = cur.rpartition(".")[0]
            if not _is_sequential(self.modules[parent] if parent else self.model):
                break
            root = parent
            if not parent:
                break
            cur = parent
        eff_name, calls = self.eff_name, self.calls
        if root is None:
            owner = eff_name.rpartition(".")[0]
            owner_m = self.modules[owner] if owner else self.model
            return Refused(f"{self.why_own}; and its output goes into the custom forward() of {type(owner_m).__name__} "
                           f"{owner or '(the generator)'}, which may add, concatenate or reuse it, so no weight change is "
                           "provably equal to the edit", final=True)
        label = f"Sequential {root or '(the generator)'}"
        leaves = list(_leaves(root, self.modules[root] if root else self.model))
        idx = [i for i, (n, _) in enumerate(leaves) if n == eff_name]
        if self.mult[id(self.hooked)] != 1 or self.mult[id(self.eff)] != 1 or len(idx) != 1:
            return Refused(f"module {eff_name} is used more than once in the model, so its hook edits every use", final=True)
        if self.probe is not None and not calls(self.layer) == calls(eff_name) == calls(root):
            return Refused(f"module {eff_name} is called {calls(eff_name)} times per forward but {label} "
                           f"{calls(root)} times: the forward uses it outside the Sequential too", final=True)
        struct_c = _out_channels(self.eff) if _stock(self.eff, _SHAPED) else None
        if struct_c is None:  # the channel count of the nearest shaped module behind commuting ones
            for n, m in reversed(leaves[:idx[0]]):
                if not _stock(m, _PASS_CHANNEL):
                    struct_c = _out_channels(m) if _stock(m, _SHAPED) else None
                    break
        return _Chain(root, label, leaves, idx[0], self.chans if self.chans is not None else struct_c)


def _site(model: nn.Module, layer: str, hooked: nn.Module, units: tuple[int, ...], alpha: tuple[float, ...],
          probe: _Probe | None) -> _Site | Refused:
    """The facts about one layer, or a refusal when its output (probed) or its structure rules out every rule."""
    mult = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    owners: dict[int, set[int]] = defaultdict(set)
    for m in model.modules():
        for t in list(m._parameters.values()) + list(m._buffers.values()):
            if t is not None:
                owners[id(t)].add(id(m))
    site = _Site(model, layer, hooked, units, alpha, probe, dict(model.named_modules()), mult, owners)
    if probe is not None:  # what one forward pass shows about the layer's output
        if layer not in probe.shapes:
            raise UserError(f"layer {layer!r} does not run in the generator's forward pass, so editing it has no effect.")
        shape = probe.shapes[layer]
        if shape is None or len(shape) < 2:
            return Refused(f"the layer's output is {'not a tensor' if shape is None else 'a 1-D tensor'}, so it has no channel dim")
        site.rank, site.chans = len(shape), shape[1]
        site.unit_check(site.chans)  # the channel count is the layer's own: only units out of range can fail
    eff_name, eff = layer, hooked  # a plain Sequential's output is its last module's output
    while _is_sequential(eff):
        if len(eff) == 0:
            return Refused("the layer is an empty Sequential")
        last = list(eff._modules)[-1]
        eff_name, eff = f"{eff_name}.{last}", eff._modules[last]
    site.eff_name, site.eff = eff_name, eff
    if eff is not hooked:
        site.wrapper_why = _untouchable(hooked) and f"module {layer} carries hooks or parametrizations"
        if not site.wrapper_why and (mult[id(eff)] != 1 or probe is not None and site.calls(eff_name) != site.calls(layer)):
            site.wrapper_why = f"module {eff_name} also runs outside {layer}"
    return site


# ------------------------------------------------------------------------------------------ the rules


def rule_own_output(site: _Site) -> Outcome:
    """Rule 1, scale-output: the layer's own per-channel output weights; exact on every call, whatever reads the output."""
    if site.why_own:
        return Refused(site.why_own)
    return site.apply("scale-output", site.eff_name, _out_channels(site.eff), partial(_scale_output, site.eff))


def _into_conv(site: _Site, chain: _Chain, n: str, m: nn.Module, flat: bool, passed: list[str]) -> Outcome | None:
    """A Conv / ConvTranspose consumer (groups=1) scales the weights that read channel u (None: not a conv)."""
    if flat or not _stock(m, _CONV + _CONVT):
        return None
    why = f"consumer {n} ({type(m).__name__}) has groups={m.groups}" if m.groups != 1 else site.absorber(chain, m, n)
    if why:
        return Refused(why)
    return site.apply("scale-input", n, m.in_channels, partial(_scale_input, m, cols=1), passed)


def _into_linear(site: _Site, chain: _Chain, n: str, m: nn.Module, flat: bool, passed: list[str]) -> Outcome | None:
    """A Linear consumer scales the columns of channel u, after Flatten or on a 2-D output (None: not a Linear)."""
    if not _stock(m, (nn.Linear,)):
        return None
    c_known, rank = chain.channels, site.rank
    if flat and c_known is None:
        why = f"the channel count before Flatten is unknown, so the columns of {n} cannot be assigned; pass example inputs"
    elif flat and m.in_features % c_known:
        why = f"{n} has {m.in_features} inputs, not a multiple of the layer's {c_known} channels"
    elif not flat and rank is None:
        why = f"consumer {n} is a Linear; pass example inputs to check the layer's output is 2-D"
    elif not flat and rank != 2:
        why = f"consumer {n} is a Linear acting on the last dim of a {rank}-D output, not on the channels"
    else:
        why = site.absorber(chain, m, n)
    if why:
        return Refused(why)
    c, cols = (c_known, m.in_features // c_known) if flat else (m.in_features, 1)
    return site.apply("scale-input", n, c, partial(_scale_input, m, cols=cols), passed)


def _into_batchnorm(site: _Site, chain: _Chain, n: str, m: nn.Module, flat: bool, passed: list[str]) -> Outcome | None:
    """An eval-mode BatchNorm with running statistics folds the scale into its affine weights (None: not a BN)."""
    if flat or not _stock(m, _BN):
        return None
    if m.training or not m.track_running_stats or m.running_mean is None:
        why = f"BatchNorm {n} normalises with batch statistics (training mode or no running stats); put G in eval mode"
    elif m.weight is None or m.bias is None:
        why = f"BatchNorm {n} has no affine weight and bias to absorb the edit"
    else:
        why = site.absorber(chain, m, n)
    if why:
        return Refused(why)
    return site.apply("fold-batchnorm", n, m.num_features, partial(_fold_batchnorm, m), passed)


_CONSUMERS = (_into_conv, _into_linear, _into_batchnorm)


def rule_forward(site: _Site) -> Outcome:
    """Rule 2, scale-input / fold-batchnorm: forward through commuting modules to a consumer that absorbs the scale."""
    chain = site.chain
    if isinstance(chain, Refused):
        return chain
    passed: list[str] = []
    flat = False
    for n, m in chain.leaves[chain.at + 1:]:
        why = _untouchable(m)
        if why:
            return Refused(f"module {n} on the way cannot be passed: {why}")
        if _stock(m, _PASS_ELEMENTWISE if flat else _PASS_CHANNEL):
            passed.append(n)
            continue
        if not flat and _stock(m, (nn.Flatten,)) and m.start_dim == 1 and m.end_dim == -1:
            flat = True
            passed.append(n)
            continue
        for consumer in _CONSUMERS:
            out = consumer(site, chain, n, m, flat, passed)
            if out is not None:
                return out
        return Refused(f"{n} ({type(m).__name__}) neither commutes with scaling a channel nor has weights that can absorb it")
    return Refused(f"the output reaches the end of {chain.label} and goes into custom code or the generator's output")


def rule_backward(site: _Site) -> Outcome:
    """Rule 3, scale-output-behind: backward from a commuting layer through commuting modules to a producer of rule 1."""
    chain = site.chain
    if isinstance(chain, Refused):
        return chain
    if not _stock(site.eff, _PASS_CHANNEL):
        return Refused(f"the layer ({type(site.eff).__name__}) does not commute with scaling a channel")
    if _untouchable(site.eff) or site.wrapper_why:
        return Refused(site.wrapper_why or f"module {site.eff_name} cannot be passed: {_untouchable(site.eff)}")
    behind: list[str] = []
    for n, m in reversed(chain.leaves[:chain.at]):
        why = _untouchable(m)
        if why:
            return Refused(f"module {n} behind it cannot be passed: {why}")
        if _stock(m, _PASS_CHANNEL):
            behind.append(n)
            continue
        why = _scalable_output(m, site.rank) or site.absorber(chain, m, n)
        if why:
            return Refused(f"{n} behind it: {why}")
        return site.apply("scale-output-behind", n, _out_channels(m), partial(_scale_output, m), list(reversed(behind)))
    return Refused("no module with per-channel weights behind it")


Rule = Callable[[_Site], Outcome]
# The rules in the order they are tried, each with the label its reason carries when every rule refuses.
RULES: list[tuple[str, Rule]] = [("own weights", rule_own_output), ("forward", rule_forward), ("backward", rule_backward)]


def apply_rules(model: nn.Module, layer: str, hooked: nn.Module, units: tuple[int, ...], alpha: tuple[float, ...],
                probe: _Probe | None) -> Outcome:
    """Bake one layer's edit into `model` in place with the first rule that applies; else refused with every rule's reason."""
    site = _site(model, layer, hooked, units, alpha, probe)
    if isinstance(site, Refused):
        return site
    reasons: list[str] = []
    for label, rule in RULES:
        out = rule(site)
        if isinstance(out, Applied) or out.final:
            return out
        reasons.append(f"{label}: {out.reason}")
    return Refused("; ".join(reasons))
