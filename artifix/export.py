"""Bake approved unit removals into G's weights and write a cleaned generator in the user's checkpoint layout.

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

Several layers bake into one copy one after another; each rule is an exact rewrite of the current weights
(a BN fold uses the already edited w and b), so the edits compose as the simultaneous hooks do.
`export_cleaned` checks what it writes: the weights as stored (dtype included), loaded into a fresh copy
of G, against the hooked original on 64 seeded latents; the max absolute difference must be <= 1e-5.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections import Counter, OrderedDict, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import RuntimeFailure, UserError
from .generator import COMMON_KEYS, LoadedGenerator, extract_state_dict, fingerprint, latents, load_into, read_checkpoint
from .io import atomic_path, sha256_file, write_json_atomic
from .trace import Ablation, Trace, ablation, get_layer

TOLERANCE = 1e-5
VERIFY_N = 64

Inputs = Union[torch.Tensor, tuple]  # z, or (z, y) for a conditional G (y may be None)

_CONV: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT: tuple[type, ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_IN: tuple[type, ...] = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
# Modules whose output channel count is an attribute (see _out_channels).
_SHAPED: tuple[type, ...] = _CONV + _CONVT + _BN + _IN + (nn.Linear, nn.GroupNorm, nn.Embedding)
# Elementwise and positively homogeneous: f(s x) = s f(x) for s >= 0, per element.
_PASS_ELEMENTWISE: tuple[type, ...] = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout)
# Per channel and positively homogeneous (valid while dim 1 is still the channel dim).
_PASS_CHANNEL: tuple[type, ...] = _PASS_ELEMENTWISE + tuple(
    getattr(nn, n) for n in (
        "Dropout1d", "Dropout2d", "Dropout3d", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d",
        "AvgPool1d", "AvgPool2d", "AvgPool3d", "MaxPool1d", "MaxPool2d", "MaxPool3d",
        "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
        "AdaptiveMaxPool3d", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ReflectionPad1d", "ReflectionPad2d",
        "ReflectionPad3d", "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d",
    ) if hasattr(nn, n)
)


# ------------------------------------------------------------------------------------------ results


@dataclass
class LayerBake:
    """How one layer's edit was baked: method, edited parameters, modules passed through, or why not."""

    layer: str
    units: tuple[int, ...]
    alpha: tuple[float, ...]
    exact: bool
    method: str  # scale-output | scale-input | fold-batchnorm | scale-output-behind | refused
    edited: tuple[str, ...] = ()  # state-dict names of the changed tensors
    path: tuple[str, ...] = ()  # modules between the layer and the edited module
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        d = asdict(self)
        for k in ("units", "alpha", "edited", "path"):
            d[k] = list(d[k])
        return d


