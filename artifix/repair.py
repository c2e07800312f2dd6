"""Repair: remove approved units, measure before/after (with a random-unit control), write a cleaned generator.

Unit selection: the approved units of one or more layers (`plan_from_store`, the default), or the top K of
the ranking with `--auto` (`plan_auto`; several layers in sequence with `sequential_auto`: each layer is
scored with the units already chosen in the earlier layers removed, as Tousi et al. 2021 correct layer by
layer). Strength: full ablation, or a per-unit alpha in [0, 1] optimised by gradient steps to lower the
artifact classifier's probability on the flagged samples with an L2 penalty on alpha (GAN Dissection's
continuous intervention, `optimise_alpha`). A k sweep (`sweep`) removes the first 1, 2, ... units of the
ranking order and stops when the next unit no longer helps beyond its paired confidence interval.

Proof (`measure`): on the same seeds before and after, FD (and FID when Inception weights are given), KID
and SWD with paired intervals, and the classifier's artifact rate, on (a) random samples and (b) the
samples where the removed units fire most (GAN Dissection's high-activation subset), always beside a
random-unit control of the same size per layer; plus the artifact rate on the flagged samples. The cleaned
generator comes from `export.export_cleaned` (weights baked, verified against the hooks).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import __version__, defaults, log, plots
from .errors import UserError
from .export import export_cleaned
from .generator import LoadedGenerator, forward, latents
from .images import grid, save_png
from .io import check_output_folder, output_folder, write_json_atomic, write_text_atomic
from .ledger import Ledger
from .progress import Progress, track
from .provenance import markdown as provenance_markdown
from .provenance import provenance
from .report import table_markdown
from .results import metric_rows
from . import intervals
from .trace import Ablation, Trace, ablation
from .verdict import repair_verdict, units_phrase

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


# ------------------------------------------------------------------------------------------ measurement helpers


def _rate(p: np.ndarray, thr: float, seed: int, reps: int = 1000, confidence: float = intervals.DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Artifact rate (p >= thr) with a percentile bootstrap interval at `confidence`."""
    iv = intervals.percentile_bootstrap((np.asarray(p) >= thr).astype(float), confidence, seed, reps)
    return {"value": iv.value, "ci": iv.ci if iv.n else [float("nan"), float("nan")], "se": iv.se, "n": iv.n, "confidence": iv.confidence}


def paired_rate_diff(p_a: np.ndarray, p_b: np.ndarray, thr: float, seed: int, reps: int = 2000,
                     confidence: float = intervals.DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Artifact rate of b minus a on the same samples, with a paired percentile bootstrap interval at `confidence`."""
    iv = intervals.paired_bootstrap((np.asarray(p_a) >= thr).astype(float), (np.asarray(p_b) >= thr).astype(float), confidence, seed, reps)
    return {"diff": iv.value, "ci": iv.ci, "se": iv.se, "significant": bool(iv.hi < 0 or iv.lo > 0), "n": iv.n,
            "confidence": iv.confidence}


def pixel_change(before: list[np.ndarray], after: list[np.ndarray], seed: int, confidence: float = intervals.DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Mean over samples of the mean |after - before| / 255 (reference-free: how much the edit changes the images)."""
    per = np.concatenate([np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1).mean(1) / 255.0
                          for b, a in zip(before, after)])
    iv = intervals.percentile_bootstrap(per, confidence, seed)
    return {"value": iv.value, "ci": iv.ci, "se": iv.se, "n": iv.n, "confidence": iv.confidence}


def high_activation_samples(g: LoadedGenerator, units: Mapping[str, Sequence[int]], seed: int, n: int, pool: int) -> list[int]:
    """The n samples of 0..pool-1 where the given units fire most (sum over layers of each unit's spatial max)."""
    from .scoring import trace_batches

    score = np.zeros(pool)
    for layer, us in units.items():
        for idx, acts, _ in trace_batches(g, layer, seed, list(range(pool))):
            score[list(idx)] += acts[:, list(us)].flatten(2).amax(2).sum(1).double().numpy()
    return sorted(int(i) for i in np.argsort(-score, kind="stable")[:n])


