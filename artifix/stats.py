"""Streaming, mergeable per-unit statistics of a layer's activations.

A `UnitStats` watches one layer with C units (channels). Each `update(acts, sample_indices)` takes a batch of
activations of shape (B, C, H, W) and folds it into state whose size does not grow with the number of
pixels, so a run over N samples never holds the N x C x H x W tensor:

- a **quantile sketch** per unit over every activation value (`QuantileSketch`): DDSketch-style relative
  accuracy buckets on a fixed index range, counted in int64, so merging is an elementwise sum that is exact,
  associative and order-independent;
- per unit an exact **count**, the **sum** and **sum of squared deviations** in float64 (mean, std; merged
  with Chan et al.'s pairwise formula, stable for large offsets), and the exact **min/max**;
- **per-sample summaries**: the spatial max and spatial mean of every unit for every recorded sample
  (N x C float32 each), kept by sample index, from which come firing rates and top-k samples.

Every piece merges (`merge`, `merge_`, `merge_all`, and `all_reduce_` / `gather` across torch.distributed
ranks); merged shards give the same result as one pass: bit-identical sketch, counts, min/max and
per-sample tables (up to float rounding of spatial means), and float64 moments equal to rounding.

**Sketch mapping.** The bucket of x is read from its bits: |x| = 2^e * (1 + f) falls in
bucket (e, top `m` bits of f), i.e. each octave is split into 2^m equal-width buckets (DDSketch's linearly
interpolated mapping with an exact integer index). A bucket [L, U) has U/L <= 1 + 2^-m and reports
2LU/(L+U), so every quantile is within relative error alpha = 1/(2^(m+1) + 1) of the exact one; m is the
smallest that meets the requested `relative_accuracy` (0.005 -> m = 7, alpha = 1/257 = 0.39 %). Buckets
cover |x| in [2^lo, 2^hi) from `min_abs`/`max_abs` rounded outward to powers of two (default 2^-14..2^14):
smaller magnitudes (and exact zeros) share the zero bucket and are reported as 0 (absolute error < 2^lo),
larger ones share an overflow bucket per sign (reported clamped to the exact min/max; `out_of_range`
counts them). Because the index is integer arithmetic on the bits, a value lands in the same bucket
whatever the batch size, thread count or shard, which is what makes merges exact.

Values are taken as float32 (float16/bfloat16/float64 activations are converted first). Memory of the
sketch: (2 * (hi - lo) * 2^m + 3) int64 buckets per unit, 56 KiB per unit with the defaults (14.7 MB for
256 units); `state_dict` trims bucket columns that are empty in every unit.

**Quantile rank.** `quantile(q)` estimates the sorted value of rank floor(q * (n - 1)) (0-based; numpy's
`method="lower"`); q = 0 and q = 1 return the exact min and max. `top_fraction_threshold(f)` is
`quantile(1 - f)`: about a fraction f of the unit's values lie above it (GAN Dissection's top-fraction
thresholds, 0.1 % .. 100 %).

**Firing.** A unit *fires* on a sample when the sample's spatial max of that unit is strictly greater
than the unit's threshold; by default the threshold is `top_fraction_threshold(FIRING_TOP_FRACTION)`, the
99th percentile of the unit's pixel values over all recorded samples. `firing_rate` is the fraction of
recorded samples on which the unit fires (Choi et al. relate rarely-firing units to artifacts).

**Sharding.** Every process creates `UnitStats(layer, C, num_samples)` for the whole run and records only
its own sample indices; per-sample rows are stored only for recorded samples (plus an N-byte "seen" map),
and `all_reduce_` / `gather` (or `merge_all` over saved shards) combine them. A sample recorded twice is
an error, never a silent double count.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import torch

from .errors import UserError
from .io import atomic_path

STATE_FORMAT = "artifix.unit_stats"
STATE_VERSION = 1
DEFAULT_RELATIVE_ACCURACY = 0.005
DEFAULT_MIN_ABS = 1e-4
DEFAULT_MAX_ABS = 1e4
# Default firing threshold: the unit's top-1 % pixel value (its 99th percentile).
FIRING_TOP_FRACTION = 0.01

_F32_MANTISSA = 23
_F32_BIAS = 127
_ABS_MASK = 0x7FFFFFFF
_TOPK_CHUNK_ELEMS = 1 << 22  # bound on int64 keys materialised at once by `top_samples`

Quantiles = float | Sequence[float] | torch.Tensor


class _Scratch:
    """Reusable work buffers, so the per-batch hot path allocates (and page-faults) no large tensors."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A buffer of this shape and dtype (contents undefined), grown as needed."""
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(n, dtype=dtype, device=device)
            self._bufs[name] = buf
        return buf[:n].view(shape)


