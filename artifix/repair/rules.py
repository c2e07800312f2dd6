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
from dataclasses import dataclass
from typing import Any, Sequence

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


class _Refused(Exception):
    """A layer's edit cannot be baked exactly; the message says why."""



def _plan_and_apply(model: nn.Module, layer: str, hooked: nn.Module, units: tuple[int, ...], alpha: tuple[float, ...],
                    probe: _Probe | None) -> tuple[str, list[str], list[str]]:
    """Find an exact rule for one layer, check the units, apply it; raises _Refused with every rule's reason."""
    modules = dict(model.named_modules())
    mult = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    owners: dict[int, set[int]] = defaultdict(set)
    for m in model.modules():
        for t in list(m._parameters.values()) + list(m._buffers.values()):
            if t is not None:
                owners[id(t)].add(id(m))

    def calls(name: str) -> int | None:
        return None if probe is None else probe.calls[name]

    # what one forward pass shows about the layer's output
    rank = chans = None
    if probe is not None:
        if layer not in probe.shapes:
            raise UserError(f"layer {layer!r} does not run in the generator's forward pass, so editing it has no effect.")
        shape = probe.shapes[layer]
        if shape is None or len(shape) < 2:
            raise _Refused(f"the layer's output is {'not a tensor' if shape is None else 'a 1-D tensor'}, so it has no channel dim")
        rank, chans = len(shape), shape[1]

    def check_units(c: int | None) -> None:
        if c is None:
            return
        if chans is not None and c != chans:
            raise _Refused(f"the layer has {chans} channels but the module absorbing the edit expects {c}")
        bad = [u for u in units if u >= c]
        if bad:
            raise UserError(f"unit {bad[0]} is out of range: layer {layer!r} has {c} units (0..{c - 1}).")

    def scale(c: int) -> torch.Tensor:
        s = torch.ones(c, dtype=torch.float64)
        s[list(units)] = torch.tensor([1.0 - a for a in alpha], dtype=torch.float64)
        return s

    def editable(m: nn.Module, n: str, shared_ok: bool = False) -> str:
        """Why the weights of `m` cannot take the edit ('' when they can)."""
        why = _untouchable(m)
        if why:
            return f"module {n} cannot be edited: {why}"
        if not shared_ok and mult[id(m)] != 1:
            return f"module {n} is used more than once in the model, so editing it changes its other uses too"
        for pname in ("weight", "bias"):
            t = getattr(m, pname, None)
            if isinstance(t, torch.Tensor) and owners[id(t)] != {id(m)}:
                return f"{n}.{pname} is shared with another module (tied weights)"
        return ""

    if chans is not None:
        check_units(chans)

    # a plain Sequential's output is its last module's output
    eff_name, eff = layer, hooked
    while _is_sequential(eff):
        if len(eff) == 0:
            raise _Refused("the layer is an empty Sequential")
        last = list(eff._modules)[-1]
        eff_name, eff = f"{eff_name}.{last}", eff._modules[last]
    wrapper_why = ""
    if eff is not hooked:
        wrapper_why = _untouchable(hooked) and f"module {layer} carries hooks or parametrizations"
        if not wrapper_why and (mult[id(eff)] != 1 or probe is not None and calls(eff_name) != calls(layer)):
            wrapper_why = f"module {eff_name} also runs outside {layer}"

    # rule 1: the layer's own per-channel output weights; exact on every call, whatever reads the output
    why1 = wrapper_why or _scalable_output(eff, rank) or editable(eff, eff_name, shared_ok=eff is hooked)
    if not why1:
        c = _out_channels(eff)
        check_units(c)
        with torch.no_grad():
            names = _scale_output(eff, scale(c))  # type: ignore[arg-type]
        return "scale-output", [f"{eff_name}.{p}" for p in names], []

    # rules 2 and 3 need the data flow, which a plain Sequential fixes
    root: str | None = None
    cur = eff_name
    while True:  # climb to the outermost plain Sequential holding the layer
        parent = cur.rpartition(".")[0]
        if not _is_sequential(modules[parent] if parent else model):
            break
        root = parent
        if not parent:
            break
        cur = parent
    if root is None:
        owner = eff_name.rpartition(".")[0]
        owner_m = modules[owner] if owner else model
        raise _Refused(f"{why1}; and its output goes into the custom forward() of {type(owner_m).__name__} "
                       f"{owner or '(the generator)'}, which may add, concatenate or reuse it, so no weight change is "
                       "provably equal to the edit")
    root_m = modules[root] if root else model
    root_label = f"Sequential {root or '(the generator)'}"
    leaves = list(_leaves(root, root_m))
    idx = [i for i, (n, _) in enumerate(leaves) if n == eff_name]
    if mult[id(hooked)] != 1 or mult[id(eff)] != 1 or len(idx) != 1:
        raise _Refused(f"module {eff_name} is used more than once in the model, so its hook edits every use")
    if probe is not None and not calls(layer) == calls(eff_name) == calls(root):
        raise _Refused(f"module {eff_name} is called {calls(eff_name)} times per forward but {root_label} "
                       f"{calls(root)} times: the forward uses it outside the Sequential too")
    i0 = idx[0]
    struct_c = _out_channels(eff) if _stock(eff, _SHAPED) else None
    if struct_c is None:  # the channel count of the nearest shaped module behind commuting ones
        for n, m in reversed(leaves[:i0]):
            if not _stock(m, _PASS_CHANNEL):
                struct_c = _out_channels(m) if _stock(m, _SHAPED) else None
                break
    c_known = chans if chans is not None else struct_c

    def absorber(m: nn.Module, n: str) -> str:
        why = editable(m, n)
        if not why and probe is not None and calls(n) != calls(root):
            why = f"module {n} is called outside {root_label}"
        return why

    # rule 2: forward through commuting modules to a consumer that absorbs the scale
    passed: list[str] = []
    flat = False
    why2 = ""
    for n, m in leaves[i0 + 1:]:
        why = _untouchable(m)
        if why:
            why2 = f"module {n} on the way cannot be passed: {why}"
            break
        if _stock(m, _PASS_ELEMENTWISE if flat else _PASS_CHANNEL):
            passed.append(n)
            continue
        if not flat and _stock(m, (nn.Flatten,)) and m.start_dim == 1 and m.end_dim == -1:
            flat = True
            passed.append(n)
            continue
        tname = type(m).__name__
        if not flat and _stock(m, _CONV + _CONVT):
            why2 = f"consumer {n} ({tname}) has groups={m.groups}" if m.groups != 1 else absorber(m, n)
            if why2:
                break
            check_units(m.in_channels)
            with torch.no_grad():
                names = _scale_input(m, scale(m.in_channels), 1)
            return "scale-input", [f"{n}.{p}" for p in names], passed
        if _stock(m, (nn.Linear,)):
            if flat and c_known is None:
                why2 = f"the channel count before Flatten is unknown, so the columns of {n} cannot be assigned; pass example inputs"
            elif flat and m.in_features % c_known:
                why2 = f"{n} has {m.in_features} inputs, not a multiple of the layer's {c_known} channels"
            elif not flat and rank is None:
                why2 = f"consumer {n} is a Linear; pass example inputs to check the layer's output is 2-D"
            elif not flat and rank != 2:
                why2 = f"consumer {n} is a Linear acting on the last dim of a {rank}-D output, not on the channels"
            else:
                why2 = absorber(m, n)
            if why2:
                break
            c, cols = (c_known, m.in_features // c_known) if flat else (m.in_features, 1)
            check_units(c)
            with torch.no_grad():
                names = _scale_input(m, scale(c), cols)
            return "scale-input", [f"{n}.{p}" for p in names], passed
        if not flat and _stock(m, _BN):
            if m.training or not m.track_running_stats or m.running_mean is None:
                why2 = f"BatchNorm {n} normalises with batch statistics (training mode or no running stats); put G in eval mode"
            elif m.weight is None or m.bias is None:
                why2 = f"BatchNorm {n} has no affine weight and bias to absorb the edit"
            else:
                why2 = absorber(m, n)
            if why2:
                break
            check_units(m.num_features)
            with torch.no_grad():
                names = _fold_batchnorm(m, scale(m.num_features))
            return "fold-batchnorm", [f"{n}.{p}" for p in names], passed
        why2 = f"{n} ({tname}) neither commutes with scaling a channel nor has weights that can absorb it"
        break
    else:
        why2 = f"the output reaches the end of {root_label} and goes into custom code or the generator's output"

    # rule 3: backward through commuting modules (the layer included) to a producer
    behind: list[str] = []
    if not _stock(eff, _PASS_CHANNEL):
        why3 = f"the layer ({type(eff).__name__}) does not commute with scaling a channel"
    elif _untouchable(eff) or wrapper_why:
        why3 = wrapper_why or f"module {eff_name} cannot be passed: {_untouchable(eff)}"
    else:
        why3 = "no module with per-channel weights behind it"
        for n, m in reversed(leaves[:i0]):
            why = _untouchable(m)
            if why:
                why3 = f"module {n} behind it cannot be passed: {why}"
                break
            if _stock(m, _PASS_CHANNEL):
                behind.append(n)
                continue
            why3 = _scalable_output(m, rank) or absorber(m, n)
            if why3:
                why3 = f"{n} behind it: {why3}"
                break
            c = _out_channels(m)
            check_units(c)
            with torch.no_grad():
                names = _scale_output(m, scale(c))  # type: ignore[arg-type]
            return "scale-output-behind", [f"{n}.{p}" for p in names], list(reversed(behind))
    raise _Refused(f"own weights: {why1}; forward: {why2}; backward: {why3}")
