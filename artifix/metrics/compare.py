"""Top-level metric computation: FD / KID / SWD (+ FD-inf) with bootstrap intervals, and paired comparisons.

`compute_metrics(fake_batches, ...)` streams generator samples once: features (float64 moments, plus
float32 rows when KID, bootstrap or FD-inf need them) and the SWD sample, then compares them with the
reference. `paired_compare(batches_a, batches_b, ...)` does the same for two sample sets drawn on the
same seeds (before / after a repair) and reports b - a with a paired bootstrap interval: both sets are
resampled with the same sample indices, so the noise common to both (which seeds were drawn) cancels.

Intervals (every metric, `confidence` level): value +- z * se, where se is the standard deviation of
seeded bootstrap replicates over generated samples (the reference is held fixed). The estimate, not the
replicates' mean, is the centre: resampling with replacement duplicates samples, which biases FD and
SWD replicates upwards (FD_N falls with N), so percentile intervals would sit beside the estimate.
- FD: `bootstrap` replicates, each one symmetric eigenvalue problem (see FDReference).
- KID: the value is the subset protocol's mean (with its std over subsets); se comes from replicates of
  the full-sample unbiased MMD^2 (same resamples as FD), which estimates the same quantity.
- SWD: `swd_bootstrap` replicates over the SWD images (exactly re-normalised, 128 of the 512 directions).
- FD-inf: a point estimate with its fit, no interval.
In a paired comparison the replicates of b - a use the same resample for a and b.
Metric names carry the protocol: fd_effnetl0_2k, fid_inception_50k, kid_effnetl0_2k, swd_2k, fd_effnetl0_inf.
Memory: features N x d x 4 bytes per set (2k x 1280: 10 MB); SWD: see `swd.py` (at most 226 KB per image
at 64 px); bootstrap counts N x B x 8 bytes.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import defaults, dist
from .. import intervals
from ..errors import UserError
from ..progress import Progress
from .fd import FDReference, Moments, fd_inf as _fd_inf
from .extractor import Extractor, as_uint8_nhwc
from .features import get_extractor
from .kid import KIDPlan, RealKernelTerms, kid_terms
from .reference import RealStats, load_real
from .swd import SWDSet, swd_compare

METRICS = ("fd", "kid", "swd")
_ALIASES = {"fid": "fd", "fd": "fd", "kid": "kid", "swd": "swd"}


def _opt(value: Any, name: str) -> Any:
    return defaults.get("metrics", name) if value is None else value


def parse_metrics(metrics: str | Sequence[str] | None) -> list[str]:
    """'fd,kid,swd' (or a list) -> validated, de-duplicated metric names in canonical order."""
    metrics = _opt(metrics, "metrics")
    items = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if str(m).strip()]
    bad = [m for m in items if m not in _ALIASES]
    if bad or not items:
        raise UserError(f"Unknown metric {bad[0]!r}; valid metrics: {', '.join(METRICS)}." if bad
                        else f"No metrics requested; valid metrics: {', '.join(METRICS)}.")
    chosen = {_ALIASES[m] for m in items}
    return [m for m in METRICS if m in chosen]


def needs_features(metrics: str | Sequence[str] | None) -> bool:
    """Whether any of these metrics reads network features (FD, KID); SWD reads pixels only."""
    return bool(set(parse_metrics(metrics)) & {"fd", "kid"}) if metrics else False


def format_n(n: int) -> str:
    """Sample count as it appears in metric names: 500, 2k, 1.5k, 10k, 50k, 2048."""
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    if n >= 1000 and n % 100 == 0:
        return f"{n / 1000:g}k"
    return str(n)


def metric_name(metric: str, tag: str, n: int | str) -> str:
    """fd_<tag>_<N> (fid_inception_<N> for the Inception network), kid_<tag>_<N>, swd_<N>."""
    nn = n if isinstance(n, str) else format_n(n)
    if metric == "swd":
        return f"swd_{nn}"
    if metric == "fd" and tag == "inception":
        return f"fid_inception_{nn}"
    return f"{metric}_{tag}_{nn}"


# --------------------------------------------------------------------------------------------- sample streams


class FakeSamples:
    """What the metrics need from one stream of generated images, collected in one pass."""

    def __init__(self, extractor: Extractor, keep_features: bool, swd_n: int, seed: int, need_features: bool = True) -> None:
        self.extractor = extractor
        self.need_features = need_features  # False when only SWD is asked: it reads pixels, so no network runs
        self._n = 0
        self.moments: Moments | None = None
        self._feats: list[np.ndarray] = []
        self.keep = keep_features
        self.swd = SWDSet(seed, swd_n) if swd_n > 0 else None
        self.precomputed: np.ndarray | None = None  # features of the stream's images, in order (the feature ledger's)

    @property
    def n(self) -> int:
        return self._n

    @property
    def features(self) -> np.ndarray:
        return np.concatenate(self._feats) if self._feats else np.zeros((0, self.extractor.dim), np.float32)

    def _add_features(self, b: np.ndarray) -> None:
        """Extract one batch's features into the float64 moments (and the kept rows when needed); count it."""
        if not self.need_features:
            self._n += len(b)
            return
        if self.precomputed is not None:
            f = np.asarray(self.precomputed[self.n:self.n + len(b)])
            if f.shape[0] != len(b):
                raise ValueError("precomputed features are fewer than the images of the stream")
        else:
            f = self.extractor(b)
        if self.moments is None:
            self.moments = Moments(f.shape[1])
        self.moments.update(f)
        self._n += len(b)
        if self.keep:
            self._feats.append(f.astype(np.float32))

    def consume(self, batches: Iterable[Any], n: int | None, progress: Callable[[str], None] | None, label: str) -> None:
        with Progress(n or 0, label) as bar:
            for b in batches:
                if n is not None and self.n >= n:
                    break
                b = as_uint8_nhwc(b, what="generated images")
                if n is not None:
                    b = b[: n - self.n]
                self._add_features(b)
                if self.swd is not None:
                    self.swd.add(b)
                bar.update(len(b))
                if progress:
                    progress(f"{label}: {self.n}" + (f"/{n}" if n else "") + " images")
        if self.n < 2:
            raise UserError(f"Metrics need at least 2 {label}, got {self.n}.")
        if n is not None and self.n < n:
            raise UserError(f"Asked for metrics on n={n} {label} but the stream ended after {self.n}.")

    def consume_shard(self, batches: Iterable[Any], progress: Callable[[str], None] | None, label: str) -> None:
        """Take this rank's contiguous block of the stream (all of it), keeping raw images for SWD to merge later."""
        self._swd_images: list[np.ndarray] = []
        kept = 0
        for b in batches:
            b = as_uint8_nhwc(b, what="generated images")
            self._add_features(b)
            if self.swd is not None and kept < self.swd.limit:  # rank 0 keeps the first swd_n images of the stream
                self._swd_images.append(np.ascontiguousarray(b[: self.swd.limit - kept]))
                kept += self._swd_images[-1].shape[0]
            if progress:
                progress(f"{label} (this rank): {self.n} images")

    def merged(self, n: int | None, label: str) -> "FakeSamples | None":
        """On rank 0, one FakeSamples holding every rank's shard in stream order (None on the other ranks).

        Feature moments are float64 sums and add exactly as a single pass would (up to the order of
        additions); features (KID, bootstrap, FD-inf) and the first swd_n images (SWD) are gathered.
        """
        counts = dist.all_gather_objects(self.n)
        if not sum(counts):
            raise UserError(f"Metrics need at least 2 {label}, got 0.")
        offset = sum(counts[: dist.rank()])
        total = None
        if self.need_features:
            dim = next(d for d in dist.all_gather_objects(None if self.moments is None else self.moments.dim) if d is not None)
            m = self.moments or Moments(dim)
            total = Moments(dim)
            total.n = int(dist.all_reduce_sum(np.array([m.n], np.int64))[0])
            total.sum = dist.all_reduce_sum(m.sum)
            total.outer = dist.all_reduce_sum(m.outer)
        feats = dist.gather_rows(self.features) if self.keep else None
        swd_part = None
        if self.swd is not None:
            need = max(0, self.swd.limit - offset)
            imgs = np.concatenate(self._swd_images)[:need] if self._swd_images else None
            swd_part = dist.gather_objects(imgs)
        if not dist.is_main():
            return None
        out = FakeSamples(self.extractor, self.keep, 0, 0, self.need_features)
        out.moments, out._n = total, sum(counts)
        if feats is not None:
            out._feats = [feats]
        if self.swd is not None:
            out.swd = SWDSet(self.swd.seed, self.swd.limit)
            for part in swd_part or []:
                if part is not None and part.shape[0]:
                    out.swd.add(part)
        if out.n < 2:
            raise UserError(f"Metrics need at least 2 {label}, got {out.n}.")
        if n is not None and out.n != n:
            raise UserError(f"Asked for metrics on n={n} {label} but the ranks produced {out.n}.")
        return out