def _inception_weights(path: str | None) -> str | None:
    p = path or os.environ.get("ARTIFIX_INCEPTION_WEIGHTS")
    return p if p and Path(p).is_file() else None


def _compare(led: Ledger, ids: Sequence[int], sets: Mapping[str, Mapping[str, Ablation] | None], n: int, metrics: str, real: Any,
             seed: int, inception: str | None, cache: str | None,
             confidence: float = intervals.DEFAULT_CONFIDENCE) -> dict[str, dict[str, Any]]:
    """Paired metrics of each edited set in `sets` against the unedited one on samples `ids` ({} each when no metric is
    asked): every set rendered and extracted once (the feature ledger), 'before' measured once for all of them."""
    from .metrics import get_extractor, needs_features, paired_compare_many

    out: dict[str, dict[str, Any]] = {name: {} for name in sets}
    if not metrics:
        return out
    spaces = [get_extractor(None)]
    if inception and "fd" in metrics:
        spaces.append(get_extractor("inception", inception_weights=inception))
    for k, ex in enumerate(spaces):
        pre = ({"a": led.features(None, ids, ex), **{name: led.features(e, ids, ex) for name, e in sets.items()}}
               if needs_features(metrics if k == 0 else "fd") else None)  # SWD alone reads pixels: no features extracted
        res = paired_compare_many(led.batches(None, ids), {name: led.batches(e, ids) for name, e in sets.items()},
                                  precomputed=pre, n=n, metrics=metrics if k == 0 else "fd", features=ex, real=real, seed=seed,
                                  cache=cache, confidence=confidence)
        for name in sets:
            out[name].update(res[name])
    return out


def _proba(clf: Any, led: Ledger, edits: Mapping[str, Ablation] | None, ids: Sequence[int]) -> np.ndarray:
    """The classifier's p(artifact) on a ledger set, reading the backbone features the metrics extracted."""
    from .classifier import ArtifactClassifier, _backbone

    if not isinstance(clf, ArtifactClassifier):  # any other scorer with predict_proba(images) sees the images
        return np.asarray(clf.predict_proba(led.images(edits, ids)))
    clf.check_extractor()
    feats = led.features(edits, ids, _backbone(clf.features).extractor)
    return clf.predict_proba(led.images(edits, ids), precomputed=feats)


