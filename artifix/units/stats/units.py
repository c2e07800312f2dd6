"""UnitStats: streaming, mergeable statistics of the C units of one layer (moments, per-sample max/mean, firing, top-k)."""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import torch

from ...errors import UserError
from ...io import save_torch_atomic
from .sketch import (_ABS_MASK, DEFAULT_MAX_ABS, DEFAULT_MIN_ABS, DEFAULT_RELATIVE_ACCURACY, QuantileSketch, Quantiles, _Scratch)

STATE_FORMAT = "artifix.unit_stats"
STATE_VERSION = 1
# Default firing threshold: the unit's top-1 % pixel value (its 99th percentile).
FIRING_TOP_FRACTION = 0.01

_TOPK_CHUNK_ELEMS = 1 << 22  # bound on int64 keys materialised at once by `top_samples`


class SampleTable(NamedTuple):
    """Per-sample summaries sorted by sample index: index (n,), spatial max and spatial mean (n, C) float32."""

    index: torch.Tensor
    max: torch.Tensor
    mean: torch.Tensor


def _merge_moments(
    n_a: torch.Tensor, s_a: torch.Tensor, m2_a: torch.Tensor,
    n_b: torch.Tensor, s_b: torch.Tensor, m2_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan et al.'s pairwise merge of (count, sum, sum of squared deviations)."""
    na, nb = n_a.to(torch.float64), n_b.to(torch.float64)
    delta = s_b / nb.clamp(min=1) - s_a / na.clamp(min=1)
    m2 = m2_a + m2_b + delta * delta * (na * nb / (na + nb).clamp(min=1))
    return n_a + n_b, s_a + s_b, m2


def _sortable_int64(v: torch.Tensor) -> torch.Tensor:
    """Order-preserving map of float32 values to int64 (with -0.0 == +0.0)."""
    bits = (v.to(torch.float32) + 0.0).contiguous().view(torch.int32)
    return (bits ^ ((bits >> 31) & _ABS_MASK)).to(torch.int64)


class UnitStats:
    """Streaming, mergeable statistics of the C units of one layer over a run's samples."""

    def __init__(
        self,
        layer: str,
        channels: int,
        num_samples: int,
        *,
        start: int = 0,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        min_abs: float = DEFAULT_MIN_ABS,
        max_abs: float = DEFAULT_MAX_ABS,
        meta: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        """Empty stats for `layer` with `channels` units over sample indices [start, start + num_samples)."""
        if not isinstance(layer, str):
            raise UserError(f"layer must be a module path string, got {layer!r}.")
        for name, val, low in (("num_samples", num_samples, 1), ("start", start, 0)):
            if not isinstance(val, int) or isinstance(val, bool) or val < low:
                raise UserError(f"{name} must be an integer >= {low}, got {val!r}.")
        self.layer = layer
        self.num_samples = num_samples
        self.start = start
        self.meta: dict[str, Any] = dict(meta or {})
        for k, v in self.meta.items():
            if not isinstance(k, str) or not (v is None or isinstance(v, (str, int, float, bool))):
                raise UserError(f"meta must map strings to str/int/float/bool values, got {k!r}: {v!r}.")
        self.sketch = QuantileSketch(channels, relative_accuracy, min_abs, max_abs, device=device)
        self.channels = channels
        self.spatial: tuple[int, int] | None = None
        self._n = torch.zeros(channels, dtype=torch.int64)
        self._sum = torch.zeros(channels, dtype=torch.float64)
        self._m2 = torch.zeros(channels, dtype=torch.float64)
        self._seen = torch.zeros(num_samples, dtype=torch.bool)
        self._chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._table: SampleTable | None = None
        self._scratch = _Scratch()

    def __repr__(self) -> str:
        return (f"UnitStats(layer={self.layer!r}, channels={self.channels}, samples={self.num_recorded}/"
                f"{self.num_samples}, spatial={self.spatial})")

    # -- recording ------------------------------------------------------------------------------------------
    def _indices(self, sample_indices: torch.Tensor | Sequence[int], batch: int) -> torch.Tensor:
        where = f"layer {self.layer!r}"
        if isinstance(sample_indices, torch.Tensor):
            if sample_indices.is_floating_point() or sample_indices.dtype == torch.bool or sample_indices.is_complex():
                raise UserError(f"{where}: sample indices must be integers, got {sample_indices.dtype}.")
            idx = sample_indices.detach().to("cpu", torch.int64).reshape(-1)
        else:
            try:
                items = list(sample_indices)
                if any(isinstance(i, bool) or not isinstance(i, int) and not hasattr(i, "__index__") for i in items):
                    raise TypeError
                idx = torch.tensor([int(i) for i in items], dtype=torch.int64)
            except (TypeError, ValueError, OverflowError):
                raise UserError(f"{where}: sample indices must be a sequence of integers.") from None
        if idx.numel() != batch:
            raise UserError(f"{where}: got {idx.numel()} sample indices for a batch of {batch} samples.")
        bad = (idx < self.start) | (idx >= self.start + self.num_samples)
        if bool(bad.any()):
            raise UserError(f"{where}: sample index {int(idx[bad][0])} is outside this run's range "
                            f"[{self.start}, {self.start + self.num_samples}).")
        srt = torch.sort(idx).values
        dup = srt[1:] == srt[:-1]
        if bool(dup.any()):
            raise UserError(f"{where}: sample index {int(srt[1:][dup][0])} appears more than once in the batch.")
        again = self._seen[idx - self.start]
        if bool(again.any()):
            raise UserError(f"{where}: sample {int(idx[again][0])} was already recorded; "
                            "each sample index may be recorded only once.")
        return idx

    def update(self, acts: torch.Tensor, sample_indices: torch.Tensor | Sequence[int]) -> None:
        """Fold a batch of activations (B, C, H, W) of the given sample indices into the statistics."""
        where = f"layer {self.layer!r}"
        if not isinstance(acts, torch.Tensor):
            raise UserError(f"{where}: activations must be a torch.Tensor, got {type(acts).__name__}.")
        if acts.dim() != 4:
            raise UserError(f"{where}: expected activations of shape (batch, channels, height, width), "
                            f"got shape {tuple(acts.shape)}.")
        b, c, h, w = acts.shape
        if c != self.channels:
            raise UserError(f"{where}: expected {self.channels} channels, got {c} (activations of shape "
                            f"{tuple(acts.shape)}).")
        if not acts.is_floating_point():
            raise UserError(f"{where}: activations must be floating point, got {acts.dtype}.")
        if h * w == 0:
            raise UserError(f"{where}: activations have an empty spatial size {h}x{w}.")
        if self.spatial is not None and (h, w) != self.spatial:
            raise UserError(f"{where}: activations are {h}x{w} but earlier batches were "
                            f"{self.spatial[0]}x{self.spatial[1]}.")
        idx = self._indices(sample_indices, b)
        if b == 0:
            return
        p = h * w
        with torch.no_grad():
            x = acts.detach().to(self.sketch.device, torch.float32).contiguous().view(b, c, p)
            smax, smin = x.amax(2), x.amin(2)
            finite = torch.isfinite(smax) & torch.isfinite(smin)
            if not bool(finite.all()):
                bad = int(idx[~finite.all(1).cpu()][0])
                raise UserError(f"{where}: activations of sample {bad} contain NaN or infinite values; "
                                "check the generator's weights and inputs.")
            ssum = x.sum(2)
            smean = ssum / p
            dev = torch.sub(x, smean.unsqueeze(2), out=self._scratch.get("dev", x.shape, torch.float32, x.device))
            dev.square_()
            sm2 = dev.sum(2)
            self.sketch.add_(x, smin.amin(0), smax.amax(0))
        ssum64, sm2_64 = ssum.cpu().to(torch.float64), sm2.cpu().to(torch.float64)
        bsum = ssum64.sum(0)
        bn = torch.full((c,), b * p, dtype=torch.int64)
        bmean = bsum / (b * p)
        bm2 = sm2_64.sum(0) + p * ((ssum64 / p - bmean) ** 2).sum(0)
        self._n, self._sum, self._m2 = _merge_moments(self._n, self._sum, self._m2, bn, bsum, bm2)
        self.spatial = (h, w)
        self._seen[idx - self.start] = True
        self._chunks.append((idx, smax.cpu().clone(), smean.cpu().clone()))
        self._table = None

    # -- moments --------------------------------------------------------------------------------------------
    @property
    def count(self) -> torch.Tensor:
        """Activation values recorded per unit (samples x H x W), (C,) int64."""
        return self._n.clone()

    @property
    def sum(self) -> torch.Tensor:
        """Sum of all recorded values per unit, (C,) float64."""
        return self._sum.clone()

    @property
    def sum_sq(self) -> torch.Tensor:
        """Sum of squares of all recorded values per unit, (C,) float64."""
        return self._m2 + self._sum**2 / self._n.clamp(min=1).to(torch.float64)

    @property
    def mean(self) -> torch.Tensor:
        """Mean activation per unit over all pixels of all recorded samples, (C,) float64 (NaN if none)."""
        return torch.where(self._n > 0, self._sum / self._n.clamp(min=1), math.nan)

    @property
    def var(self) -> torch.Tensor:
        """Population variance (divides by n) per unit, (C,) float64."""
        return torch.where(self._n > 0, self._m2.clamp(min=0) / self._n.clamp(min=1), math.nan)

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation per unit, (C,) float64."""
        return self.var.sqrt()

    @property
    def min(self) -> torch.Tensor:
        """Exact minimum per unit, (C,) float32 (NaN if nothing recorded)."""
        return torch.where(self._n > 0, self.sketch.min, math.nan)

    @property
    def max(self) -> torch.Tensor:
        """Exact maximum per unit, (C,) float32 (NaN if nothing recorded)."""
        return torch.where(self._n > 0, self.sketch.max, math.nan)

    # -- quantiles ------------------------------------------------------------------------------------------
    @property
    def relative_accuracy(self) -> float:
        """Relative error bound of `quantile` for magnitudes in the sketch's range."""
        return self.sketch.relative_accuracy

    def quantile(self, q: Quantiles) -> torch.Tensor:
        """Per-unit quantiles of all pixel values: (C,) for scalar q, (C, len(q)) otherwise (float64)."""
        return self.sketch.quantile(q)

    def top_fraction_threshold(self, fraction: Quantiles) -> torch.Tensor:
        """Per-unit value with about `fraction` of the unit's pixel values above it (quantile(1 - fraction))."""
        return self.sketch.top_fraction_threshold(fraction)

    # -- per-sample summaries -------------------------------------------------------------------------------
    @property
    def num_recorded(self) -> int:
        """Number of samples recorded."""
        return int(self._seen.sum())

    def samples(self) -> SampleTable:
        """The per-sample spatial max and mean of every unit, sorted by sample index."""
        if self._table is None:
            if self._chunks:
                idx = torch.cat([c[0] for c in self._chunks])
                order = torch.argsort(idx)
                self._table = SampleTable(idx[order], torch.cat([c[1] for c in self._chunks])[order],
                                          torch.cat([c[2] for c in self._chunks])[order])
            else:
                empty = torch.zeros(0, self.channels, dtype=torch.float32)
                self._table = SampleTable(torch.zeros(0, dtype=torch.int64), empty, empty.clone())
            self._chunks = [tuple(self._table)] if self._chunks else []  # type: ignore[list-item]
        return self._table

    def _threshold(self, threshold: float | torch.Tensor | None, top_fraction: float) -> torch.Tensor:
        if threshold is None:
            return self.top_fraction_threshold(top_fraction)
        t = torch.as_tensor(threshold, dtype=torch.float64).cpu()
        if t.dim() == 0:
            t = t.expand(self.channels)
        if tuple(t.shape) != (self.channels,):
            raise UserError(f"threshold must be a number or {self.channels} per-unit values, got shape "
                            f"{tuple(t.shape)}.")
        return t

    def firing(self, threshold: float | torch.Tensor | None = None,
               top_fraction: float = FIRING_TOP_FRACTION) -> torch.Tensor:
        """(n, C) bool: sample (rows in `samples()` order) fires unit when its spatial max > the threshold."""
        t = self._threshold(threshold, top_fraction)
        # For float32 x: x > t  <=>  x > (t rounded down to float32); compare in float32, no N x C copy.
        t32 = t.to(torch.float32)
        t32 = torch.where(t32.to(torch.float64) > t, torch.nextafter(t32, torch.tensor(-math.inf)), t32)
        return self.samples().max > t32.view(1, -1)

    def firing_rate(self, threshold: float | torch.Tensor | None = None,
                    top_fraction: float = FIRING_TOP_FRACTION) -> torch.Tensor:
        """Fraction of recorded samples whose spatial max exceeds the unit's threshold, (C,) float64."""
        fires = self.firing(threshold, top_fraction)
        n = fires.shape[0]
        if n == 0:
            return torch.full((self.channels,), math.nan, dtype=torch.float64)
        return fires.sum(0).to(torch.float64) / n

    def top_samples(self, k: int, by: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
        """Per unit the k samples with the largest spatial max (or mean): (indices, values), each (C, k')."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise UserError(f"k must be a non-negative integer, got {k!r}.")
        if by not in ("max", "mean"):
            raise UserError(f"top_samples ranks by 'max' or 'mean', got {by!r}.")
        table = self.samples()
        vals = table.max if by == "max" else table.mean
        n = vals.shape[0]
        k = min(k, n)
        out_idx = torch.zeros(self.channels, k, dtype=torch.int64)
        out_val = torch.zeros(self.channels, k, dtype=torch.float32)
        if k == 0:
            return out_idx, out_val
        low = (0xFFFFFFFF - torch.arange(n, dtype=torch.int64)).view(-1, 1)  # lower position wins ties
        step = max(1, _TOPK_CHUNK_ELEMS // n)
        for c0 in range(0, self.channels, step):
            v = vals[:, c0:c0 + step]
            keys = (_sortable_int64(v) << 32) + low
            top = keys.topk(k, dim=0, sorted=True).values  # unique keys: deterministic
            pos = 0xFFFFFFFF - (top & 0xFFFFFFFF)
            out_idx[c0:c0 + step] = table.index[pos].t()
            out_val[c0:c0 + step] = torch.gather(v, 0, pos).t()
        return out_idx, out_val

    # -- merging --------------------------------------------------------------------------------------------
    def _config(self) -> tuple[Any, ...]:
        return (self.layer, self.channels, self.num_samples, self.start, self.sketch._layout(),
                tuple(sorted(self.meta.items())))

    def _check_mergeable(self, other: "UnitStats") -> None:
        if not isinstance(other, UnitStats):
            raise UserError(f"cannot merge UnitStats with {type(other).__name__}.")
        names = ("layer", "channels", "num_samples", "start", "sketch layout", "meta")
        for name, a, b in zip(names, self._config(), other._config()):
            if a != b:
                raise UserError(f"cannot merge unit stats: {name} differs ({a!r} vs {b!r}).")
        if self.spatial is not None and other.spatial is not None and self.spatial != other.spatial:
            raise UserError(f"cannot merge unit stats of layer {self.layer!r}: spatial sizes differ "
                            f"({self.spatial} vs {other.spatial}).")
        both = self._seen & other._seen
        if bool(both.any()):
            i = int(torch.nonzero(both)[0]) + self.start
            raise UserError(f"cannot merge unit stats of layer {self.layer!r}: sample {i} was recorded in both.")

    def merge_(self, other: "UnitStats") -> "UnitStats":
        """Merge `other` (disjoint samples of the same run) into this object; returns self."""
        self._check_mergeable(other)
        self.sketch.merge_(other.sketch)
        self._n, self._sum, self._m2 = _merge_moments(self._n, self._sum, self._m2, other._n, other._sum, other._m2)
        self._seen |= other._seen
        self._chunks.extend(other._chunks)
        self.spatial = self.spatial or other.spatial
        self._table = None
        return self

    def merge(self, other: "UnitStats") -> "UnitStats":
        """A new object holding the merge of this and `other`."""
        return self.clone().merge_(other)

    def clone(self) -> "UnitStats":
        """An independent copy."""
        new = UnitStats.__new__(UnitStats)
        new.__dict__.update(self.__dict__)
        new.meta = dict(self.meta)
        new.sketch = self.sketch.clone()
        new._n, new._sum, new._m2 = self._n.clone(), self._sum.clone(), self._m2.clone()
        new._seen = self._seen.clone()
        new._chunks = list(self._chunks)  # chunks are never modified in place
        new._scratch = _Scratch()
        return new

    def _assign(self, other: "UnitStats") -> None:
        self.__dict__.update(other.__dict__)

    # -- persistence ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, numbers and strings (loadable with torch.load(weights_only=True))."""
        table = self.samples()
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "layer": self.layer,
            "channels": self.channels,
            "num_samples": self.num_samples,
            "start": self.start,
            "spatial": list(self.spatial) if self.spatial else None,
            "meta": dict(self.meta),
            "sketch": self.sketch.state_dict(),
            "count": self._n.clone(),
            "sum": self._sum.clone(),
            "m2": self._m2.clone(),
            "sample_index": table.index.clone(),
            "spatial_max": table.max.clone(),
            "spatial_mean": table.mean.clone(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: str | torch.device | None = None) -> "UnitStats":
        """Rebuild stats from `state_dict()` output; UserError if it is not one."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise UserError("not an artifix unit-stats state (missing or wrong 'format').")
        if state.get("version") != STATE_VERSION:
            raise UserError(f"unit-stats state version {state.get('version')!r} is not supported "
                            f"(expected {STATE_VERSION}).")
        try:
            sketch = QuantileSketch.from_state_dict(state["sketch"], device=device)
            new = cls(state["layer"], int(state["channels"]), int(state["num_samples"]), start=int(state["start"]),
                      meta=state["meta"], device=device)
            c = new.channels
            idx, mx, mn = state["sample_index"], state["spatial_max"], state["spatial_mean"]
            n, s, m2 = state["count"], state["sum"], state["m2"]
            k = idx.shape[0]
            ok = (sketch.channels == c and idx.dim() == 1 and tuple(mx.shape) == (k, c)
                  and tuple(mn.shape) == (k, c) and all(tuple(t.shape) == (c,) for t in (n, s, m2)))
            spatial = state["spatial"]
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            ok = False
        if not ok:
            raise UserError("the unit-stats state is malformed (missing keys or wrong shapes).")
        idx = idx.to(torch.int64)
        if k and (int(idx.min()) < new.start or int(idx.max()) >= new.start + new.num_samples
                  or bool((idx[1:] <= idx[:-1]).any())):
            raise UserError("the unit-stats state is malformed (sample indices out of range or not increasing).")
        new.sketch = sketch
        new.spatial = (int(spatial[0]), int(spatial[1])) if spatial else None
        new._n, new._sum, new._m2 = n.to(torch.int64).clone(), s.to(torch.float64).clone(), m2.to(torch.float64).clone()
        new._seen[idx - new.start] = True
        if k:
            new._chunks = [(idx.clone(), mx.to(torch.float32).clone(), mn.to(torch.float32).clone())]
        return new

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to `path` atomically (torch.save of `state_dict()`)."""
        save_torch_atomic(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> "UnitStats":
        """Read stats written by `save` (weights_only loading; UserError if missing or not a stats file)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"unit-stats file {str(path)!r} does not exist.") from None
        except Exception as e:  # unpickling / zip errors: not our file
            raise UserError(f"{str(path)!r} is not a readable unit-stats file ({type(e).__name__}).") from None
        return cls.from_state_dict(state, device=device)


def merge_all(items: Iterable[UnitStats]) -> UnitStats:
    """Merge several shards of one run into a new UnitStats (UserError if there are none)."""
    items = list(items)
    if not items:
        raise UserError("merge_all needs at least one UnitStats.")
    out = items[0].clone()
    for other in items[1:]:
        out.merge_(other)
    return out


def unit_summary(stats: UnitStats, top: int = 5,
                 quantiles: Sequence[float] = (0.01, 0.1, 0.5, 0.9, 0.99)) -> list[dict[str, Any]]:
    """Per unit a JSON-able row: count, mean, std, min, max, quantiles, firing rate and the top samples by spatial max."""
    q = stats.quantile(list(quantiles))
    rate = stats.firing_rate()
    idx, val = stats.top_samples(top)
    mean, std, lo, hi, cnt = stats.mean, stats.std, stats.min, stats.max, stats.count
    return [{"unit": u, "count": int(cnt[u]), "mean": float(mean[u]), "std": float(std[u]), "min": float(lo[u]),
             "max": float(hi[u]), "quantiles": {str(f): float(q[u, k]) for k, f in enumerate(quantiles)},
             "firing_rate": float(rate[u]), "top_samples": [int(i) for i in idx[u]],
             "top_values": [float(v) for v in val[u]]} for u in range(stats.channels)]