# --------------------------------------------------------------------------------------------- helpers


def _counts(n: int, replicates: int, seed: int, stream: int) -> np.ndarray:
    """(n, B) bootstrap counts: column b counts how often each index is drawn in resample b."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0xB007, stream]))
    out = np.zeros((n, replicates), np.int64)
    for b in range(replicates):
        out[:, b] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    return out


def _normal_ci(value: float, reps: np.ndarray, confidence: float) -> tuple[list[float] | None, float | None]:
    """value +- z * (standard deviation of the bootstrap replicates); (None, None) without replicates."""
    se = intervals.bootstrap_se(reps)
    if se is None:
        return None, None
    return intervals.normal(value, se, confidence), se


def _check_confidence(confidence: float, bootstrap: int, swd_bootstrap: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise UserError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}.")
    if bootstrap < 0 or swd_bootstrap < 0:
        raise UserError("bootstrap and swd_bootstrap must be >= 0 (0 = no interval).")


class _Setup:
    """Options resolved against the defaults table, the extractor and the reference statistics."""

    def __init__(self, *, real: Any, n: int | None, metrics: Any, features: Any, seed: Any, bootstrap: Any,
                 confidence: Any, kid_subsets: Any, kid_subset_size: Any, fd_inf: Any, inception_weights: Any,
                 real_n: Any, real_resize: Any, swd_n: Any, swd_bootstrap: Any, cache: Any, feature_batch: Any,
                 progress: Callable[[str], None] | None, real_class: Any = None) -> None:
        self.metrics = parse_metrics(metrics)
        self.seed = int(_opt(seed, "metrics_seed"))
        self.bootstrap = int(_opt(bootstrap, "bootstrap"))
        self.confidence = float(_opt(confidence, "confidence"))
        self.kid_subsets = int(_opt(kid_subsets, "kid_subsets"))
        self.kid_subset_size = int(_opt(kid_subset_size, "kid_subset_size"))
        self.fd_inf = bool(_opt(fd_inf, "fd_inf")) and "fd" in self.metrics
        self.swd_n = int(_opt(swd_n, "swd_n")) if "swd" in self.metrics else 0
        self.swd_bootstrap = int(_opt(swd_bootstrap, "swd_bootstrap"))
        self.real, self.real_n, self.real_resize, self.cache = real, real_n, real_resize, cache
        self.real_class = None if real_class is None else int(real_class)
        self.n = None if n is None else int(n)
        _check_confidence(self.confidence, self.bootstrap, self.swd_bootstrap)
        if self.kid_subsets < 1 or self.kid_subset_size < 2:
            raise UserError("KID needs kid_subsets >= 1 and kid_subset_size >= 2.")
        if "swd" in self.metrics and self.swd_n < 1:
            raise UserError(f"swd_n must be a positive number of images, got {self.swd_n}.")
        self.progress = progress
        self.extractor = get_extractor(_opt(features, "features"), batch=feature_batch,
                                       inception_weights=_opt(inception_weights, "inception_weights"))
        self.keep = "kid" in self.metrics or self.bootstrap > 0 or self.fd_inf

    def fake(self) -> FakeSamples:
        return FakeSamples(self.extractor, self.keep, self.swd_n, self.seed, needs_features(self.metrics))

    def reference(self, n_fake: int) -> RealStats:
        real_n = _opt(self.real_n, "real_n")
        if real_n is None and self.real is None:
            real_n = n_fake
        stats = load_real(self.real, self.extractor, n=None if real_n is None else int(real_n), cache=self.cache,
                          swd_n=self.swd_n if "swd" in self.metrics else 0, resize=self.real_resize,
                          progress=self.progress, class_id=self.real_class)
        if "kid" in self.metrics and stats.features is None:
            raise UserError("The reference statistics file holds no features, so KID cannot be computed; "
                            "recompute it or drop 'kid' from --metrics.")
        if "swd" in self.metrics and (stats.swd is None or stats.swd.n == 0):
            raise UserError("The reference statistics file holds no SWD sample; recompute it or drop 'swd' from --metrics.")
        if stats.moments.dim != (self.extractor.dim or stats.moments.dim):
            raise UserError("The reference statistics have a different feature dimension than the extractor; recompute them.")
        return stats

    def base(self, n: int, real: RealStats, name: str) -> dict[str, Any]:
        out = {"n": n, "n_real": real.n, "confidence": self.confidence}
        if not name.startswith("swd"):
            out["features"] = self.extractor.tag
        return out


def _say(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress:
        progress(msg)


# --------------------------------------------------------------------------------------------- per metric


def _fd_block(sets: list[FakeSamples], real: RealStats, counts: np.ndarray) -> tuple[list[float], np.ndarray]:
    dev = sets[0].extractor.device
    ref = FDReference.of(real.moments, None if dev.type == "cpu" else dev)  # float64 on the features' GPU, else LAPACK
    values = [ref.distance(s.moments.mean, s.moments.cov) for s in sets]
    reps = np.zeros((len(sets), counts.shape[1]))
    if counts.shape[1]:
        with Progress(len(sets) * counts.shape[1], "FD bootstrap") as bar:
            for k, s in enumerate(sets):
                p = ref.prepare(s.features)
                reps[k] = ref.weighted_distances(p, counts)
                bar.update(counts.shape[1])
    return values, reps


def _kid_block(sets: list[FakeSamples], real: RealStats, counts: np.ndarray, st: _Setup):
    n = sets[0].n
    plan = KIDPlan.make(n, real.features.shape[0], st.kid_subsets, st.kid_subset_size, st.seed)
    rterms = RealKernelTerms.compute(real.features, plan)
    out = [kid_terms(s.features, real.features, plan, rterms, counts) for s in sets]
    return plan, [o[0] for o in out], np.stack([o[1] for o in out])


def _run(st: _Setup, sets: list[FakeSamples]) -> tuple[dict[str, Any], RealStats]:
    """Compute every requested metric for each set; returns {name: [per-set dict]} and the reference."""
    n = sets[0].n
    real = st.reference(n)
    if "swd" in st.metrics:  # fail before the expensive parts when SWD cannot be computed
        shapes = {s.swd.shape for s in sets} | {real.swd.shape}
        if len(shapes) != 1:
            sizes = " vs ".join(f"{h}x{w}" for h, w in sorted(shapes))
            raise UserError(f"SWD compares images of one size, but generated and reference images are {sizes}; "
                            "use a reference of the generator's size or drop 'swd' from --metrics.")
    counts = _counts(n, st.bootstrap, st.seed, 0) if st.bootstrap > 0 else np.zeros((n, 0), np.int64)
    tag = st.extractor.tag
    out: dict[str, Any] = {}
    if "fd" in st.metrics:
        _say(st.progress, "Frechet distance" + (f" + {st.bootstrap} bootstrap replicates" if st.bootstrap else ""))
        values, reps = _fd_block(sets, real, counts)
        out[metric_name("fd", tag, n)] = [
            {"value": values[k], "reps": reps[k], "ci_method": "bootstrap-se", "bootstrap": st.bootstrap, "metric": "fd"}
            for k in range(len(sets))]
        if st.fd_inf:
            ref = FDReference.of(real.moments)
            out[metric_name("fd", tag, "inf")] = [
                {**_fd_inf(s.features, ref, seed=st.seed), "reps": np.zeros(0), "ci_method": None, "metric": "fd", "extrapolated": True}
                for s in sets]
    if "kid" in st.metrics:
        _say(st.progress, f"KID: {st.kid_subsets} subsets")
        plan, subsets, reps = _kid_block(sets, real, counts, st)
        out[metric_name("kid", tag, n)] = [
            {"value": float(subsets[k].mean()), "std": float(subsets[k].std()), "subsets": st.kid_subsets,
             "subset_size": plan.size, "subset_values": subsets[k], "reps": reps[k],
             "ci_method": "bootstrap-se-full-sample", "bootstrap": st.bootstrap, "metric": "kid"} for k in range(len(sets))]
    if "swd" in st.metrics:
        n_swd = min([real.swd.n] + [s.swd.n for s in sets])
        _say(st.progress, f"SWD on {n_swd} images" + (f" + {st.swd_bootstrap} bootstrap replicates" if st.swd_bootstrap else ""))
        sc = _counts(n_swd, st.swd_bootstrap, st.seed, 1) if st.swd_bootstrap else None
        res = swd_compare([s.swd for s in sets], real.swd, st.seed, sc)
        out[metric_name("swd", tag, n_swd)] = [
            {"value": r["value"], "levels": r["levels"], "n_swd": r["n"], "reps": r["boot"],
             "ci_method": "bootstrap-se", "bootstrap": st.swd_bootstrap, "metric": "swd"} for r in res]
    return out, real


_OPTS_DOC = """
    real: reference (folder, .npz/.npy uint8 array, statistics .npz, RealStats) or None for the example's
        scenes; n: number of generated images to use (default: the whole stream); metrics: 'fd,kid,swd';
    features: feature space name or an Extractor; seed: metrics seed (KID subsets, bootstrap, SWD patches
        and directions); bootstrap / swd_bootstrap: replicates (0 = no interval); confidence: e.g. 0.95;
    real_n: reference images (default: all of a folder/array, n for the scenes); real_class: only the reference
        images of this class (dataset.json labels); real_resize: resize a
        mixed-size folder to its first image's size; swd_n: images used for SWD; cache: cache folder;
    progress: optional callable receiving one-line status messages (for stderr).
