"""A per-unit relative-accuracy quantile sketch: int64 bucket counts read from the float32 bits, exact min/max."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from ...errors import UserError

DEFAULT_RELATIVE_ACCURACY = 0.005
DEFAULT_MIN_ABS = 1e-4
DEFAULT_MAX_ABS = 1e4

_F32_MANTISSA = 23
_F32_BIAS = 127
_ABS_MASK = 0x7FFFFFFF
_LUT_MAX_BITS = 20  # bucket tables of up to 2^20 int64 entries (8 MiB); finer layouts compute buckets

Quantiles = float | Sequence[float] | torch.Tensor


# Values bucketed and counted at a time on the CPU (64 units x 256 positions x 4 samples of the example's layer): their
# int64 bucket indices (512 KB) stay in a core's cache between the gather and the scatter.
_ADD_CHUNK_VALUES = 1 << 16


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


def _all_keys(key_bits: int, shift: int) -> torch.Tensor:
    """Every float32 bit pattern's top key_bits bits, low bits zero, in key order (int32)."""
    keys = torch.arange(1 << key_bits, dtype=torch.int64) - (1 << (key_bits - 1))
    return (keys << shift).to(torch.int32)


def _bucket_of_bits(sk: "QuantileSketch", u: torch.Tensor) -> torch.Tensor:
    """The bucket (column of `sk.bins`) of float32 values given as their int32 bit patterns, int64."""
    j = torch.bitwise_and(u, _ABS_MASK).to(torch.int64)
    j >>= sk._shift
    j -= sk._kmin - 1
    j.clamp_(0, sk._nb + 1)  # 0: zero bucket (|x| < min_abs); nb + 1: overflow
    sign = torch.bitwise_right_shift(u, 31).to(torch.int64)  # 0/-1
    j ^= sign
    j -= sign  # negate for negative values
    return j + sk._center


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
        key_bits = 32 - self._shift  # a value's bucket depends only on its top key_bits bits
        self._key_offset = 1 << (key_bits - 1)  # (bits >> shift) + offset lies in [0, 2^key_bits)
        self._lut = (_bucket_of_bits(self, _all_keys(key_bits, self._shift)).to(self.device)
                     if key_bits <= _LUT_MAX_BITS else None)
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
    def _bucket_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Bucket of every value of x (B, C, P) float32 contiguous, laid out unit-major as (C, B * P) int64."""
        b, c, p = x.shape
        u = x.view(torch.int32).transpose(0, 1)
        if self._lut is None:
            return _bucket_of_bits(self, u).contiguous().view(c, b * p)
        k32 = torch.bitwise_right_shift(u, self._shift, out=self._scratch.get("k32", (c, b, p), torch.int32, u.device))
        k32 += self._key_offset  # in int32 (half the bytes), then widened once for gather's int64 index
        k = self._scratch.get("k", (c, b * p), torch.int64, u.device)
        k.view(c, b, p).copy_(k32)
        rows = self._lut.expand(c, -1)  # gather along rows runs in parallel over units (index_select does not)
        return torch.gather(rows, 1, k, out=self._scratch.get("j", (c, b * p), torch.int64, u.device))

    def add_(self, x: torch.Tensor, unit_min: torch.Tensor, unit_max: torch.Tensor) -> None:
        """Count x (B, C, P) float32 contiguous, whose per-unit min/max are given (no validation).

        On the CPU the batch is counted `_ADD_CHUNK_VALUES` values at a time, so that the bucket indices of a chunk are
        still in the core's cache when they are scattered into the counts.
        """
        if x.numel() == 0:
            return
        x = x.to(self.device)
        step = x.shape[0] if self.device.type != "cpu" else max(1, _ADD_CHUNK_VALUES // max(1, x[0].numel()))
        one = torch.ones((), dtype=torch.int64, device=self.device)
        for s in range(0, x.shape[0], step):
            j = self._bucket_rows(x[s : s + step])
            # a scatter along each unit's row of buckets: exact integer counts, parallel over units (index_add_ is not)
            self.bins.scatter_add_(1, j, one.expand(j.shape))
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
