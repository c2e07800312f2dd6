"""What the command handlers share: the generator, its layer, the label store's run, scoring and the classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ... import workflow as W
from ...adapters import REFUSAL
from ...errors import UserError
from ...model import generator
from ...model.trace import ablation, get_layer
from ...profiles import profile_for
from ...review.classifier import ArtifactClassifier
from ...units import scoring
from ..registry import Context


def parse_units(text: str | int | list[int]) -> list[int]:
    """Parse '3,17' (or a list) into unit indices: non-negative and distinct (`workflow.parse_units`)."""
    return W.parse_units(text)


def ablation_from_options(g, o: dict[str, Any]) -> dict[str, Any] | None:
    """The {layer: Ablation} edit described by --layer/--ablate/--alpha, validated against G."""
    if o.get("ablate") is None:
        if o.get("layer"):
            require_hooks(g, "--layer")
            get_layer(g.module, o["layer"])
        return None
    if not o.get("layer"):
        raise UserError("--ablate needs --layer to say which layer the units belong to.")
    require_hooks(g, "--ablate")
    get_layer(g.module, o["layer"])
    if not 0.0 <= o["alpha"] <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {o['alpha']}.")
    return {o["layer"]: ablation(parse_units(o["ablate"]), o["alpha"])}


def require_hooks(g, what: str) -> None:
    """Refuse in one sentence when G cannot carry hooks (a TorchScript file)."""
    if g.scripted or (g.adapter is not None and not g.adapter.hookable):
        raise UserError(REFUSAL.format(what=what))


def load(ctx: Context):
    """Load the generator the settings describe (default: the bundled example)."""
    return generator.load_generator(generator.spec_from_options(ctx.opts))  # looked up at call time, like scoring.cached_stats (tests replace them)


def check_n(n: int, what: str = "--n") -> int:
    """`n`, when it is a positive number of samples; else a UserError naming the option `what`."""
    if n <= 0:
        raise UserError(f"{what} must be a positive number of samples, got {n}.")
    return n


def default_layer(ctx: Context, g) -> str:
    """--layer, or the generator profile's default layer (`workflow.resolve_layer`)."""
    require_hooks(g, "scoring, flags and repair")
    return W.resolve_layer(g, profile_for(g.spec), ctx.opts.get("layer"))


def reviewer(ctx: Context) -> str:
    """--reviewer, else $USER, else 'reviewer'."""
    return W.reviewer_name(ctx.opts.get("reviewer"))


def workspace(ctx: Context, g, layer: str) -> W.Workspace:
    """The workspace of these settings on an already loaded generator and resolved layer."""
    ws = W.open_workspace({**ctx.opts, "layer": layer}, g, need_layer=False)
    ws.layer = layer
    return ws


def open_run(ctx: Context, g, layer: str, missing: str | None = None):
    """Open the label store and register (or find) the run of (G, layer, seed).

    With `missing` (a sentence), only find the run: when the store file or the run does not exist yet,
    raise UserError(missing) without creating or writing anything.
    """
    ws = workspace(ctx, g, layer)
    try:
        if missing is not None:
            run_id = W.find_run(ws, layer, missing)  # before ws.store: a missing store file is never created
        else:
            run_id = W.register_run(ws, max(ctx.opts.get("stats_n") or 0, ctx.opts.get("n") or 0), layer)
        return ws.store, run_id
    except UserError:
        ws.close()
        raise


def cached_stats(ctx: Context, g, layer: str, seed: int, n: int):
    """Unit statistics for (G, layer, seed, n) from the cache folder (see scoring.cached_stats)."""
    return scoring.cached_stats(g, layer, seed, n, ctx.opts.get("cache") or ".artifix-cache")


flagged_and_clean = W.flagged_and_clean


def score_run(ctx: Context, g, layer: str, store, run_id: int, clf=None, use_cache: bool = True):
    """Score every unit of `layer` from the run's flags/masks (and a classifier, if given); no stats cache under edits."""
    o = ctx.opts
    stats = W.unit_stats(g, layer, o["seed"], o["stats_n"], o.get("cache"), use_cache)
    report = W.score_run(g, layer, store, run_id, stats, seed=o["seed"], clf=clf, exact_top=o["exact_top"],
                   collateral_weight=o["collateral_weight"], rare_rate=o["rare_rate"], say=ctx.say, high_q=int(o.get("high_q") or 0))
    return report, stats


def load_classifier(ctx: Context, required: bool = True):
    """The trained artifact classifier at --classifier, or None when absent and not required."""
    path = Path(ctx.opts.get("classifier") or "artifix-classifier.pt")
    if not path.exists():
        if required:
            raise UserError(f"no artifact classifier at {path}; train one with 'artifix classify train'.")
        return None
    return ArtifactClassifier.load(path)