"""


def compute_metrics(fake_batches: Iterable[Any], *, real: Any = None, n: int | None = None, metrics: Any = None,
                    features: Any = None, seed: int | None = None, bootstrap: int | None = None,
                    confidence: float | None = None, kid_subsets: int | None = None,
                    kid_subset_size: int | None = None, fd_inf: bool | None = None,
                    inception_weights: str | os.PathLike | None = None, real_n: int | None = None,
                    real_resize: bool | None = None, swd_n: int | None = None, swd_bootstrap: int | None = None,
                    cache: str | os.PathLike | None = None, feature_batch: int | None = None,
                    progress: Callable[[str], None] | None = None, sharded: bool = False,
                    real_class: int | None = None) -> dict[str, dict[str, Any]]:
    """Metrics of generated uint8 image batches against a reference; JSON-able.

    With `sharded` under torchrun, `fake_batches` is this rank's contiguous block of the stream (rank order =
    stream order, see `dist.shard_range`) and `n` the total: the shards are merged on rank 0, which computes
    and returns the metrics; the other ranks return {}. Without torchrun `sharded` changes nothing.

    Returns {metric name: {"value", "ci": [lo, hi] or None, "n", "n_real", "confidence", "features",
    "ci_method", ...}}; KID adds "std" (over subsets), SWD "levels" (1e3 x SWD per pyramid level),
    FD-inf "slope", "ns", "fds", "r2".
    """
    st = _Setup(real=real, n=n, metrics=metrics, features=features, seed=seed, bootstrap=bootstrap,
                confidence=confidence, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, fd_inf=fd_inf,
                inception_weights=inception_weights, real_n=real_n, real_resize=real_resize, swd_n=swd_n,
                swd_bootstrap=swd_bootstrap, cache=cache, feature_batch=feature_batch, progress=progress,
                real_class=real_class)
    fake = st.fake()
    if sharded and dist.active():
        fake.consume_shard(fake_batches, progress, "generated images")
        merged = fake.merged(st.n, "generated images")
        if merged is None:
            return {}
        fake = merged
    else:
        fake.consume(fake_batches, st.n, progress, "generated images")
    raw, real = _run(st, [fake])
    out: dict[str, dict[str, Any]] = {}
    for name, (entry,) in raw.items():
        reps = entry.pop("reps")
        entry.pop("subset_values", None)
        e = {"value": float(entry.pop("value")), **st.base(fake.n, real, name), **entry}
        e["ci"], e["se"] = _normal_ci(e["value"], reps, st.confidence) if e.get("ci_method") else (None, None)
        out[name] = e
    return out


compute_metrics.__doc__ += _OPTS_DOC  # type: ignore[operator]


def paired_compare(batches_a: Iterable[Any], batches_b: Iterable[Any], *, real: Any = None, n: int | None = None,
                   metrics: Any = None, features: Any = None, seed: int | None = None, bootstrap: int | None = None,
                   confidence: float | None = None, kid_subsets: int | None = None,
                   kid_subset_size: int | None = None, fd_inf: bool | None = None,
                   inception_weights: str | os.PathLike | None = None, real_n: int | None = None,
                   real_resize: bool | None = None, swd_n: int | None = None, swd_bootstrap: int | None = None,
                   cache: str | os.PathLike | None = None, feature_batch: int | None = None,
                   progress: Callable[[str], None] | None = None, real_class: int | None = None) -> dict[str, dict[str, Any]]:
    """Compare two sample sets drawn on the same seeds (a = before, b = after) against one reference.

    Sample i of a and sample i of b must come from the same seed. Returns per metric
    {"a", "b", "diff" (= b - a; negative means b is closer to the reference), "ci" (interval of the
    difference, paired bootstrap: both sets resampled with the same indices), "ci_a", "ci_b",
    "significant" (the interval excludes 0 beyond float round-off), "p_b_better" (fraction of replicates with b < a), "n", ...}.
    """
    return paired_compare_many(batches_a, {"b": batches_b}, real=real, n=n, metrics=metrics, features=features, seed=seed,
                               bootstrap=bootstrap, confidence=confidence, kid_subsets=kid_subsets,
                               kid_subset_size=kid_subset_size, fd_inf=fd_inf, inception_weights=inception_weights,
                               real_n=real_n, real_resize=real_resize, swd_n=swd_n, swd_bootstrap=swd_bootstrap, cache=cache,
                               feature_batch=feature_batch, progress=progress, real_class=real_class)["b"]


def paired_compare_many(batches_a: Iterable[Any], others: dict[str, Iterable[Any]], *,
                        precomputed: dict[str, np.ndarray] | None = None, **opts: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """`paired_compare` of one set a against several sets b (same seeds), {name: result}: a's features, its metrics and
    the bootstrap resamples are computed once for all of them (the repair and its random control share 'before').

    `precomputed` maps "a" or a name of `others` to that set's features (N, d), in stream order (the feature ledger's),
    which are then not extracted again; the images are still read for SWD. `opts` are paired_compare's options.
    """
    unknown = set(opts) - set(_SETUP_KEYS)
    if unknown:
        raise TypeError(f"paired_compare_many got unknown options {sorted(unknown)}")
    progress = opts.get("progress")
    st = _Setup(**{k: opts.get(k) for k in _SETUP_KEYS})
    st.keep = True
    pre = precomputed or {}
    a = st.fake()
    a.precomputed = pre.get("a")
    a.consume(batches_a, st.n, progress, "images of set a")
    sets = [a]
    for name, batches in others.items():
        b = st.fake()
        b.precomputed = pre.get(name)
        b.consume(batches, st.n, progress, f"images of set {name}")
        if a.n != b.n:
            raise UserError(f"A paired comparison needs as many images in both sets (same seeds); got {a.n} and {b.n}.")
        sets.append(b)
    raw, real = _run(st, sets)
    return {name: {metric: _paired_entry(st, a.n, real, metric, entries[0], entries[k + 1]) for metric, entries in raw.items()}
            for k, name in enumerate(others)}


_SETUP_KEYS = ("real", "n", "metrics", "features", "seed", "bootstrap", "confidence", "kid_subsets", "kid_subset_size",
               "fd_inf", "inception_weights", "real_n", "real_resize", "swd_n", "swd_bootstrap", "cache", "feature_batch",
               "progress", "real_class")


def _paired_entry(st: _Setup, n: int, real: RealStats, name: str, ea: dict[str, Any], eb: dict[str, Any]) -> dict[str, Any]:
    """One metric of a paired comparison (b - a) from the per-set entries of `_run` (not modified)."""
    va, vb = float(ea["value"]), float(eb["value"])
    ra, rb = ea["reps"], eb["reps"]
    if "subset_values" in ea:  # KID: the same subsets for both sets, so the difference is paired too
        diff = float((eb["subset_values"] - ea["subset_values"]).mean())
    else:
        diff = vb - va
    rd = rb - ra
    e: dict[str, Any] = {"a": va, "b": vb, "diff": diff, **st.base(n, real, name)}
    for k in ("ci_method", "bootstrap", "subsets", "subset_size", "n_swd", "ns", "metric", "extrapolated"):
        if k in ea:
            e[k] = ea[k]
    if "std" in ea:
        e["std_a"], e["std_b"] = ea["std"], eb["std"]
    if "levels" in ea:
        e["levels_a"], e["levels_b"] = ea["levels"], eb["levels"]
    has_ci = bool(e.get("ci_method"))
    e["ci"], e["se"] = _normal_ci(diff, rd, st.confidence) if has_ci else (None, None)
    e["ci_a"], e["se_a"] = _normal_ci(va, ra, st.confidence) if has_ci else (None, None)
    e["ci_b"], e["se_b"] = _normal_ci(vb, rb, st.confidence) if has_ci else (None, None)
    tol = 1e-9 * max(abs(va), abs(vb))  # float round-off (e.g. other batch splits) is not a difference
    e["significant"] = bool(e["ci"] is not None and (e["ci"][0] > tol or e["ci"][1] < -tol))
    e["p_b_better"] = float((rd < 0).mean()) if rd.size else None
    return e


paired_compare.__doc__ += _OPTS_DOC  # type: ignore[operator]