def measure(g: LoadedGenerator, plan: RepairPlan, control: Mapping[str, Sequence[int]], seed: int, n: int, flagged: Sequence[int],
            clf: Any = None, real: Any = None, metrics: str = "fd,kid,swd", *, high_pool: int = 0,
            inception_weights: str | None = None, cache: str | None = None, say: Say = log.say,
            confidence: float = intervals.DEFAULT_CONFIDENCE, ledger: Ledger | None = None) -> dict[str, Any]:
    """Paired before/after metrics on the same seeds for the repair and the random-unit control (random and high-activation sets)."""
    led = ledger or Ledger(g, seed, cache)
    edits, ctrl_edits = plan.ablations(), _edits(control)
    sets = {"after": edits, "control": ctrl_edits}
    inception = _inception_weights(inception_weights)
    subsets: dict[str, Sequence[int] | int] = {"random": n}
    if high_pool > n:
        subsets["high_activation"] = high_activation_samples(g, plan.edits, seed, n, high_pool)
    res: dict[str, Any] = {"n": n, "seed": seed, "confidence": float(confidence), "subsets": {}}
    for name, ids in track(subsets.items(), len(subsets), "repair proof"):
        idx = list(range(ids)) if isinstance(ids, int) else list(ids)
        say(f"{name} samples ({n}): before, after and random control, each rendered and extracted once")
        cmp = _compare(led, idx, sets, n, metrics, real, seed, inception, cache, confidence)
        before, after, ctrl = ([led.images(e, idx)] for e in (None, edits, ctrl_edits))
        sub: dict[str, Any] = {"samples": ids if isinstance(ids, int) else f"top {n} of {high_pool} by the removed units' activation",
                               "repair": cmp["after"], "control": cmp["control"],
                               "pixel_change": {"repair": pixel_change(before, after, seed, confidence),
                                                "control": pixel_change(before, ctrl, seed, confidence)}}
        if clf is not None:
            p = {k: _proba(clf, led, e, idx) for k, e in (("before", None), ("after", edits), ("control", ctrl_edits))}
            sub["artifact_rate"] = {k: _rate(v, clf.threshold, seed, confidence=confidence) for k, v in p.items()}
            sub["artifact_rate"]["repair_diff"] = paired_rate_diff(p["before"], p["after"], clf.threshold, seed, confidence=confidence)
            sub["artifact_rate"]["control_diff"] = paired_rate_diff(p["before"], p["control"], clf.threshold, seed, confidence=confidence)
        res["subsets"][name] = sub
        if name != "random":  # the random sets stay for the caller's grids; the others are done
            for e in (None, edits, ctrl_edits):
                led.drop(e, idx)
    # the random-sample results also at top level (what the model card's table shows first)
    res["repair"], res["control"] = res["subsets"]["random"]["repair"], res["subsets"]["random"]["control"]
    if "artifact_rate" in res["subsets"]["random"]:
        res["artifact_rate"] = res["subsets"]["random"]["artifact_rate"]
    if clf is not None and flagged:
        ids = list(flagged)
        res["artifact_rate_flagged"] = {k: _rate(_proba(clf, led, e, ids), clf.threshold, seed, confidence=confidence)
                                        for k, e in (("before", None), ("after", edits), ("control", ctrl_edits))}
    res["ledger"] = {"rendered": led.renders, "extracted": led.extractions, "disk_hits": led.disk_hits}
    return res


# ------------------------------------------------------------------------------------------ k sweep


