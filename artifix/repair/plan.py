"""What a repair removes and how strongly: the plan, its sources, the random control and optimised alphas.

Unit selection: the approved units of one or more layers (`plan_from_store`, the default), or the top K of
the ranking with `--auto` (`plan_auto`; several layers in sequence with `sequential_auto`: each layer is
scored with the units already chosen in the earlier layers removed, as Tousi et al. 2021 correct layer by
layer). Strength: full ablation, or a per-unit alpha in [0, 1] optimised by gradient steps to lower the
artifact classifier's probability on the flagged samples with an L2 penalty on alpha (GAN Dissection's
continuous intervention, `optimise_alpha`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import defaults, log
from ..errors import UserError
from ..model.generator import LoadedGenerator, forward, latents
from ..model.trace import Ablation, Trace, ablation
from ..units.cautions import check_approved

Say = Callable[[str], None]


def _opt(name: str) -> Any:
    return defaults.get("repair", name)


@dataclass
class RepairPlan:
    """Which units go (per layer), how strongly, and why: approvals from the label store, or the ranking with `auto`."""

    edits: dict[str, list[int]]  # layer -> units, in removal-priority order (the ranking's order when known)
    source: str  # "approved" or "auto"
    approvals: list[dict[str, Any]] = field(default_factory=list)
    alphas: dict[str, list[float]] = field(default_factory=dict)  # layer -> strength per unit (absent: 1.0)

    @property
    def layers(self) -> list[str]:
        """The edited layers, in the order they are applied."""
        return list(self.edits)

    @property
    def layer(self) -> str:
        """The first (primary) edited layer."""
        return self.layers[0]

    @property
    def units(self) -> list[int]:
        """The units of the primary layer, sorted."""
        return sorted(self.edits[self.layer])

    @property
    def n_units(self) -> int:
        """Units removed over all layers."""
        return sum(len(u) for u in self.edits.values())

    def alpha(self, layer: str) -> list[float]:
        """Per-unit strengths of `layer` (1.0 = full ablation)."""
        return list(self.alphas.get(layer, [1.0] * len(self.edits[layer])))

    def ablations(self) -> dict[str, Ablation]:
        """The hook edits {layer: Ablation} this plan applies."""
        return {layer: ablation(units, self.alpha(layer)) for layer, units in self.edits.items()}

    def export_edits(self) -> dict[str, tuple[list[int], list[float]]]:
        """{layer: (units, alphas)} for export.export_cleaned."""
        return {layer: (list(units), self.alpha(layer)) for layer, units in self.edits.items()}

    def prefix(self, k: int) -> "RepairPlan":
        """The plan restricted to the first k units of its primary layer (other layers kept)."""
        first = self.edits[self.layer][:k]
        edits = {self.layer: first, **{l: u for l, u in self.edits.items() if l != self.layer}}
        alphas = {l: a for l, a in self.alphas.items() if l != self.layer}
        if self.layer in self.alphas:
            alphas[self.layer] = self.alphas[self.layer][:k]
        kept = {(self.layer, u) for u in first} | {(l, u) for l, us in edits.items() if l != self.layer for u in us}
        approvals = [a for a in self.approvals if (a.get("layer", self.layer), a["unit"]) in kept]
        return RepairPlan(edits, self.source, approvals, alphas)

    def to_json(self) -> dict[str, Any]:
        """The plan as manifest fields."""
        return {layer: {"units": list(units), "alphas": [round(a, 4) for a in self.alpha(layer)]} for layer, units in self.edits.items()}


def plan_from_store(store: Any, run_id: int, layer: str, ranking: Sequence[int] | None = None) -> RepairPlan:
    """The approved units of `layer` (ordered by `ranking` when given); a UserError when there are none."""
    approved = [a for a in store.approved_units(run_id) if a.layer == layer]
    if not approved:
        raise UserError(f"no approved units of layer {layer} in the label store; approve some (dashboard) "
                        "or pass --auto --k K to take the top of the ranking.")
    check_approved(store, run_id, approved)  # the dashboard's rule, whatever path recorded the approval
    units = [int(a.unit) for a in approved]
    pos = {int(u): i for i, u in enumerate(ranking or [])}
    units.sort(key=lambda u: (pos.get(u, len(pos)), u))
    return RepairPlan({layer: units}, "approved",
                      [{"layer": layer, "unit": int(a.unit), "reviewer": a.reviewer, "time": str(a.time), "note": a.note} for a in approved])


def combine(plans: Sequence[RepairPlan]) -> RepairPlan:
    """One plan editing every layer of `plans`, applied in the given order."""
    if not plans:
        raise UserError("nothing to repair: no layer has units to remove.")
    edits: dict[str, list[int]] = {}
    for p in plans:
        for layer in p.edits:
            if layer in edits:
                raise UserError(f"layer {layer} is listed twice; name each layer once.")
        edits.update({l: list(u) for l, u in p.edits.items()})
    return RepairPlan(edits, plans[0].source, [a for p in plans for a in p.approvals],
                      {l: a for p in plans for l, a in p.alphas.items()})


def plan_auto(ranking: Sequence[int], layer: str, k: int) -> RepairPlan:
    """The first k units of a ranking (explicit opt-in: --auto)."""
    if k <= 0:
        raise UserError(f"--k must be a positive number of units, got {k}.")
    return RepairPlan({layer: [int(u) for u in ranking[:k]]}, "auto")


def sequential_auto(g: LoadedGenerator, layers: Sequence[str], k: int,
                    rank_layer: Callable[[str, dict[str, Ablation]], Sequence[int]], say: Say = log.say) -> RepairPlan:
    """Top k units per layer, layer by layer: each layer ranked with the earlier layers' choices already removed."""
    plans: list[RepairPlan] = []
    for layer in layers:
        done = combine(plans).ablations() if plans else {}
        with Trace(g.module, edit=done) if done else nullcontext():
            ranking = rank_layer(layer, done)
        plans.append(plan_auto(ranking, layer, k))
        say(f"{layer}: top {k} units with {sum(len(p.edits[p.layer]) for p in plans[:-1])} earlier units removed: {plans[-1].edits[layer]}")
    return combine(plans)


