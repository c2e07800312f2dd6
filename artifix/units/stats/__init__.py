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

The package: `sketch` (QuantileSketch), `units` (UnitStats: moments, per-sample tables, firing, top-k,
merging and persistence) and `ranks` (merging across torch.distributed ranks).
"""

from .ranks import all_reduce_, gather
from .sketch import DEFAULT_MAX_ABS, DEFAULT_MIN_ABS, DEFAULT_RELATIVE_ACCURACY, QuantileSketch, Quantiles
from .units import FIRING_TOP_FRACTION, STATE_FORMAT, STATE_VERSION, SampleTable, UnitStats, merge_all, unit_summary

__all__ = [
    "DEFAULT_MAX_ABS", "DEFAULT_MIN_ABS", "DEFAULT_RELATIVE_ACCURACY", "FIRING_TOP_FRACTION", "STATE_FORMAT", "STATE_VERSION",
    "Quantiles", "QuantileSketch", "SampleTable", "UnitStats", "merge_all", "unit_summary", "all_reduce_", "gather",
]
