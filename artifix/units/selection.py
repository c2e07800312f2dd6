"""Set selection: choose the units to remove together, not one at a time.

Artifacts are often drawn by several units jointly (or redundantly: any one of two units draws the blotch,
so removing either alone changes nothing). Greedy forward selection on the joint ablation:

    J(S) = mean over flagged samples of [s(x) - s(x with S removed)] - w * mean over clean samples of |x_S - x|

with s the artifact score (the classifier's probability) and |.| the mean per-pixel change (max over colour,
/255). From S = {} each step tries every candidate c of the pool (S + {c}) in ONE batched pass: the latents are
repeated once per candidate along the batch dimension and a per-sample unit mask zeroes a different set in each
block (`joint_ablation_images`). The best candidate is kept when its per-sample marginal gain on the flagged
samples (minus the collateral change) is positive beyond its paired bootstrap interval, as repair's `--sweep`
stops; when no single unit helps, every pair of the `pair_pool` best candidates is tried the same way (the
redundant-pair case), and the selection stops when no pair helps either.

Held-out check (`check`, default half): the flagged and clean samples are split, seeded, into a part the candidates
are *chosen* on and a part the step is *tested* on. The best candidate of the chosen part is kept only when its
marginal gain on the held-out part is positive beyond its interval, and the set's reported J (what
`compare_layers` compares) is measured there too. On the chosen part alone the best of many candidates always looks
better than it is (selection bias), so a stop rule on those samples keeps units that help only by chance.
`check=0` tests on the chosen samples (the optimistic rule). Either way, report the repair's effect on fresh samples
(repair.measure) as the evidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import UserError
from ..model.generator import LoadedGenerator, forward, images_at, latents, to_uint8
from ..model.trace import Trace, get_layer

ProbFn = Callable[[np.ndarray], np.ndarray]
Say = Callable[[str], None]


def unit_mask_edit(masks: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit zeroing, in row i of the batch, the units where masks[i] is 1 (masks: (N, C) in [0, 1])."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        a = masks.to(x.dtype).to(x.device)
        if a.shape[0] < x.shape[0]:  # generator.forward pads the batch with copies of its last row
            a = torch.cat([a, a[-1:].expand(x.shape[0] - a.shape[0], -1)])
        if a.shape != x.shape[:2]:
            raise UserError(f"the unit masks have shape {tuple(a.shape)} but the layer's batch x units is {tuple(x.shape[:2])}.")
        return x * (1 - a.view(*a.shape, *([1] * (x.dim() - 2))))

    return edit


def joint_ablation_images(g: LoadedGenerator, layer: str, seed: int, ids: Sequence[int], sets: Sequence[Sequence[int]],
                          channels: int, max_batch: int = 512) -> np.ndarray:
    """uint8 images (len(sets), len(ids), H, W, 3): sample ids[j] with the units of sets[k] removed, batched over sets."""
    ids = [int(i) for i in ids]
    z, y = latents(g.spec, seed, ids)
    per = max(1, max_batch // max(len(ids), 1))
    out = []
    for s0 in range(0, len(sets), per):
        chunk = sets[s0:s0 + per]
        m = torch.zeros(len(chunk) * len(ids), channels)
        for k, units in enumerate(chunk):
            if len(units):
                m[k * len(ids):(k + 1) * len(ids), list(units)] = 1.0
        zz = z.repeat(len(chunk), *([1] * (z.dim() - 1)))
        yy = None if y is None else y.repeat(len(chunk), *([1] * (y.dim() - 1)))
        with torch.inference_mode(), Trace(g.module, edit={layer: unit_mask_edit(m)}):
            x = forward(g, zz, yy)
        out.append(to_uint8(x.float(), g.spec.range).numpy().reshape(len(chunk), len(ids), *x.shape[2:], x.shape[1]))
    return np.concatenate(out) if out else np.zeros((0, len(ids)), np.uint8)


def _pixel_change(a: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per set and sample, the mean over pixels of max-over-colour |a - base| / 255: (K, N)."""
    return (np.abs(a.astype(np.int16) - base[None].astype(np.int16)).max(-1) / 255.0).mean((2, 3))


def split_check(ids: Sequence[int], check: float, seed: int) -> tuple[list[int], list[int]]:
    """(chosen part, held-out part) of `ids`: a seeded shuffle, round(check * n) held out (none when fewer than 4 ids)."""
    ids = [int(i) for i in ids]
    k = int(round(check * len(ids))) if len(ids) >= 4 else 0
    order = np.random.default_rng(seed).permutation(len(ids))
    held = sorted(ids[i] for i in order[:k])
    return [i for i in ids if i not in set(held)], held


Split = tuple[list[int], list[int]]


def split_flags(flagged: Sequence[int], clean: Sequence[int], check: float, seed: int) -> tuple[Split, Split]:
    """((flagged chosen, flagged held out), (clean chosen, clean held out)): the split `select_set` makes."""
    return split_check(flagged, check, seed), split_check(clean, check, seed + 1)