def sweep(g: LoadedGenerator, plan: RepairPlan, seed: int, n: int, clf: Any = None, real: Any = None, metrics: str = "fd,swd",
          k_max: int | None = None, cache: str | None = None, say: Say = log.say,
          confidence: float = intervals.DEFAULT_CONFIDENCE, ledger: Ledger | None = None,
          metric_opts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Remove the first 1, 2, ... units of the primary layer; stop when the next unit's paired gain is not significant.

    The stop rule uses the artifact rate (paired on the same seeds) when a classifier is given, else FD. Each row
    holds the cumulative metrics with intervals and the marginal change of adding that unit; `k_best` is the last k
    whose unit helped beyond its interval (0 when even the first did not). `metric_opts` go to the metrics as they
    are (e.g. swd_n, swd_bootstrap, bootstrap); the defaults table's values otherwise.
    """
    from .metrics import get_extractor, needs_features, paired_compare_many

    led = ledger or Ledger(g, seed, cache)
    ex = get_extractor(None)
    ids = list(range(n))
    order = plan.edits[plan.layer]
    k_max = len(order) if k_max is None else min(k_max, len(order))
    rows: list[dict[str, Any]] = []
    prev_edits: Mapping[str, Ablation] | None = None
    p_prev = _proba(clf, led, None, ids) if clf is not None else None
    base_rate = _rate(p_prev, clf.threshold, seed, confidence=confidence) if clf is not None else None
    k_best, stopped = 0, None
    bar = Progress(k_max, "k sweep")
    for k in range(1, k_max + 1):
        bar.update()
        sub = plan.prefix(k)
        cur = sub.ablations()
        say(f"sweep k={k}: removing {sub.edits[plan.layer]}")
        cmp = paired_compare_many(led.batches(prev_edits, ids), {"b": led.batches(cur, ids)}, n=n, metrics=metrics, real=real,
                                  seed=seed, cache=cache, features=ex, confidence=confidence, **dict(metric_opts or {}),
                                  precomputed={"a": led.features(prev_edits, ids, ex), "b": led.features(cur, ids, ex)}
                                  if needs_features(metrics) else None)["b"] if metrics else {}
        row: dict[str, Any] = {"k": k, "units": list(sub.edits[plan.layer]), "unit_added": int(order[k - 1])}
        for name, r in cmp.items():
            key = name.split("_")[0]
            row[key] = {"name": name, "value": r["b"], "ci": r.get("ci_b"), "marginal": r["diff"], "marginal_ci": r["ci"]}
        helped = None
        if clf is not None:
            p_cur = _proba(clf, led, cur, ids)
            d = paired_rate_diff(p_prev, p_cur, clf.threshold, seed + k, confidence=confidence)
            row["artifact_rate"] = {**_rate(p_cur, clf.threshold, seed, confidence=confidence), "marginal": d["diff"], "marginal_ci": d["ci"]}
            helped = d["ci"][1] < 0
            p_prev = p_cur
        elif "fd" in row:
            helped = row["fd"]["marginal_ci"] is not None and row["fd"]["marginal_ci"][1] < 0
        row["helped"] = bool(helped)
        rows.append(row)
        if prev_edits is not None:
            led.drop(prev_edits, ids)
        prev_edits = cur
        if helped:
            k_best = k
        else:
            stopped = k
            say(f"sweep: unit {order[k - 1]} (k={k}) did not help beyond its interval; stopping, k_best = {k_best}")
            break
    bar.close()
    return {"layer": plan.layer, "order": list(order[:k_max]), "criterion": "artifact_rate" if clf is not None else "fd",
            "before_artifact_rate": base_rate, "rows": rows, "k_best": k_best, "stopped_at": stopped, "n": n}


# ------------------------------------------------------------------------------------------ the repair


def check_repair_out(g: LoadedGenerator, out_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Refuse (UserError) an output folder artifix may not replace, or one holding the checkpoint under repair."""
    out = check_output_folder(out_dir)
    src = checkpoint if checkpoint is not None else g.spec.checkpoint
    if src and out.resolve() in Path(src).resolve().parents:
        raise UserError(f"--out {out} holds the checkpoint under repair ({src}), which replacing the folder would delete; "
                        "choose another folder.")
    return out


def repair(g: LoadedGenerator, plan: RepairPlan, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Remove the plan's units and write the cleaned generator with its proof into `out_dir` as one transaction.

    The folder appears (or replaces an earlier repair) only once complete: see `artifix.io.output_folder`.
    Keyword arguments are those of `repair_into`.
    """
    check_repair_out(g, out_dir, kwargs.get("checkpoint"))
    with output_folder(out_dir, command="repair") as folder:
        manifest = repair_into(g, plan, folder.path, **kwargs)
    return folder.final(manifest)


def repair_into(g: LoadedGenerator, plan: RepairPlan, out_dir: str | Path, *, seed: int = 0, n: int = 1000,
           flagged: Sequence[int] = (), clean: Sequence[int] = (), clf: Any = None, real: Any = None, channels: int | Mapping[str, int],
           checkpoint: str | Path | None = None, metrics: str = "fd,kid,swd", high_pool: int | None = None,
           optimise: bool = False, run_sweep: bool = False, sweep_n: int | None = None, inception_weights: str | None = None,
           segmenter: Any = None, collateral_n: int = 200, cache: str | None = None, say: Say = log.say,
           confidence: float = intervals.DEFAULT_CONFIDENCE, skipped: Sequence[str] = ()) -> dict[str, Any]:
    """Remove the plan's units, write the verified cleaned generator and the proof next to it; returns the manifest."""
    t0 = time.time()
    out = Path(out_dir)
    led = Ledger(g, seed, cache)
    sweep_res = None
    if run_sweep:
        sweep_res = sweep(g, plan, seed, sweep_n or n, clf, real, metrics="fd,swd" if metrics else "", cache=cache, say=say,
                          confidence=confidence, ledger=led)
        k = max(sweep_res["k_best"], 1)
        if k < len(plan.edits[plan.layer]):
            dropped = plan.edits[plan.layer][k:]
            say(f"the sweep keeps the first {k} units of {plan.layer}; not removing {dropped}")
            plan = plan.prefix(k)
    history: list[dict[str, float]] = []
    if optimise:
        if clf is None:
            raise UserError("--optimise-alpha needs the artifact classifier; train one with 'artifix classify train'.")
        from .classifier import differentiable_score

        alphas, history = optimise_alpha(g, plan, differentiable_score(clf, g.spec.range, logit=True), seed, list(flagged), say=say)
        plan = RepairPlan(plan.edits, plan.source, plan.approvals, alphas)
        say("optimised alphas: " + "; ".join(f"{l}: " + ", ".join(f"{u}={a:.2f}" for u, a in zip(plan.edits[l], plan.alpha(l))) for l in plan.layers))
    control = random_control(plan, channels, seed)
    say(f"removing {plan.n_units} units ({plan.source}): " + "; ".join(f"{l}: {u}" for l, u in plan.edits.items())
        + "; random control: " + "; ".join(f"{l}: {u}" for l, u in control.items()))
    exported = export_cleaned(g, plan.export_edits(), out, checkpoint, seed=seed)
    say(f"cleaned generator: max |G_clean - G_hooked| = {exported.max_abs_diff:.2e} ({'exact' if exported.exact else 'TorchScript'})")
    pool = (4 * n if high_pool is None else high_pool)
    results = measure(g, plan, control, seed, n, flagged, clf, real, metrics, high_pool=pool, inception_weights=inception_weights,
                      cache=cache, say=say, confidence=confidence, ledger=led)
    collateral = None
    if segmenter is not None and collateral_n > 0:
        from .dissect import concept_collateral

        say(f"collateral: what else the removed units draw (segmenter, {collateral_n} samples)")
        with Trace(g.module, edit={l: a for l, a in plan.ablations().items() if l != plan.layer}) if len(plan.layers) > 1 else nullcontext():
            collateral = {"layer": plan.layer, "n": collateral_n,
                          "concepts": concept_collateral(g, plan.layer, plan.edits[plan.layer], segmenter, seed, collateral_n,
                                                         confidence=confidence)}
    ids_f, ids_c = list(flagged)[:8], list(clean)[:8]
    for name, ids in (("flagged", ids_f), ("clean", ids_c)):
        if ids:
            rows = [led.images(e, ids) for e in (None, plan.ablations(), _edits(control))]
            save_png(out / f"before_after_{name}.png", grid(np.concatenate(rows), ncol=len(ids), scale=2))
    manifest = {
        "artifix_version": __version__, "source": exported.input, "fingerprint_before": g.fingerprint,
        "fingerprint_after": exported.fingerprint_after, "layer": plan.layer, "units": plan.units, "alphas": plan.alpha(plan.layer),
        "layers": plan.layers, "edits": plan.to_json(), "selection": plan.source, "approvals": plan.approvals,
        "random_control": control, "random_control_units": control[plan.layer], "export": exported.to_json(),
        "metrics": results, "collateral": collateral, "alpha_optimisation": history or None, "sweep": sweep_res,
        "skipped_measures": list(skipped), "confidence": float(confidence), "seconds": round(time.time() - t0, 1),
        "provenance": provenance(real=real, metrics=results["repair"], clf=clf, flagged=flagged, clean=clean,
                                 device=str(next(g.module.parameters()).device) if any(True for _ in g.module.parameters()) else "cpu"),
    }
    manifest["verdict"] = repair_verdict(manifest).to_json()
    write_json_atomic(out / "manifest.json", manifest)
    forest_md, sweep_md = report_pictures(manifest, out)
    card = model_card(manifest) + forest_md
    write_text_atomic(out / "MODEL_CARD.md", card)
    write_text_atomic(out / "report.md", card + sweep_md +
                      "\n## Before / after\n\nRows: before; approved units removed; "
                      "random-unit control.\n\n![flagged](before_after_flagged.png)\n\n![clean](before_after_clean.png)\n")
    return manifest


def _ci(d: dict[str, Any], key: str = "ci") -> str:
    ci = d.get(key)
    return "" if not ci else " [{:+.3f}, {:+.3f}]".format(*ci)


def _metric_rows(sub: dict[str, Any]) -> list[dict[str, Any]]:
    """`results.metric_rows` formatted for the model card."""
    return [{"metric": r["metric"], "before": r["before"], "after": r["after"],
             "change [CI]": f"{r['change']:+.3f}{_ci(r, 'change_ci')}", "random control change [CI]": f"{r['control_change']:+.3f}{_ci(r, 'control_ci')}"}
            for r in metric_rows(sub)]


def report_pictures(m: dict[str, Any], out: Path) -> tuple[str, str]:
    """Write forest_<subset>.png (each metric's change with its interval, repair beside the random control) and,
    after a sweep, k_sweep.png into `out`; returns the Markdown showing (the forest plots, the sweep plot)."""
    lines = ["", "## Change with its interval", ""]
    for name, sub in m["metrics"]["subsets"].items():
        rows = plots.repair_rows(sub)
        if not rows:
            continue
        title = f"Change after repair, {name.replace('_', '-')} samples (n = {m['metrics']['n']}, paired, 95 % intervals)"
        img = plots.forest_plot(rows, title, "change, % of the value before (negative = better)")
        save_png(out / f"forest_{name}.png", np.asarray(img))
        lines += [f"![forest plot, {name} samples](forest_{name}.png)", ""]
    sweep_md = ""
    if m.get("sweep") and m["sweep"].get("rows"):
        save_png(out / "k_sweep.png", np.asarray(plots.sweep_plot(m["sweep"])))
        sweep_md = ("\n## k sweep\n\n![k sweep](k_sweep.png)\n\nBlue points: the added unit helped (marginal gain "
                    "beyond its interval); grey: it did not; red line: k_best.\n")
    return "\n".join(lines) + "\n", sweep_md


def model_card(m: dict[str, Any]) -> str:
    """The manifest as a Markdown model card: what was removed, verification, before/after tables, sweep."""
    cols = ["metric", "before", "after", "change [CI]", "random control change [CI]"]
    ex, met = m["export"], m["metrics"]
    skipped = m.get("skipped_measures") or []
    edits = "; ".join(f"`{l}`: {e['units']}" + ("" if all(a == 1.0 for a in e["alphas"]) else f" (alphas {e['alphas']})")
                      for l, e in m["edits"].items())
    lines = ["# Cleaned generator", "",
             f"Removed {units_phrase(sum(len(e['units']) for e in m['edits'].values()))} ({m['selection']}): {edits}. "
             f"Random-unit control of the same size: " + "; ".join(f"`{l}`: {u}" for l, u in m["random_control"].items()) + ".",
             f"Weights baked and verified: max |G_clean(z) - G_hooked(z)| = {ex['max_abs_diff']:.2e} on {ex['verify_n']} seeded latents "
             f"({'exact' if ex['exact'] else 'not exact: TorchScript export'}).", ""]
    if skipped:
        lines += [f"No reference data: skipped {', '.join(x.upper() for x in skipped)}; only reference-free measures below.", ""]
    if m.get("approvals"):
        lines += ["Approvals: " + "; ".join(f"unit {a['unit']} by {a['reviewer']} at {a['time']}" + (f" ({a['note']})" if a.get("note") else "")
                                            for a in m["approvals"]), ""]
    for name, sub in met["subsets"].items():
        what = f"{met['n']} random samples" if name == "random" else f"the {met['n']} samples where the removed units fire most (of {sub['samples'].split(' of ')[-1].split(' ')[0]})"
        lines += [f"Metrics on {what}, same seeds before and after (paired, {met.get('confidence', 0.95):.0%} intervals; "
                  "negative change = closer to the reference / fewer artifacts):", "",
                  table_markdown(_metric_rows(sub), cols), ""]
    lines += [repair_verdict(m).markdown(), ""]
    if "artifact_rate_flagged" in met:
        r = met["artifact_rate_flagged"]
        lines += [f"Artifact rate on the {r['before']['n']} flagged samples: before {r['before']['value']:.3f}, after {r['after']['value']:.3f} "
                  f"[{r['after']['ci'][0]:.3f}, {r['after']['ci'][1]:.3f}], random control {r['control']['value']:.3f} "
                  "(the flagged samples trained the classifier, so 'before' is in-sample).", ""]
    col = m.get("collateral")
    if col:
        rows = [{"concept": r["concept"], "pixels before": r["pixels_before"], "pixels after": r["pixels_after"],
                 "removed [CI]": f"{100 * r['removed_fraction']:+.1f} %" + ("" if not r.get("removed_ci") else
                                     " [{:+.1f}, {:+.1f}]".format(*(100 * v for v in r["removed_ci"])))}
                for r in col["concepts"]]
        lines += [f"Collateral (what else the removed units of `{col['layer']}` draw): each concept's pixels by the segmenter on "
                  f"{col['n']} samples, before and after (negative = the concept grew):", "",
                  table_markdown(rows, ["concept", "pixels before", "pixels after", "removed [CI]"]), ""]
    ss = m.get("set_selection")
    if ss:
        lines += [f"Units chosen by set selection (greedy forward on the joint ablation); proposed layer `{ss['proposed_layer']}`: "
                  + "; ".join(f"`{r['layer']}` {r['units']} (J {r['objective']:+.4f})" for r in ss["rows"]), ""]
    if m.get("preference"):
        from .ab import card_section

        lines += [card_section(m["preference"])]
    sw = m.get("sweep")
    if sw:
        lines += [f"k sweep over `{sw['layer']}` on {sw['n']} samples (stop rule: {sw['criterion']} must drop beyond its paired interval); "
                  f"k_best = {sw['k_best']}:", ""]
        rows = []
        for r in sw["rows"]:
            row = {"k": r["k"], "unit added": r["unit_added"], "helped": "yes" if r["helped"] else "no"}
            for key in ("fd", "swd", "artifact_rate"):
                if key in r:
                    row[key] = f"{r[key]['value']:.3f} (marginal {r[key]['marginal']:+.3f}{_ci(r[key], 'marginal_ci')})"
            rows.append(row)
        lines += [table_markdown(rows, ["k", "unit added"] + [c for c in ("fd", "swd", "artifact_rate") if c in rows[0]] + ["helped"]), ""]
    if m.get("provenance"):
        lines += [provenance_markdown(m["provenance"])]
    return "\n".join(lines)


def fd_recovery(clean: LoadedGenerator, damaged: LoadedGenerator, manifest: dict[str, Any], seed: int = 0,
                real: Any = None, cache: str | None = None) -> dict[str, Any]:
    """Share of the FD damage (damaged vs clean generator, paired on the same seeds) that the repair and its control undo."""
    from .metrics import get_extractor, paired_compare_many

    n = int(manifest["metrics"]["n"])
    ids, ex = list(range(n)), get_extractor(None)
    a, b = Ledger(clean, seed, cache), Ledger(damaged, seed, cache)  # the damaged set is the repair's cached 'before'
    res = paired_compare_many(a.batches(None, ids), {"b": b.batches(None, ids)}, n=n, metrics="fd", real=real, seed=seed,
                              cache=cache, features=ex, precomputed={"a": a.features(None, ids, ex), "b": b.features(None, ids, ex)})["b"]
    name, damage = next(iter(res.items()))
    fixed, ctrl = manifest["metrics"]["repair"][name], manifest["metrics"]["control"][name]
    d = damage["diff"]
    return {"metric": name, "damage": {"diff": d, "ci": damage["ci"], "clean": damage["a"], "damaged": damage["b"]},
            "repair": -fixed["diff"] / d if d else float("nan"), "control": -ctrl["diff"] / d if d else float("nan"),
            "after": fixed["b"], "control_after": ctrl["b"]}