class SampleTable(NamedTuple):
    """Per-sample summaries sorted by sample index: index (n,), spatial max and spatial mean (n, C) float32."""

    index: torch.Tensor
    max: torch.Tensor
    mean: torch.Tensor


def _mantissa_bits(relative_accuracy: float) -> int:
    """Smallest m with 1 / (2^(m+1) + 1) <= relative_accuracy."""
    if not (isinstance(relative_accuracy, (int, float)) and 0 < relative_accuracy < 1):
        raise UserError(f"relative_accuracy must be a number in (0, 1), got {relative_accuracy!r}.")
    for m in range(0, _F32_MANTISSA + 1):
        if 1.0 / (2 ** (m + 1) + 1) <= relative_accuracy:
            return m
    raise UserError(f"relative_accuracy {relative_accuracy!r} is finer than float32 resolution allows.")


def _floor_log2(x: float) -> int:
    return math.frexp(x)[1] - 1


def _ceil_log2(x: float) -> int:
    mant, exp = math.frexp(x)
    return exp - 1 if mant == 0.5 else exp


def _as_fractions(q: Quantiles, name: str, low_open: bool = False) -> tuple[torch.Tensor, bool]:
    """q as a float64 1-D tensor, and whether it was a scalar; UserError outside [0, 1] ((0, 1] if low_open)."""
    try:
        t = torch.as_tensor(q, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{name} must be a number or a sequence of numbers, got {q!r}.") from None
    scalar = t.dim() == 0
    t = t.reshape(-1).cpu()
    lo_ok = (t > 0) if low_open else (t >= 0)
    if t.dim() != 1 or not bool((lo_ok & (t <= 1)).all()):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise UserError(f"{name} must lie in {interval}, got {q!r}.")
    return t, scalar


class QuantileSketch:
    """Per-unit relative-accuracy quantile sketch (int64 bucket counts on a fixed range, exact min/max)."""

    def __init__(
        self,
        channels: int,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        min_abs: float = DEFAULT_MIN_ABS,
        max_abs: float = DEFAULT_MAX_ABS,
        device: str | torch.device | None = None,
    ) -> None:
        """Empty sketch for `channels` units; magnitudes in [min_abs, max_abs] get the relative guarantee."""
        if not isinstance(channels, int) or isinstance(channels, bool) or channels <= 0:
            raise UserError(f"channels must be a positive integer, got {channels!r}.")
        if not (isinstance(min_abs, (int, float)) and isinstance(max_abs, (int, float))
                and 0 < min_abs < max_abs < math.inf):
            raise UserError(f"need 0 < min_abs < max_abs < inf, got min_abs={min_abs!r}, max_abs={max_abs!r}.")
        self.channels = channels
        self.mantissa_bits = _mantissa_bits(relative_accuracy)
        self.min_exp = max(_floor_log2(float(min_abs)), 1 - _F32_BIAS)
        self.max_exp = min(_ceil_log2(float(max_abs)), _F32_BIAS + 1)
        if self.min_exp >= self.max_exp:
            raise UserError(f"min_abs={min_abs!r} and max_abs={max_abs!r} leave no float32 range to bucket.")
        m = self.mantissa_bits
        self._shift = _F32_MANTISSA - m
        self._kmin = (self.min_exp + _F32_BIAS) << m
        self._nb = (self.max_exp - self.min_exp) << m  # normal buckets per sign
        self.nbins = 2 * self._nb + 3  # [neg overflow, neg..., zero, pos..., pos overflow]
        self._center = self._nb + 1
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.bins = torch.zeros(channels, self.nbins, dtype=torch.int64, device=self.device)
        self.min = torch.full((channels,), math.inf, dtype=torch.float32)
        self.max = torch.full((channels,), -math.inf, dtype=torch.float32)
        idx_dtype = torch.int32 if channels * self.nbins < 2**31 else torch.int64
        self._offsets = (torch.arange(channels, dtype=idx_dtype, device=self.device) * self.nbins
                         + self._center).view(1, channels, 1)
        self._values: torch.Tensor | None = None
        self._scratch = _Scratch()

    # -- layout ---------------------------------------------------------------------------------------------
    @property
    def relative_accuracy(self) -> float:
        """The guaranteed relative error of quantiles for magnitudes in [min_abs, max_abs)."""
        return 1.0 / (2 ** (self.mantissa_bits + 1) + 1)

    @property
    def min_abs(self) -> float:
        """Smallest magnitude with its own bucket (smaller ones count as zero)."""
        return math.ldexp(1.0, self.min_exp)

    @property
    def max_abs(self) -> float:
        """Magnitudes at or above this go to the overflow bucket of their sign."""
        return math.ldexp(1.0, self.max_exp)

    @property
    def bytes_per_unit(self) -> int:
        """Memory of the bucket counts per unit (int64 counts plus float32 min and max)."""
        return self.nbins * 8 + 8

    def _layout(self) -> tuple[int, int, int]:
        return (self.mantissa_bits, self.min_exp, self.max_exp)

    def bin_values(self) -> torch.Tensor:
        """The value each bucket reports (float64, length nbins; +-inf for the overflow buckets)."""
        if self._values is None:
            m = self.mantissa_bits
            k = torch.arange(self._kmin, self._kmin + self._nb, dtype=torch.int64)
            e = (k >> m) - _F32_BIAS
            frac = (k & ((1 << m) - 1)).to(torch.float64)
            lo = torch.ldexp(1.0 + frac / (1 << m), e.to(torch.float64))
            hi = lo + torch.ldexp(torch.ones_like(lo), (e - m).to(torch.float64))
            rep = 2 * lo * hi / (lo + hi)
            inf = torch.tensor([math.inf], dtype=torch.float64)
            zero = torch.zeros(1, dtype=torch.float64)
            self._values = torch.cat([-inf, -rep.flip(0), zero, rep, inf])
        return self._values

    # -- recording ------------------------------------------------------------------------------------------
    def _bucket_index(self, x: torch.Tensor) -> torch.Tensor:
        """Flat (unit, bucket) index of every value of x (B, C, P) float32 contiguous."""
        u = x.view(torch.int32)
        j = torch.bitwise_and(u, _ABS_MASK, out=self._scratch.get("j", u.shape, torch.int32, u.device))
        j >>= self._shift
        j -= self._kmin - 1
        j.clamp_(0, self._nb + 1)  # 0: zero bucket (|x| < min_abs); nb + 1: overflow
        sign = torch.bitwise_right_shift(u, 31, out=self._scratch.get("s", u.shape, torch.int32, u.device))  # 0/-1
        j ^= sign
        j -= sign  # negate for negative values
        if self._offsets.dtype != j.dtype:
            j = j.to(self._offsets.dtype)
        j += self._offsets
        return j.view(-1)

    def add_(self, x: torch.Tensor, unit_min: torch.Tensor, unit_max: torch.Tensor) -> None:
        """Count x (B, C, P) float32 contiguous, whose per-unit min/max are given (no validation)."""
        if x.numel() == 0:
            return
        x = x.to(self.device)
        idx = self._bucket_index(x)
        ones = torch.ones((), dtype=torch.int64, device=self.device).expand(idx.numel())
        self.bins.view(-1).index_add_(0, idx, ones)
        torch.minimum(self.min, unit_min.to(torch.float32).cpu(), out=self.min)
        torch.maximum(self.max, unit_max.to(torch.float32).cpu(), out=self.max)

    def update(self, values: torch.Tensor) -> None:
        """Count every value of a (B, C, ...) float tensor, unit = dim 1."""
        if not isinstance(values, torch.Tensor) or values.dim() < 2 or values.shape[1] != self.channels:
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise UserError(f"expected a tensor of shape (batch, {self.channels}, ...), got {shape}.")
        if not values.is_floating_point():
            raise UserError(f"expected floating-point values, got {values.dtype}.")
        x = values.detach().to(torch.float32).contiguous().view(values.shape[0], self.channels, -1)
        if x.numel() == 0:
            return
        xt = x.transpose(0, 1).reshape(self.channels, -1)
        lo, hi = xt.amin(1), xt.amax(1)
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise UserError("values contain NaN or infinite entries.")
        self.add_(x, lo, hi)

    # -- queries --------------------------------------------------------------------------------------------
    @property
    def count(self) -> torch.Tensor:
        """Number of values counted per unit (C,) int64."""
        return self.bins.sum(1).cpu()

    @property
    def out_of_range(self) -> torch.Tensor:
        """Values per unit with |x| >= max_abs (no relative guarantee for quantiles among them), (C,) int64."""
        return (self.bins[:, 0] + self.bins[:, -1]).cpu()

    def quantile(self, q: Quantiles) -> torch.Tensor:
        """Estimated quantiles per unit: (C,) float64 for a scalar q, (C, len(q)) for a sequence; NaN if empty."""
        qs, scalar = _as_fractions(q, "q")
        bins = self.bins.cpu()
        cum = bins.cumsum(1)
        n = cum[:, -1]
        rank = torch.floor(qs.view(1, -1) * (n - 1).clamp(min=0).to(torch.float64).view(-1, 1)).to(torch.int64)
        pos = torch.searchsorted(cum, rank, right=True).clamp_(max=self.nbins - 1)
        lo = self.min.to(torch.float64).view(-1, 1)
        hi = self.max.to(torch.float64).view(-1, 1)
        out = self.bin_values()[pos]
        out = torch.maximum(torch.minimum(out, hi), lo)
        out = torch.where(qs.view(1, -1) == 0, lo, out)
        out = torch.where(qs.view(1, -1) == 1, hi, out)
        out = torch.where((n == 0).view(-1, 1), torch.full_like(out, math.nan), out)
        return out[:, 0] if scalar else out

    def top_fraction_threshold(self, fraction: Quantiles) -> torch.Tensor:
        """Per-unit value t with about `fraction` (in (0, 1]) of the unit's values above it: quantile(1 - f)."""
        fs, scalar = _as_fractions(fraction, "fraction", low_open=True)
        out = self.quantile(1.0 - fs)
        return out[:, 0] if scalar else out

    # -- merging and state ----------------------------------------------------------------------------------
    def _check_compatible(self, other: "QuantileSketch") -> None:
        if not isinstance(other, QuantileSketch):
            raise UserError(f"cannot merge a quantile sketch with {type(other).__name__}.")
        if other.channels != self.channels or other._layout() != self._layout():
            raise UserError(
                f"cannot merge quantile sketches with different layouts: {self.channels} units, "
                f"layout {self._layout()} vs {other.channels} units, layout {other._layout()}."
            )

    def merge_(self, other: "QuantileSketch") -> "QuantileSketch":
        """Add `other`'s counts into this sketch (exact, order-independent); returns self."""
        self._check_compatible(other)
        self.bins += other.bins.to(self.device)
        torch.minimum(self.min, other.min, out=self.min)
        torch.maximum(self.max, other.max, out=self.max)
        return self

    def clone(self) -> "QuantileSketch":
        """An independent copy."""
        new = QuantileSketch.__new__(QuantileSketch)
        new.__dict__.update(self.__dict__)
        new.bins = self.bins.clone()
        new.min = self.min.clone()
        new.max = self.max.clone()
        new._scratch = _Scratch()
        return new

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers; bucket columns empty in every unit are trimmed from both ends."""
        bins = self.bins.cpu()
        used = torch.nonzero(bins.any(0)).view(-1)
        start, stop = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, 0)
        return {
            "channels": self.channels,
            "mantissa_bits": self.mantissa_bits,
            "min_exp": self.min_exp,
            "max_exp": self.max_exp,
            "bins_start": start,
            "bins": bins[:, start:stop].clone(),
            "min": self.min.clone(),
            "max": self.max.clone(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: str | torch.device | None = None) -> "QuantileSketch":
        """Rebuild a sketch from `state_dict()` output."""
        try:
            m, lo, hi = int(state["mantissa_bits"]), int(state["min_exp"]), int(state["max_exp"])
            sk = cls(int(state["channels"]), 1.0 / (2 ** (m + 1) + 1), math.ldexp(1.0, lo), math.ldexp(1.0, hi),
                     device=device)
            bins, start = state["bins"], int(state["bins_start"])
            mn, mx = state["min"], state["max"]
            ok = (sk._layout() == (m, lo, hi) and isinstance(bins, torch.Tensor) and bins.dim() == 2
                  and bins.shape[0] == sk.channels and 0 <= start and start + bins.shape[1] <= sk.nbins
                  and tuple(mn.shape) == (sk.channels,) and tuple(mx.shape) == (sk.channels,))
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise UserError("the quantile-sketch state is malformed (missing keys or wrong shapes).")
        sk.bins[:, start:start + bins.shape[1]] = bins.to(torch.int64)
        sk.min = mn.to(torch.float32).clone()
        sk.max = mx.to(torch.float32).clone()
        return sk


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
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)

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


# -- torch.distributed ------------------------------------------------------------------------------------------
def _dist_active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _comm_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collect(stats: UnitStats, dst: int | None, group: Any) -> UnitStats | None:
    """Merge `stats` across the ranks of `group`: on every rank (dst None) or on global rank `dst` only."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    receive = dst is None or dist.get_rank() == dst
    dev = _comm_device(group)

    # 1. Every rank must hold stats of the same run; agree on the spatial size.
    sig = (stats._config(), stats.spatial)
    sigs: list[Any] = [None] * world
    dist.all_gather_object(sigs, sig, group=group)
    for cfg, _ in sigs:
        if cfg != sigs[0][0]:
            raise UserError(f"cannot merge unit stats across ranks: ranks hold different configurations "
                            f"({sigs[0][0]!r} vs {cfg!r}).")
    spatials = {sp for _, sp in sigs if sp is not None}
    if len(spatials) > 1:
        raise UserError(f"cannot merge unit stats of layer {stats.layer!r} across ranks: spatial sizes differ "
                        f"({sorted(spatials)}).")

    # 2. Disjointness: count how many ranks recorded each sample.
    seen = stats._seen.to(dev, torch.int32)
    dist.all_reduce(seen, group=group)
    if bool((seen > 1).any()):
        i = int(torch.nonzero(seen > 1)[0]) + stats.start
        raise UserError(f"cannot merge unit stats of layer {stats.layer!r} across ranks: sample {i} was "
                        "recorded on more than one rank.")

    def reduce(t: torch.Tensor, op: Any) -> torch.Tensor:
        t = t.to(dev).clone()
        if dst is None:
            dist.all_reduce(t, op=op, group=group)
        else:
            dist.reduce(t, dst=dst, op=op, group=group)
        return t.cpu()

    def collect(t: torch.Tensor) -> list[torch.Tensor]:
        t = t.to(dev).contiguous()
        parts = [torch.empty_like(t) for _ in range(world)] if receive else None
        if dst is None:
            dist.all_gather(parts, t, group=group)
        else:
            dist.gather(t, parts, dst=dst, group=group)
        return [p.cpu() for p in parts] if parts is not None else []

    # 3. Sketch counts and min/max are sums and extremes.
    bins = reduce(stats.sketch.bins, dist.ReduceOp.SUM)
    lo = reduce(stats.sketch.min, dist.ReduceOp.MIN)
    hi = reduce(stats.sketch.max, dist.ReduceOp.MAX)
    # 4. Moments: gathered and folded in rank order (identical on every receiving rank).
    moments = collect(torch.stack([stats._n.to(torch.float64), stats._sum, stats._m2]))
    # 5. Per-sample rows: pad to the longest shard, gather, keep the real rows.
    table = stats.samples()
    sizes_list = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(sizes_list, torch.tensor([table.index.numel()], dtype=torch.int64, device=dev), group=group)
    sizes = torch.cat(sizes_list).cpu()
    kmax = int(sizes.max())
    c = stats.channels
    idx_pad = torch.full((kmax,), -1, dtype=torch.int64)
    rows_pad = torch.zeros(kmax, 2 * c, dtype=torch.float32)
    k = table.index.numel()
    idx_pad[:k] = table.index
    rows_pad[:k, :c] = table.max
    rows_pad[:k, c:] = table.mean
    idx_parts, row_parts = (collect(idx_pad), collect(rows_pad)) if kmax else ([], [])
    if not receive:
        return None

    out = stats.clone()
    out.sketch.bins = bins.to(out.sketch.device)
    out.sketch.min, out.sketch.max = lo, hi
    n, s, m2 = moments[0][0].to(torch.int64), moments[0][1], moments[0][2]
    for part in moments[1:]:
        n, s, m2 = _merge_moments(n, s, m2, part[0].to(torch.int64), part[1], part[2])
    out._n, out._sum, out._m2 = n, s, m2
    out._seen = seen.cpu() > 0
    out.spatial = next(iter(spatials)) if spatials else None
    out._chunks = [(ip[:kr].clone(), rp[:kr, :c].clone(), rp[:kr, c:].clone())
                   for ip, rp, kr in zip(idx_parts, row_parts, sizes.tolist()) if kr]
    out._table = None
    return out


def all_reduce_(stats: UnitStats, group: Any = None) -> UnitStats:
    """Merge `stats` across all ranks in place (every rank ends with the whole run); no-op without torch.distributed."""
    if not _dist_active():
        return stats
    merged = _collect(stats, None, group)
    assert merged is not None
    stats._assign(merged)
    return stats


def gather(stats: UnitStats, dst: int = 0, group: Any = None) -> UnitStats | None:
    """The merge of all ranks' `stats` on global rank `dst` (None elsewhere); `stats` if not distributed."""
    if not _dist_active():
        return stats
    return _collect(stats, dst, group)


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