def paired_lower_bound(d: np.ndarray, seed: int, confidence: float = 0.95, reps: int = 2000) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) of mean(d) over its rows."""
    d = np.asarray(d, np.float64)
    if len(d) == 0:
        return 0.0, 0.0
    boots = d[np.random.default_rng(seed).integers(0, len(d), (reps, len(d)))].mean(1)
    a = (1 - confidence) / 2
    return float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


@dataclass
class SetSelection:
    """The chosen unit set of one layer and how each step earned its place."""

    layer: str
    units: list[int]
    objective: float  # J of the chosen set, on the held-out part (all samples when check = 0)
    prob_drop: float  # mean artifact-score drop on the held-out flagged samples
    collateral: float  # mean pixel change on the held-out clean samples
    steps: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""
    n_flagged: int = 0
    n_clean: int = 0
    pool: list[int] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)  # the held-out part: its sample ids and the chosen-part J beside it

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


class _Evaluator:
    """Scores candidate sets against the unedited images: per-sample artifact score on flagged, pixel change on clean.

    Every pass covers all samples; `part` picks the chosen ("fit") or the held-out ("check") columns of a result."""

    def __init__(self, g: LoadedGenerator, layer: str, seed: int, flagged: Sequence[int], clean: Sequence[int],
                 prob_fn: ProbFn, weight: float, channels: int, max_batch: int, held: tuple[set[int], set[int]]) -> None:
        self.g, self.layer, self.seed, self.channels, self.max_batch = g, layer, seed, channels, max_batch
        self.flagged, self.clean, self.prob_fn, self.weight = list(flagged), list(clean), prob_fn, weight
        self.base_clean = images_at(g, seed, self.clean) if self.clean else None
        self.s0 = np.asarray(prob_fn(images_at(g, seed, self.flagged)), np.float64)
        hf = np.array([i in held[0] for i in self.flagged], bool)
        hc = np.array([i in held[1] for i in self.clean], bool)
        self.cols = {"fit": (~hf, ~hc), "check": (hf, hc) if hf.any() else (~hf, ~hc)}
        self.passes = 0

    def __call__(self, sets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(per-set per-flagged-sample scores (K, F), per-set per-clean-sample pixel change (K, C)), one batched pass."""
        self.passes += 1
        imf = joint_ablation_images(self.g, self.layer, self.seed, self.flagged, sets, self.channels, self.max_batch)
        k, f = imf.shape[:2]
        s = np.asarray(self.prob_fn(imf.reshape(k * f, *imf.shape[2:])), np.float64).reshape(k, f)
        if self.base_clean is None:
            return s, np.zeros((k, 0))
        imc = joint_ablation_images(self.g, self.layer, self.seed, self.clean, sets, self.channels, self.max_batch)
        return s, _pixel_change(imc, self.base_clean)

    def objective(self, s: np.ndarray, coll: np.ndarray, part: str) -> np.ndarray:
        """J of each row of (s, coll) on one part: mean artifact drop minus weight x mean clean pixel change."""
        f, c = self.cols[part]
        pen = coll[..., c].mean(-1) if c.any() else np.zeros(s.shape[:-1])
        return (self.s0[f] - s[..., f]).mean(-1) - self.weight * pen

    def drop_and_collateral(self, s: np.ndarray, coll: np.ndarray, part: str) -> tuple[float, float]:
        """Mean artifact drop and mean clean pixel change of one set on one part."""
        f, c = self.cols[part]
        return float((self.s0[f] - s[f]).mean()), float(coll[c].mean()) if c.any() else 0.0


def _best(ev: _Evaluator, current: list[int], trials: list[tuple[int, ...]]):
    """Evaluate S + t for every trial t; the best by J on the chosen part: (its index, scores, pixel change, J array)."""
    sets = [sorted(set(current) | set(t)) for t in trials]
    s, coll = ev(sets)
    obj = ev.objective(s, coll, "fit")
    i = int(np.argmax(obj))
    return i, s[i], coll[i], obj


def _step_ok(ev: _Evaluator, s_cur: np.ndarray, coll_cur: np.ndarray, s_new: np.ndarray, coll_new: np.ndarray, seed: int,
             confidence: float) -> tuple[bool, float, list[float]]:
    """Whether the marginal per-sample gain on the held-out part is positive beyond its paired interval."""
    f, c = ev.cols["check"]
    extra = ev.weight * (coll_new[c].mean() - coll_cur[c].mean()) if c.any() else 0.0
    d = (s_cur[f] - s_new[f]) - extra
    lo, hi = paired_lower_bound(d, seed, confidence)
    return lo > 0, float(d.mean()), [lo, hi]