@dataclass
class BakeResult:
    """A deep copy of G with the edits in its weights (None when any layer could not be baked exactly)."""

    model: nn.Module | None
    layers: list[LayerBake]

    @property
    def exact(self) -> bool:
        """True when every layer's edit is in the weights exactly."""
        return self.model is not None and all(lb.exact for lb in self.layers)

    @property
    def reason(self) -> str:
        """Why baking was not exact ('' when it was)."""
        return "; ".join(f"{lb.layer}: {lb.reason}" for lb in self.layers if not lb.exact)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (without the model)."""
        return {"exact": self.exact, "reason": self.reason, "layers": [lb.to_json() for lb in self.layers]}


@dataclass
class ExportResult:
    """What `export_cleaned` wrote and how well it reproduces the hooked generator."""

    out_dir: str
    exact: bool
    max_abs_diff: float
    tolerance: float
    verify_n: int
    verify_seed: int
    layout: str
    layers: dict[str, dict[str, Any]]
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> {path, sha256}
    input: dict[str, str] | None = None  # the layout source: {path, sha256}
    fingerprint_before: str = ""
    fingerprint_after: str | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return json.loads(json.dumps(asdict(self)))


# ------------------------------------------------------------------------------------------ parsing


def _check_units(layer: str, units: Any) -> tuple[int, ...]:
    """Units as a tuple of distinct non-negative ints, or a UserError."""
    if isinstance(units, (int, float)) or isinstance(units, torch.Tensor) and units.dim() == 0:
        units = [units]
    out: list[int] = []
    for u in units:
        try:
            ok = not isinstance(u, (bool, str)) and int(u) == u
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"units of layer {layer!r} must be whole numbers, got {u!r}.")
        out.append(int(u))
    if not out:
        raise UserError(f"no units given for layer {layer!r}; name at least one unit to remove.")
    if any(u < 0 for u in out):
        raise UserError(f"unit {min(out)} of layer {layer!r} is out of range: units are numbered from 0.")
    dup = sorted(u for u, c in Counter(out).items() if c > 1)
    if dup:
        raise UserError(f"unit {dup[0]} is listed twice for layer {layer!r}; give each unit once.")
    return tuple(out)


def _check_alpha(layer: str, alpha: Any, n: int) -> tuple[float, ...]:
    """Alpha as one float per unit in [0, 1], or a UserError."""
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.tolist()
    vals = [alpha] * n if isinstance(alpha, (int, float)) else list(alpha)
    if len(vals) != n:
        raise UserError(f"got {len(vals)} alpha values for {n} units of layer {layer!r}; give one per unit or a single value.")
    try:
        out = [float(a) for a in vals]
    except (TypeError, ValueError):
        raise UserError(f"alpha values of layer {layer!r} must be numbers in [0, 1], got {alpha!r}.") from None
    bad = [a for a in out if not (math.isfinite(a) and 0.0 <= a <= 1.0)]
    if bad:
        raise UserError(f"alpha {bad[0]} for layer {layer!r} is outside [0, 1]; 1 removes a unit, 0 keeps it.")
    return tuple(out)


def _normalize_edits(edits: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], tuple[float, ...]]]:
    """{layer: (units, alphas)} from {layer: units | (units, alpha) | Ablation}."""
    if not edits:
        raise UserError("no edits given: name at least one layer and the units to remove.")
    out = {}
    for layer, spec in edits.items():
        if isinstance(spec, Ablation):
            if spec.mask is not None or spec.replacement is not None:
                raise UserError(f"the edit of layer {layer!r} has a pixel mask or replacement values; only a per-unit "
                                "alpha with replacement 0 can be exported.")
            units, alpha = spec.units, spec.alpha
        elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], (tuple, list, range, torch.Tensor)):
            units, alpha = spec
        else:
            units, alpha = spec, 1.0
        u = _check_units(layer, units)
        out[str(layer)] = (u, _check_alpha(layer, alpha, len(u)))
    return out


# ------------------------------------------------------------------------------------------ structure


def _stock(m: nn.Module, classes: tuple[type, ...]) -> bool:
    """True when `m` is one of `classes` and runs that class's own forward (not an override)."""
    return any(isinstance(m, c) and type(m).forward is c.forward for c in classes)


def _is_sequential(m: nn.Module) -> bool:
    """A plain nn.Sequential: its children run one after the other, each feeding the next."""
    return _stock(m, (nn.Sequential,))


def _untouchable(m: nn.Module) -> str:
    """Why hooks or parametrizations on `m` stop baking ('' when there are none)."""
    if m._forward_hooks or m._forward_pre_hooks:
        return "it carries forward hooks (e.g. spectral or weight norm), which change its output"
    if parametrize.is_parametrized(m):
        return "its weights are parametrized (e.g. spectral or weight norm), so scaling them is not linear"
    return ""


