"""The Python API: wrap a generator, open a run on one layer, flag samples, rank units, repair.

    import artifix as ax
    g = ax.from_module(G, latent=512)              # or ax.load("my_gan/models.py:Generator", "G.pt", latent=512)
    run = ax.open(g, layer="synthesis.b32.conv1")  # a run in a label store (in memory unless store= names a file)
    run.flag([3, 17], "artifact"); run.flag([0, 1, 2], "clean")
    ranking = run.score()                          # units ranked by IoU@IQR, AUC and causal effect
    report = run.repair(ranking.top(3), out="cleaned/")

The same library functions as the CLI run underneath; progress bars are drawn with tqdm.auto (widgets in
Jupyter), and messages go to the "artifix" logger (`artifix.log.to_stderr()` shows them as the CLI does).
Every example below runs as a doctest in the test suite.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import defaults, log, progress, workflow
from .errors import UserError
from .labels import LabelStore
from .model.generator import GeneratorSpec, LoadedGenerator, fingerprint, latents, load_generator, parse_latent, probe
from .model.generator import sample as _sample
from .model.trace import layer_shapes
from .profiles import profile_for
from .repair import RepairPlan, plan_from_store, repair
from .session import layer_channels
from .units import cautions

__all__ = ["from_module", "load", "bundled_example", "layers", "sample", "open", "Run", "Ranking", "RepairReport"]


def from_module(module: nn.Module, latent: int | Sequence[int] = 100, *, range: str = "[-1,1]", classes: int = 0,
                class_mode: str = "index", truncation: float | None = None) -> LoadedGenerator:
    """Wrap an in-memory generator `module` (z of shape (N, *latent) -> images NCHW) for artifix.

    >>> import torch, artifix as ax
    >>> G = torch.nn.Sequential(torch.nn.ConvTranspose2d(8, 16, 4), torch.nn.ReLU(),
    ...                         torch.nn.ConvTranspose2d(16, 3, 4, 2, 1), torch.nn.Tanh())
    >>> g = ax.from_module(G, latent=(8, 1, 1))
    >>> ax.sample(g, n=2).shape
    (2, 8, 8, 3)
    """
    if not isinstance(module, nn.Module):
        raise UserError(f"from_module needs a torch.nn.Module, got {type(module).__name__}.")
    spec = GeneratorSpec(latent=parse_latent(latent if isinstance(latent, (str, int)) else tuple(latent)),
                         range=range, classes=int(classes), class_mode=class_mode, truncation=truncation)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    g = LoadedGenerator(module, spec, fingerprint(module, spec))
    probe(g)
    return g


def load(generator: str | None = None, checkpoint: str | Path | None = None, *, latent: int | Sequence[int] = 100,
         **spec: Any) -> LoadedGenerator:
    """Load a generator as the CLI's `--generator/--checkpoint/--latent` do (with neither: the bundled example).

    >>> import artifix as ax
    >>> g = ax.load()                      # the bundled example DCGAN
    >>> g.spec.latent
    (100, 1, 1)
    """
    if generator is None and checkpoint is None:
        return bundled_example()
    lat = parse_latent(latent if isinstance(latent, (str, int)) else tuple(latent))
    return load_generator(GeneratorSpec(generator=generator, checkpoint=None if checkpoint is None else str(checkpoint),
                                        latent=lat, **spec))


def bundled_example() -> LoadedGenerator:
    """The bundled example: a DCGAN trained on procedural outdoor scenes (64 x 64).

    >>> import artifix as ax
    >>> ax.sample(ax.bundled_example(), n=1).shape
    (1, 64, 64, 3)
    """
    return load_generator()


def layers(g: LoadedGenerator) -> pd.DataFrame:
    """Every hookable layer of `g` with its output shape, as `artifix layers` prints them.

    >>> import artifix as ax
    >>> t = ax.layers(ax.bundled_example())
    >>> t[t.layer == "main.8"].shape_str.item()
    '64x16x16'
    """
    z, y = latents(g.spec, 0, range(1))
    rows = layer_shapes(g.module, *((z,) if y is None else (z, y)))
    table = pd.DataFrame(rows, columns=["layer", "type", "shape"])
    table["shape_str"] = ["x".join(str(s) for s in sh[1:]) if isinstance(sh, list) else "" for sh in table["shape"]]
    return table


def sample(g: LoadedGenerator, n: int = 16, seed: int = 0, start: int = 0) -> np.ndarray:
    """Samples start..start+n-1 of `seed` as uint8 (N, H, W, 3); sample i depends only on (seed, i).

    >>> import artifix as ax
    >>> g = ax.bundled_example()
    >>> a = ax.sample(g, n=3, seed=7)
    >>> bool((ax.sample(g, n=1, seed=7, start=2) == a[2:]).all())
    True
    """
    return _sample(g, seed=seed, start=start, n=n)


@dataclass
class Ranking:
    """Units of one layer ranked by how much they cause the flagged artifacts (rank 1 first)."""

    layer: str
    table: pd.DataFrame  # one row per unit: rank, unit, the score components, combined
    components: list[str] = field(default_factory=list)

    @property
    def units(self) -> list[int]:
        """All units, best first."""
        return [int(u) for u in self.table["unit"]]

    def top(self, k: int = 3) -> list[int]:
        """The first `k` units of the ranking.

        >>> import pandas as pd
        >>> Ranking("main.8", pd.DataFrame({"rank": [1, 2, 3], "unit": [13, 63, 19]})).top(2)
        [13, 63]
        """
        return self.units[: int(k)]

    def _repr_html_(self) -> str:
        return f"<b>{self.layer}</b> ({', '.join(self.components) or 'prior only'})" + self.table.head(10).to_html(index=False)


@dataclass
class RepairReport:
    """What `Run.repair` measured and wrote: the manifest, and the folder with the cleaned generator."""

    manifest: dict[str, Any]
    out: Path

    @property
    def units(self) -> list[int]:
        """The units removed from the primary layer."""
        return list(self.manifest["units"])

    def metric(self, name: str, subset: str = "repair") -> dict[str, Any]:
        """One metric's paired change on the random samples (`subset` 'repair' or 'control'), by name prefix.

        >>> r = RepairReport({"units": [1], "metrics": {"repair": {"swd": {"diff": -0.5}}}}, Path("."))
        >>> r.metric("swd")["diff"]
        -0.5
        """
        table = self.manifest["metrics"][subset]
        for k, v in table.items():
            if k == name or k.startswith(name):
                return v
        raise UserError(f"no metric {name!r} in the report; it has {', '.join(sorted(table))}.")


class Run:
    """One generator, one layer, one seed: flags in a label store, unit scores and repairs.

    >>> import artifix as ax
    >>> run = ax.open(ax.bundled_example(), layer="main.8")
    >>> run.flag([5, 9], "artifact"); run.flag([0, 1], "clean")
    >>> sorted(run.flags().label)
    ['artifact', 'artifact', 'clean', 'clean']
    """

    def __init__(self, g: LoadedGenerator, layer: str | None = None, seed: int = 0, store: Any = None, n: int = 1000,
                 reviewer: str = "api") -> None:
        profile = profile_for(g.spec)
        layer = workflow.resolve_layer(g, profile, layer)  # a clear error for a layer that does not exist
        if store is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="artifix-run-")
            store = str(Path(self._tmp.name) / "labels.sqlite")
        opened = store if isinstance(store, LabelStore) else LabelStore(str(store))
        self.ws = workflow.Workspace(g, profile, layer, int(seed), str(getattr(opened, "location", store)), reviewer=reviewer,
                                     _store=opened)
        self.n = int(n)
        self.run_id = workflow.register(self.store, g, layer, self.seed, self.n)
        self._stats: dict[int, Any] = {}

    @property
    def g(self) -> LoadedGenerator:
        """The generator."""
        return self.ws.g

    @property
    def layer(self) -> str:
        """The diagnosed layer."""
        return self.ws.layer

    @property
    def seed(self) -> int:
        """The sampling seed of the run."""
        return self.ws.seed

    @property
    def store(self) -> Any:
        """The run's label store."""
        return self.ws.store

    @property
    def reviewer(self) -> str:
        """The name flags and approvals are recorded under."""
        return self.ws.reviewer

    def flag(self, samples: int | Sequence[int], label: str = "artifact", mask: np.ndarray | None = None) -> None:
        """Record reviewer labels ('artifact', 'clean' or 'unsure') for samples (and a painted mask for one)."""
        ids = [int(samples)] if isinstance(samples, (int, np.integer)) else [int(s) for s in samples]
        self.store.set_flags(self.run_id, [(i, label) for i in ids], self.reviewer)
        if mask is not None:
            if len(ids) != 1:
                raise UserError("a mask belongs to one sample; flag it on its own.")
            workflow.save_painted_mask(self.store, self.run_id, ids[0], self.reviewer, np.asarray(mask, bool))

    def flags(self) -> pd.DataFrame:
        """The run's current flags (one row per sample)."""
        return self.store.flags(self.run_id)

    def stats(self, n: int | None = None) -> Any:
        """Per-unit statistics of the layer over the first `n` samples (default: the run's n), computed once."""
        n = self.n if n is None else int(n)
        if n not in self._stats:
            with progress.tqdm_bars():
                self._stats[n] = workflow.unit_stats(self.g, self.layer, self.seed, n, None, use_cache=False)
        return self._stats[n]

    def score(self, *, n: int | None = None, classifier: Any = None, exact_top: int | None = None) -> Ranking:
        """Rank the layer's units from the flags (and masks, and an optional artifact classifier).

        >>> import artifix as ax
        >>> run = ax.open(ax.bundled_example(), layer="main.8", n=64)
        >>> run.flag([3, 20, 36], "artifact"); run.flag([0, 1, 2, 4], "clean")
        >>> ranking = run.score(exact_top=4)
        >>> len(ranking.units), sorted(ranking.components)
        (64, ['auc', 'causal'])
        """
        top = defaults.get("score", "exact_top") if exact_top is None else int(exact_top)
        stats = self.stats(n)
        with progress.tqdm_bars():
            rep = workflow.score_run(self.g, self.layer, self.store, self.run_id, stats, seed=self.seed, clf=classifier,
                                     exact_top=top)
        return Ranking(rep.layer, rep.table, list(rep.components))

    def approve(self, units: Sequence[int], note: str = "") -> None:
        """Approve the removal of `units` of the layer (recorded in the store's audit log, as the dashboard does); a unit
        whose stored scores carry a caution (e.g. a causal effect that is not positive) needs a `note` saying why."""
        found = cautions.stored_cautions(self.store, self.run_id)
        for u in units:
            cautions.check_approval("approved", found.get((self.layer, int(u)), []), note)
        for u in units:
            self.store.decide_unit(self.run_id, self.layer, int(u), "approved", self.reviewer, note=note)

    def repair(self, units: Sequence[int] | None = None, *, out: str | Path | None = None, n: int = 200,
               metrics: str = "fd,kid,swd", real: Any = None, high_pool: int = 0, classifier: Any = None) -> RepairReport:
        """Remove `units` (default: the approved ones), verify the cleaned generator, and measure the change.

        The proof compares the same `n` seeds before and after, beside a random-unit control of the same size.

        >>> import artifix as ax
        >>> run = ax.open(ax.bundled_example(), layer="main.8")
        >>> report = run.repair([13, 63], n=16, metrics="swd")
        >>> report.units, report.manifest["export"].get("exact")
        ([13, 63], True)
        >>> d = report.metric("swd")       # paired change after - before, with its interval
        >>> abs(d["b"] - d["a"] - d["diff"]) < 1e-9
        True
        """
        if units is None:
            plan = plan_from_store(self.store, self.run_id, self.layer)
        else:
            units = [int(u) for u in units]
            if not units:
                raise UserError("repair needs at least one unit; pass units=[...] or approve some first.")
            plan = RepairPlan({self.layer: units}, "api")
        flagged, clean = workflow.flagged_and_clean(self.store, self.run_id)
        measures = workflow.repair_measures(self.ws.profile, real, metrics)  # none without reference data, said so
        if measures.sentence():
            log.say(measures.sentence())
        folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="artifix-repair-"))
        with progress.tqdm_bars():
            manifest = repair(self.g, plan, folder, seed=self.seed, n=int(n), flagged=flagged, clean=clean, clf=classifier,
                              real=measures.real, metrics=measures.metrics, skipped=measures.skipped,
                              channels={self.layer: layer_channels(self.g, self.layer, self.seed)},
                              high_pool=int(high_pool), collateral_n=0)
        return RepairReport(manifest, folder)


def open(g: LoadedGenerator, layer: str | None = None, *, seed: int = 0, store: Any = None, n: int = 1000,
         reviewer: str = "api") -> Run:
    """Open a run of `g` on `layer` (default: the generator profile's layer, main.8 for the example); `store` is a
    label-store path, URL or LabelStore (default: a temporary SQLite file).

    >>> import artifix as ax
    >>> ax.open(ax.bundled_example()).layer
    'main.8'
    """
    return Run(g, layer, seed=seed, store=store, n=n, reviewer=reviewer)