def select_set(g: LoadedGenerator, layer: str, seed: int, flagged: Sequence[int], clean: Sequence[int], prob_fn: ProbFn, *,
               pool: Sequence[int] | None = None, max_units: int = 10, collateral_weight: float = 1.0, pair_pool: int = 8,
               confidence: float = 0.95, max_batch: int = 512, check: float = 0.5, say: Say = lambda _m: None) -> SetSelection:
    """Greedy forward selection of a unit set of `layer` by the joint ablation's objective J (see the module docstring)."""
    if not flagged:
        raise UserError("set selection needs flagged artifact samples; flag some first.")
    if not 0 <= check < 1:
        raise UserError(f"the held-out check fraction must be in [0, 1), got {check}.")
    get_layer(g.module, layer)
    z, y = latents(g.spec, seed, [0])
    with torch.inference_mode(), Trace(g.module, layer, stop=True) as t:
        forward(g, z, y)
    channels = int(t[layer].shape[1])
    pool = list(range(channels)) if pool is None else [int(u) for u in pool]
    bad = [u for u in pool if not 0 <= u < channels]
    if bad:
        raise UserError(f"unit {bad[0]} is out of range: {layer} has {channels} units (0..{channels - 1}).")
    (_, held_f), (_, held_c) = split_flags(flagged, clean, check, seed)
    held = (set(held_f), set(held_c))
    ev = _Evaluator(g, layer, seed, flagged, clean, prob_fn, collateral_weight, channels, max_batch, held)
    current: list[int] = []
    s_cur, coll_cur = ev.s0.copy(), np.zeros(len(ev.clean))
    steps: list[dict[str, Any]] = []
    stopped = f"reached max_units = {max_units}"
    while len(current) < max_units:
        left = [u for u in pool if u not in current]
        if not left:
            stopped = "the pool is exhausted"
            break
        i, s_new, coll_new, obj = _best(ev, current, [(u,) for u in left])
        ok, gain, ci = _step_ok(ev, s_cur, coll_cur, s_new, coll_new, seed + len(steps), confidence)
        added: tuple[int, ...] = (left[i],)
        if not ok and pair_pool >= 2 and len(left) >= 2 and len(current) + 2 <= max_units:
            order = [left[j] for j in np.argsort(-obj, kind="stable")[:pair_pool]]
            pairs = list(combinations(sorted(order), 2))
            j, s_new, coll_new, _ = _best(ev, current, pairs)
            ok, gain, ci = _step_ok(ev, s_cur, coll_cur, s_new, coll_new, seed + len(steps), confidence)
            added = pairs[j]
        if not ok:
            stopped = f"the best next {'pair' if len(added) == 2 else 'unit'} {list(added)} did not help beyond its interval"
            break
        current += list(added)
        s_cur, coll_cur = s_new, coll_new
        drop, coll = ev.drop_and_collateral(s_cur, coll_cur, "check")
        steps.append({"added": [int(u) for u in added], "units": sorted(int(u) for u in current), "gain": gain, "gain_ci": ci,
                      "prob_drop": drop, "collateral": coll})
        say(f"{layer}: + {list(added)} -> {sorted(current)}: held-out marginal gain {gain:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}], "
            f"artifact score drop {drop:+.4f}, clean pixel change {coll:.4f}")
    say(f"{layer}: stopped ({stopped}); {ev.passes} batched passes")
    drop, coll = ev.drop_and_collateral(s_cur, coll_cur, "check")
    fit = float(ev.objective(s_cur, coll_cur, "fit"))
    info = {"fraction": check, "flagged": sorted(int(i) for i in held[0]), "clean": sorted(int(i) for i in held[1]),
            "fit_objective": fit}
    return SetSelection(layer, sorted(int(u) for u in current), drop - collateral_weight * coll, drop, coll, steps, stopped,
                        len(ev.flagged), len(ev.clean), pool, info)


def candidate_layers(g: LoadedGenerator, spec: str) -> list[str]:
    """'all' -> every ReLU / conv layer with a 4-d output (in module order); else a comma list, validated."""
    if spec.strip() != "all":
        names = [s.strip() for s in spec.split(",") if s.strip()]
        for n in names:
            get_layer(g.module, n)
        if not names:
            raise UserError("--layers is empty; give 'all' or a comma list such as 'main.5,main.8'.")
        return names
    kinds = (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    mods = [(n, m) for n, m in g.module.named_modules() if n and isinstance(m, kinds)]
    relus = [n for n, m in mods if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU))]
    return relus or [n for n, _ in mods]


def compare_layers(g: LoadedGenerator, layers: Sequence[str], select: Callable[[str], SetSelection],
                   say: Say = lambda _m: None) -> dict[str, Any]:
    """Run `select` on each layer; the proposed layer is the one whose set has the largest objective J."""
    results = {layer: select(layer) for layer in layers}
    rows = [{"layer": l, "units": r.units, "k": len(r.units), "objective": r.objective, "prob_drop": r.prob_drop,
             "collateral": r.collateral} for l, r in results.items()]
    best = max(rows, key=lambda r: (r["objective"], -r["k"])) if rows else None
    proposed = best["layer"] if best and best["k"] else None
    say("layer comparison: " + "; ".join(f"{r['layer']}: {r['k']} units, J = {r['objective']:+.4f}" for r in rows)
        + (f"; proposed layer {proposed}" if proposed else "; no layer has a unit set that helps"))
    return {"rows": rows, "proposed_layer": proposed, "selections": {l: r.to_json() for l, r in results.items()}}
