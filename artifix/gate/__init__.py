"""Release gate: judge a candidate generator against criteria, with significance, and write CI-friendly outputs.

A criterion names a metric, the direction that is better, a threshold, a required confidence and a tier:

    [[gate.criteria]]
    metric = "kid"            # fd | fid | kid | swd | artifact_rate | units_removed | preference
    against = "baseline"      # "baseline" (threshold = allowed worsening) or "absolute" (threshold = limit)
    threshold = 0.01          # a number, or "5%" of the baseline's value (against = "baseline" only)
    direction = "lower"       # which way is better (all built-in metrics: lower)
    confidence = 0.95
    tier = "fail"             # "fail" fails the gate; "warn" only reports

The decision rule, in "badness" units (the value for direction = lower, minus it for higher): with e the
estimate, se its standard error and z the two-sided normal quantile of the confidence, a criterion has
regressed when e - z * se > limit, i.e. the whole interval lies beyond the threshold on the bad side. A
point estimate beyond the threshold whose interval still reaches it is reported as inconclusive and passes.
z is Student's t with B - 1 degrees of freedom when se comes from B bootstrap replicates (Welch-Satterthwaite
for the sum of two such variances), since an se estimated from few replicates is itself noisy; the normal
quantile is used for the binomial se of rates.
- against a baseline checkpoint: both generators are sampled on the same seeds; e is the paired difference
  (candidate - baseline) and se the paired bootstrap se (FD / KID / SWD, `metrics.paired_compare`) or
  std(d_i) / sqrt(n) of the per-sample differences d_i of the classifier's artifact calls.
- against a stored baseline report (a gate report of the baseline release, e.g. written with
  --measure-only): the samples are independent, so e = candidate - baseline and se = sqrt(se_c^2 + se_b^2)
  from the two reports' standard errors; the protocol (n, features, reference, metrics seed, ...) must match.
- absolute: e is the candidate's value and se its bootstrap (or binomial) standard error.
An unchanged model fails a criterion with probability about P(Z > q + margin / se): with threshold 0 that is
(1 - confidence) / 2, so set a margin of the order of the noise (e.g. "2%" for a large n) and, against a
stored report, a higher confidence such as 0.99: the baseline's own error is one draw shared by every later run.

"units_removed" reads a repair's manifest.json (layer + units) and measures, on the candidate's samples,
the fraction of samples whose image changes (some pixel by more than `tolerance` levels of 255) when the
listed units are ablated again. Removed units that stay removed give exactly 0, whether the removal was
baked into the layer's own output or into its consumer's weights (as artifix's export does for ReLU layers).

Everything is seeded, so the same inputs give the same report; wall-clock facts sit under the "run" key.

The package: `criteria` (parsing and validating [[gate.criteria]]), `inputs` (GateSettings, the files a run
reads), `measure` (sampling and measuring), `judge` (the decision rule) and `run` (`run_gate`, which ties them together); `artifix.report.gate` writes the JSON, JUnit XML and Markdown.
"""

from .criteria import (AGAINST, CRITERION_KEYS, DIRECTIONS, FOREST_NAME, FORMAT, FORMAT_VERSION, GATE_METRICS, JUNIT_NAME,
                       REPORT_NAME, SUMMARY_NAME, TIERS, Criterion, parse_criteria, parse_criteria_option)
from .inputs import GateSettings, dist_metrics, read_baseline_report, read_manifest, read_preference, validate
from .judge import judge
from .measure import measure
from .run import run_gate

__all__ = [
    "AGAINST", "CRITERION_KEYS", "DIRECTIONS", "FOREST_NAME", "FORMAT", "FORMAT_VERSION", "GATE_METRICS", "JUNIT_NAME",
    "REPORT_NAME", "SUMMARY_NAME", "TIERS", "Criterion", "parse_criteria", "parse_criteria_option",
    "GateSettings", "dist_metrics", "read_baseline_report", "read_manifest", "read_preference", "validate",
    "judge", "measure", "run_gate",
]