def random_control(plan: RepairPlan, channels: int | Mapping[str, int], seed: int) -> dict[str, list[int]]:
    """Per layer, as many random units as the plan removes, drawn from the units it keeps (seeded)."""
    out: dict[str, list[int]] = {}
    for i, (layer, units) in enumerate(plan.edits.items()):
        c = channels[layer] if isinstance(channels, Mapping) else channels
        others = [u for u in range(c) if u not in units]
        if len(others) < len(units):
            raise UserError(f"layer {layer} has too few other units ({len(others)}) for a random control of {len(units)}.")
        out[layer] = sorted(int(u) for u in np.random.default_rng(seed + i).choice(others, len(units), replace=False))
    return out


def _edits(units: Mapping[str, Sequence[int]], alphas: Mapping[str, Sequence[float]] | None = None) -> dict[str, Ablation]:
    return {l: ablation(u, (alphas or {}).get(l, 1.0)) for l, u in units.items() if len(u)}


# ------------------------------------------------------------------------------------------ continuous intervention


def optimise_alpha(g: LoadedGenerator, plan: RepairPlan, score_fn: Callable[[torch.Tensor], torch.Tensor], seed: int,
                   flagged: Sequence[int], *, steps: int | None = None, lr: float | None = None, l2: float | None = None,
                   batch: int | None = None, say: Say = log.say) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Per-unit strengths alpha in [0, 1] minimising the flagged samples' mean artifact score + l2 * mean(alpha^2), by Adam steps.

    `score_fn` maps G's output to the classifier's score; pass its logit (`differentiable_score(clf, logit=True)`):
    a confident classifier's probability saturates near 1 on flagged samples and gives almost no gradient.
    """
    steps, lr, l2, batch = (int(_opt("alpha_steps") if steps is None else steps), float(_opt("alpha_lr") if lr is None else lr),
                            float(_opt("alpha_l2") if l2 is None else l2), int(_opt("alpha_batch") if batch is None else batch))
    if not flagged:
        raise UserError("optimising alphas needs flagged samples; flag some artifact samples first or drop --optimise-alpha.")
    if steps < 1 or batch < 1 or lr <= 0 or l2 < 0:
        raise UserError("--alpha-steps, --alpha-batch and --alpha-lr must be positive and --alpha-l2 >= 0.")
    ids = [int(i) for i in flagged]
    params = {l: torch.ones(len(u), dtype=torch.float32, requires_grad=True) for l, u in plan.edits.items()}
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    n_units = max(plan.n_units, 1)
    history: list[dict[str, float]] = []

    def edit(layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
        idx = torch.tensor(plan.edits[layer])

        def fn(x: torch.Tensor) -> torch.Tensor:
            a = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device).index_put((idx.to(x.device),), params[layer].to(x))
            return x * (1 - a.view(1, -1, *([1] * (x.dim() - 2))))

        return fn

    rng = np.random.default_rng(seed)
    order = list(rng.permutation(ids))
    for step in range(steps):
        take = [order[(step * batch + j) % len(order)] for j in range(min(batch, len(order)))]
        z, y = latents(g.spec, seed, take)
        with Trace(g.module, edit={l: edit(l) for l in plan.edits}):
            x = forward(g, z, y)
        p = score_fn(x).float().mean()
        reg = sum((a ** 2).sum() for a in params.values()) / n_units
        loss = p + l2 * reg
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for a in params.values():
                a.clamp_(0.0, 1.0)
        history.append({"step": step, "score": round(p.item(), 5), "l2": round(float(reg.detach()), 5)})
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            say(f"alpha step {step + 1}/{steps}: mean artifact score on flagged = {p.item():.3f}, mean alpha^2 = {float(reg.detach()):.3f}")
    return {l: [round(float(v), 4) for v in a.detach()] for l, a in params.items()}, history