def _out_channels(m: nn.Module) -> int | None:
    """The number of output channels of a module that has per-channel output weights."""
    for attr in ("out_channels", "out_features", "num_features", "num_channels", "embedding_dim"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    return None


def _scalable_output(m: nn.Module, rank: int | None) -> str:
    """'' when output channel u of `m` can be scaled through its own weights, else why not."""
    name = type(m).__name__
    if _stock(m, _CONV):
        return ""
    if _stock(m, _CONVT):
        return "" if m.groups == 1 else f"{name} has groups={m.groups}"
    if _stock(m, (nn.Linear,)):
        if rank is None:
            return "a Linear's units are its output features only for 2-D outputs; pass example inputs to check the shape"
        return "" if rank == 2 else f"the Linear's output is {rank}-D, so dim 1 is not its feature dim"
    if _stock(m, (nn.Embedding,)):
        if m.max_norm is not None:
            return "the Embedding renormalises rows (max_norm), which is not linear"
        if rank is None:
            return "an Embedding's units are its features only for 2-D outputs; pass example inputs to check the shape"
        return "" if rank == 2 else f"the Embedding's output is {rank}-D, so dim 1 is not its feature dim"
    if _stock(m, _BN + _IN + (nn.GroupNorm,)):
        return "" if getattr(m, "weight", None) is not None and getattr(m, "bias", None) is not None else f"{name} has no affine weight and bias"
    return f"{name} has no per-channel output weights"


def _scale_output(m: nn.Module, s: torch.Tensor) -> list[str]:
    """Multiply output channel u of `m` by s[u] through its weight and bias; returns the tensor names changed."""
    w = m.weight
    if _stock(m, _CONVT) or _stock(m, (nn.Embedding,)):  # output channel on dim 1
        w.mul_(s.to(w.dtype).view(1, -1, *([1] * (w.dim() - 2))))
    else:  # Conv, Linear: out channel on dim 0; norms: 1-D weight
        w.mul_(s.to(w.dtype).view(-1, *([1] * (w.dim() - 1))))
    names = ["weight"]
    if getattr(m, "bias", None) is not None:
        m.bias.mul_(s.to(m.bias.dtype))
        names.append("bias")
    return names


def _scale_input(m: nn.Module, s: torch.Tensor, cols: int) -> list[str]:
    """Multiply the weights that read input channel u of Conv/ConvTranspose/Linear `m` by s[u]."""
    w = m.weight
    if _stock(m, _CONVT):
        w.mul_(s.to(w.dtype).view(-1, *([1] * (w.dim() - 1))))
    elif _stock(m, _CONV):
        w.mul_(s.to(w.dtype).view(1, -1, *([1] * (w.dim() - 2))))
    else:
        w.mul_(s.repeat_interleave(cols).to(w.dtype).view(1, -1))
    return ["weight"]


def _fold_batchnorm(bn: nn.Module, s: torch.Tensor) -> list[str]:
    """Make eval-mode BN(x) equal BN(s x): w' = s w, b' = b - (1 - s) m w / sd (channels with s = 1 unchanged)."""
    sd = torch.sqrt(bn.running_var.double() + bn.eps)
    w, b, mean = bn.weight.double(), bn.bias.double(), bn.running_mean.double()
    s64 = s.double()
    new_b = b - (1 - s64) * mean * w / sd
    keep = s64 == 1
    bn.bias.copy_(torch.where(keep, b, new_b).to(bn.bias.dtype))
    bn.weight.copy_((w * s64).to(bn.weight.dtype))
    return ["weight", "bias"]


def _leaves(prefix: str, seq: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The modules a plain Sequential calls, in order, descending into nested plain Sequentials."""
    for child, m in seq._modules.items():
        full = f"{prefix}.{child}" if prefix else child
        if m is None:
            continue
        if _is_sequential(m) and len(m) > 0:
            yield from _leaves(full, m)
        else:
            yield full, m


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


def _bake_layer(model: nn.Module, layer: str, units: tuple[int, ...], alpha: tuple[float, ...],
                probe: _Probe | None) -> LayerBake:
    """Bake one layer's edit into `model` in place, or leave it untouched and say why not."""
    hooked = get_layer(model, layer)
    try:
        method, edited, path = _plan_and_apply(model, layer, hooked, units, alpha, probe)
        return LayerBake(layer, units, alpha, True, method, tuple(edited), tuple(path))
    except _Refused as e:
        return LayerBake(layer, units, alpha, False, "refused", reason=str(e))


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


# ------------------------------------------------------------------------------------------ baking


def bake_edits(model: nn.Module, edits: Mapping[str, Any], example: Inputs | None = None) -> BakeResult:
    """Bake several layers' ablations into one deep copy of `model` (see the module docstring for the rules)."""
    norm = _normalize_edits(edits)
    for layer in norm:
        get_layer(model, layer)
    probe = _probe(model, example, list(norm)) if example is not None else None
    work = copy.deepcopy(model)
    layers = [_bake_layer(work, layer, u, a, probe) for layer, (u, a) in norm.items()]
    ok = all(lb.exact for lb in layers)
    return BakeResult(work if ok else None, layers)


def bake_ablation(model: nn.Module, layer: str, units: Sequence[int], alpha: Sequence[float] | float = 1.0,
                  example: Inputs | None = None) -> BakeResult:
    """Deep copy of `model` with the hook edit out[:, u] *= 1 - alpha_u at `layer` baked into its weights."""
    return bake_edits(model, {layer: (list(units), alpha)}, example)


# ------------------------------------------------------------------------------------------ verification


def _as_args(x: Any) -> tuple[Any, ...]:
    """Model arguments from a tensor or a (z, y) tuple; a trailing None (unconditional y) is dropped."""
    if isinstance(x, torch.Tensor):
        return (x,)
    args = tuple(x)
    while args and args[-1] is None:
        args = args[:-1]
    return args


Call = Callable[[Any, tuple[Any, ...]], Any]  # (model, args) -> images; an adapter's forward (default: model(*args))


def _call(model: Callable[..., Any], args: tuple[Any, ...], call: Call | None = None) -> torch.Tensor:
    """model(*args) (or call(model, args)), which must return a tensor."""
    out = model(*args) if call is None else call(model, args)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the generator returned a {type(out).__name__}; verification needs a tensor output.")
    return out


def _batches(inputs: Inputs | Callable[[range], Inputs], n: int, batch: int) -> Iterator[tuple[Any, ...]]:
    """Argument tuples for verification: from a latents function over index ranges, or slices of given inputs."""
    if callable(inputs) and not isinstance(inputs, torch.Tensor):
        for s in range(0, n, batch):
            yield _as_args(inputs(range(s, min(s + batch, n))))
        return
    args = _as_args(inputs)
    rows = args[0].shape[0]
    for s in range(0, rows, batch):
        yield tuple(a[s:s + batch] if isinstance(a, torch.Tensor) else a for a in args)


def _edit_fns(norm: Mapping[str, tuple[tuple[int, ...], tuple[float, ...]]]) -> dict[str, Ablation]:
    """The Trace edits for normalized edits."""
    return {layer: ablation(u, list(a)) for layer, (u, a) in norm.items()}


def verify(original: nn.Module, baked: Callable[..., torch.Tensor], layer: str | Mapping[str, Any],
           units: Sequence[int] | None = None, alpha: Sequence[float] | float = 1.0, *,
           inputs: Inputs | Callable[[range], Inputs], n: int = VERIFY_N, batch: int = 16, call: Call | None = None) -> float:
    """Max |baked(z) - original-with-Trace-ablation(z)| over the inputs (or n latents from a latents function)."""
    norm = _normalize_edits({layer: (list(units or []), alpha)} if isinstance(layer, str) else layer)
    fns = _edit_fns(norm)
    worst = 0.0
    with torch.inference_mode():
        for args in _batches(inputs, n, batch):
            with Trace(original, edit=fns, retain=False):
                want = _call(original, args, call)
            got = _call(baked, args, call)
            if got.shape != want.shape:
                raise RuntimeFailure(f"the cleaned generator's output has shape {tuple(got.shape)}, not {tuple(want.shape)}.")
            d = (got.double() - want.double()).abs()
            if not torch.isfinite(d).all():
                return math.inf
            worst = max(worst, float(d.max()) if d.numel() else 0.0)
    return worst


# ------------------------------------------------------------------------------------------ TorchScript


class _EditedGenerator(nn.Module):
    """G with the ablation hooks applied inside forward, for tracing into TorchScript."""

    def __init__(self, generator: nn.Module, edits: Mapping[str, Ablation], call: Call | None = None) -> None:
        super().__init__()
        self.generator = generator
        self._edits = dict(edits)
        self._call = call

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        with Trace(self.generator, edit=self._edits, retain=False):
            return self.generator(*inputs) if self._call is None else self._call(self.generator, inputs)


def hooked_torchscript(model: nn.Module, edits: Mapping[str, Any], example: Inputs, call: Call | None = None) -> torch.jit.ScriptModule:
    """torch.jit.trace of a copy of `model` running the ablation hooks inside its forward (through `call` when given)."""
    wrapper = _EditedGenerator(copy.deepcopy(model), _edit_fns(_normalize_edits(edits)), call).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 marks TorchScript deprecated; still supported
        return torch.jit.trace(wrapper, _as_args(example), check_trace=False)


# ------------------------------------------------------------------------------------------ export


def _locate(obj: Any, key: str | None) -> tuple[str, ...]:
    """Where G's weights sit inside a loaded checkpoint, as a path of keys (() = the object itself)."""
    if key:
        return tuple(key.split("."))
    if isinstance(obj, nn.Module) or _is_sd(obj):
        return ()
    if isinstance(obj, Mapping):
        for k in COMMON_KEYS:
            if k in obj and (_is_sd(obj[k]) or isinstance(obj[k], nn.Module)):
                return (k,)
    return ()


def _is_sd(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _set(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    """Put `value` at `path` inside `obj` (in place); returns the new root."""
    if not path:
        return value
    _get(obj, path[:-1])[path[-1]] = value
    return obj


def _replace_sd(old: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> OrderedDict:
    """`old` (same key names, prefix and dtypes) filled with `model`'s weights; refuses weights of another G."""
    prefix = "module." if all(k.startswith("module.") for k in old) else ""
    new_vals = model.state_dict()
    names = {k: k[len(prefix):] for k in old}
    if set(names.values()) != set(new_vals):
        raise UserError(f"the generator weights in {source} do not have the loaded generator's parameter names; "
                        "pass the checkpoint the generator was loaded from.")
    out: OrderedDict = OrderedDict()
    for k, v in old.items():
        out[k] = new_vals[names[k]].detach().to(device="cpu", dtype=v.dtype).clone().contiguous()
    meta = getattr(old, "_metadata", None)
    if meta is not None:
        out._metadata = copy.deepcopy(meta)  # type: ignore[attr-defined]
    return out


def _same_weights(old: Mapping[str, torch.Tensor], model: nn.Module) -> bool:
    """True when the state dict `old` holds exactly `model`'s current weights (after a 'module.' prefix)."""
    prefix = "module." if all(k.startswith("module.") for k in old) else ""
    cur = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    names = {k: k[len(prefix):] for k in old}
    return all(n in cur and torch.equal(old[k].to(cur[n].dtype), cur[n]) for k, n in names.items())


def _save_safetensors(sd: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a flat tensor dict as safetensors, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}, str(tmp), metadata=metadata)


def export_cleaned(g: LoadedGenerator, edits: Mapping[str, Any], out_dir: str | Path,
                   checkpoint_layout_from: str | Path | None = None, *, seed: int = 0, n: int = VERIFY_N,
                   tolerance: float = TOLERANCE) -> ExportResult:
    """Bake the edits into G, verify against the hooked original, and write the cleaned generator to `out_dir`."""
    if g.scripted:
        raise UserError("the generator is a TorchScript file; artifix can only export cleaned weights of a Python "
                        "module (--generator 'module:callable').")
    if n < 1:
        raise UserError(f"verification needs at least one sample, got n={n}.")
    norm = _normalize_edits(edits)
    out_dir = Path(out_dir)
    adapter = g.adapter
    if adapter is not None and adapter.own_format:  # e.g. StyleGAN network pickles: the adapter writes its format
        return adapter.export(g, norm, out_dir, seed=seed, n=n, tolerance=tolerance)
    bake = adapter.bake if adapter is not None else bake_edits
    call: Call | None = None if adapter is None else (lambda m, a: adapter.forward(m, g.spec, *a))
    allow = tuple(getattr(adapter, "safe_globals", ()))
    src = checkpoint_layout_from if checkpoint_layout_from is not None else g.spec.checkpoint
    src_path = Path(src) if src else None
    if src_path is not None and not src_path.is_file():
        raise UserError(f"checkpoint {src_path} does not exist; pass the checkpoint the generator was loaded from.")

    def lat(idx: range) -> tuple[Any, ...]:
        return latents(g.spec, seed, idx)

    example = _as_args(lat(range(8)))
    baked = bake(g.module, norm, example)
    layers = {lb.layer: lb.to_json() for lb in baked.layers}
    stem = src_path.stem if src_path else "generator"
    result = ExportResult(str(out_dir), False, math.inf, tolerance, n, seed, "", layers,
                          fingerprint_before=g.fingerprint)
    if src_path is not None:
        result.input = {"path": str(src_path), "sha256": sha256_file(src_path)}

    ckpt_path = out_dir / (src_path.name if src_path else "generator.pt")
    if src_path is not None and ckpt_path.resolve() == src_path.resolve():
        raise UserError(f"exporting into {out_dir} would overwrite the original checkpoint {src_path}; choose another folder.")

    note = ""
    if baked.exact:
        assert baked.model is not None
        # the cleaned checkpoint in the input's layout, built in memory first
        if src_path is None:
            obj: Any = OrderedDict((k, v.detach().cpu().clone()) for k, v in baked.model.state_dict().items())
            where: tuple[str, ...] = ()
            result.layout = "state_dict (no input checkpoint)"
            meta = None
        else:
            original = read_checkpoint(src_path, g.spec.trust_pickle, allow)
            extract_state_dict(original, g.spec.key, str(src_path))  # same lookup and errors as loading
            where = _locate(original, g.spec.key)
            old = _get(original, where)
            meta = None
            if src_path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(src_path), framework="pt") as fh:
                    meta = fh.metadata()
            if not _same_weights(old.state_dict() if isinstance(old, nn.Module) else old, g.module):
                raise UserError(f"the generator weights in {src_path} differ from the loaded generator's; pass the "
                                "checkpoint the generator was loaded from as checkpoint_layout_from.")
            if isinstance(old, nn.Module):
                obj = _set(original, where, baked.model)
                result.layout = "pickled module" + (f" at {'.'.join(where)}" if where else "")
            else:
                obj = _set(original, where, _replace_sd(old, baked.model, str(src_path)))
                kind = "safetensors" if src_path.suffix == ".safetensors" else "state_dict"
                result.layout = kind + (f" at {'.'.join(where)}" if where else "")
        # verify exactly what will be stored (dtype included)
        stored = _get(obj, where)
        if isinstance(stored, nn.Module):
            candidate = stored
        else:
            candidate = copy.deepcopy(g.module)
            load_into(candidate, extract_state_dict(stored, None, str(ckpt_path)), str(ckpt_path))  # type: ignore[arg-type]
        candidate.eval()
        diff = verify(g.module, candidate, norm, inputs=lat, n=n, call=call)
        result.max_abs_diff = diff
        if diff <= tolerance:
            result.exact = True
            result.fingerprint_after = fingerprint(candidate, g.spec)
            if ckpt_path.suffix == ".safetensors":
                _save_safetensors(obj, ckpt_path, meta)
                sft_path = ckpt_path
            else:
                with atomic_path(ckpt_path) as tmp:
                    torch.save(obj, tmp)
                sft_path = out_dir / f"{stem}.safetensors"
                _save_safetensors(candidate.state_dict(), sft_path)
            _check_written(ckpt_path, sft_path, candidate, g.spec.trust_pickle, allow)
            result.files["checkpoint"] = {"path": str(ckpt_path), "sha256": sha256_file(ckpt_path)}
            result.files["safetensors"] = {"path": str(sft_path), "sha256": sha256_file(sft_path)}
            methods = ", ".join(f"{k}: {v['method']}" for k, v in layers.items())
            result.note = (f"all edits are baked into the weights ({methods}); "
                           f"max |cleaned - hooked| = {diff:.3g} over {n} latents (seed {seed}).")
        else:
            note = (f"the edits were baked into the weights, but the stored weights differ from the hooked generator by "
                    f"up to {diff:.3g} (> {tolerance:g}; e.g. a low-precision checkpoint dtype), so ")
    else:
        note = f"the edits cannot be baked into weights exactly ({baked.reason}), so "

    if not result.exact:
        ts_path = out_dir / f"{stem}.torchscript.pt"
        scripted = hooked_torchscript(g.module, norm, example, call)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with atomic_path(ts_path) as tmp:
                torch.jit.save(scripted, str(tmp))
            loaded = torch.jit.load(str(ts_path), map_location="cpu")
        diff = verify(g.module, loaded, norm, inputs=lat, n=n, call=call)
        if diff > tolerance:
            raise RuntimeFailure(f"the TorchScript export differs from the hooked generator by {diff:.3g} (> {tolerance:g}); "
                                 f"{ts_path} should not be used.")
        result.max_abs_diff = diff
        result.layout = "torchscript"
        result.files["torchscript"] = {"path": str(ts_path), "sha256": sha256_file(ts_path)}
        result.note = (note + f"no weights checkpoint was written: {ts_path.name} is a TorchScript module that applies "
                       f"the ablation inside its forward (load it with torch.jit.load); max |torchscript - hooked| = "
                       f"{diff:.3g} over {n} latents (seed {seed}).")
    write_json_atomic(out_dir / "export.json", result.to_json())
    return result


def _check_written(ckpt_path: Path, sft_path: Path, model: nn.Module, trust_pickle: bool, allow: tuple = ()) -> None:
    """Read the written files back: the safetensors copy must hold `model`'s weights bit for bit."""
    from safetensors.torch import load_file

    read_checkpoint(ckpt_path, trust_pickle, allow)
    sd = load_file(str(sft_path))
    cur = model.state_dict()
    prefix = "module." if all(k.startswith("module.") for k in sd) else ""
    if {k[len(prefix):] for k in sd} != set(cur) or any(
            not torch.equal(v, cur[k[len(prefix):]].cpu().to(v.dtype)) for k, v in sd.items()):
        raise RuntimeFailure(f"{sft_path} does not read back as the cleaned weights; the disk may be full or failing.")
