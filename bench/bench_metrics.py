"""Benchmark of the metrics stage: each fast path against a straightforward one, side by side in one run.

    python bench/bench_metrics.py            # table on stdout
    python bench/bench_metrics.py --json     # one JSON object on stdout (the table goes to stderr)
    python bench/bench_metrics.py --quick    # smaller sizes (about a minute)

Rows:
- frechet sqrt: Tr((S1 S2)^1/2) from two symmetric eigen-problems (artifix) vs trace(scipy.linalg.sqrtm(S1 S2))
  at d=2048 (sqrtm is timed with the default BLAS threads and with one thread; the faster counts);
  agreement = |difference| of the trace term and of FD.
- swd: artifix's SWD vs a plain numpy implementation of the same protocol (tests/test_metrics_swd.py:
  scipy.ndimage pyramid, flat-index gather, float64, np.sort along the sample axis) on the same images,
  patch centres and directions; agreement = |difference| of the value.
- features: EfficientNet-Lite0 extraction variants vs a naive eager loop (one image per forward, no BN
  folding, contiguous layout, torch.no_grad), each with 1 torch thread and with --threads; same images,
  same resize; throughput in images/s; agreement = max |feature diff| against the first naive run.
- fd bootstrap: seconds per replicate (d=1280) with the k x k Gram route vs recomputing the covariance.

Timings are wall-clock medians on whatever else runs on the machine: the load average is printed; ratios
come from the same run, measured alternately.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402

from artifix.example import scenes  # noqa: E402
from artifix.metrics import features as FE  # noqa: E402
from artifix.metrics.fd import FDReference, Moments, lapack_single_thread, trace_sqrt_product  # noqa: E402
from artifix.metrics.swd import swd as artifix_swd  # noqa: E402
from swd_numpy import swd_reference  # noqa: E402


def _timed(fn, repeats=1):
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def bench_frechet(d: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2 * d, d)) @ (rng.standard_normal((d, d)) / np.sqrt(d))
    y = 0.8 * rng.standard_normal((2 * d, d)) @ (rng.standard_normal((d, d)) / np.sqrt(d)) + 0.1
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    mu = x.mean(0) - y.mean(0)
    ours, t_ours = _timed(lambda: trace_sqrt_product(s1, s2), repeats)

    def sqrtm_trace():
        return float(np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2))))

    ref_default, t_default = _timed(sqrtm_trace, 1)
    with lapack_single_thread():
        ref_one, t_one = _timed(sqrtm_trace, 1)
    t_ref = min(t_default, t_one)
    base = mu @ mu + np.trace(s1) + np.trace(s2)
    return {"d": d, "artifix_s": t_ours, "sqrtm_s": t_ref, "sqrtm_default_threads_s": t_default,
            "sqrtm_one_thread_s": t_one, "speedup": t_ref / t_ours,
            "trace_abs_diff": abs(ours - ref_default), "trace": ours,
            "fd_abs_diff": abs((base - 2 * ours) - (base - 2 * ref_default)), "fd": base - 2 * ours}


def bench_swd(n: int, repeats: int) -> dict:
    a = scenes.render(1, 0, n).images
    b = scenes.render(2, 0, n).images
    ours, t_ours = _timed(lambda: artifix_swd(a, b, seed=0), repeats)
    (ref, _), t_ref = _timed(lambda: swd_reference(a, b, seed=0), repeats)
    return {"images": n, "size": list(a.shape[1:3]), "artifix_s": t_ours, "numpy_s": t_ref,
            "speedup": t_ref / t_ours, "value": ours["value"], "abs_diff": abs(ours["value"] - ref),
            "rel_diff": abs(ours["value"] - ref) / ref}


def bench_features(n: int, naive_n: int, thread_counts: list[int]) -> dict:
    imgs = scenes.render(1, 0, n).images
    auto = FE.get_extractor("effnet-lite0")  # the default feature_batch
    fast32 = FE.get_extractor("effnet-lite0", batch=32)
    plain = FE.get_extractor("effnet-lite0", batch=auto.batch, channels_last=False, fold_bn=False)
    cl_nofold = FE.get_extractor("effnet-lite0", batch=auto.batch, fold_bn=False)

    def naive(k):
        outs = []
        with torch.no_grad():
            for i in range(k):
                x = plain.preprocess(imgs[i : i + 1]).contiguous()
                outs.append(plain.net(x).numpy())
        return np.concatenate(outs)

    variants = {
        "naive eager, 1 image/forward": (naive, naive_n),
        "default batch, contiguous, BN unfolded": (lambda k: plain(imgs[:k]), n),
        "default batch, channels-last, BN unfolded": (lambda k: cl_nofold(imgs[:k]), n),
        "default batch, channels-last, BN folded (artifix)": (lambda k: auto(imgs[:k]), n),
        "batch 32, channels-last, BN folded": (lambda k: fast32(imgs[:k]), n),
    }
    default_threads = torch.get_num_threads()
    rows: dict[str, dict] = {}
    ref = None
    for th in thread_counts:
        torch.set_num_threads(th)
        for name, (fn, k) in variants.items():
            fn(2)  # warm-up
            f, t = _timed(lambda: fn(k), 1)
            if ref is None:
                ref = f
            rows[f"{name} [{th} thread{'s' if th > 1 else ''}]"] = {
                "threads": th, "images": k, "batch": auto.batch, "s": t, "images_per_s": k / t,
                "max_abs_diff": float(np.abs(f[: len(ref)] - ref[: len(f)]).max())}
    torch.set_num_threads(default_threads)
    naive_best = max(r["images_per_s"] for k, r in rows.items() if k.startswith("naive"))
    naive_default = rows[f"naive eager, 1 image/forward [{thread_counts[-1]} thread{'s' if thread_counts[-1] > 1 else ''}]"]["images_per_s"]
    for r in rows.values():
        r["speedup_vs_best_naive"] = r["images_per_s"] / naive_best
        r["speedup_vs_naive_same_threads"] = r["images_per_s"] / next(
            v["images_per_s"] for k, v in rows.items() if k.startswith("naive") and v["threads"] == r["threads"])
    best = max((r for k, r in rows.items() if "(artifix)" in k), key=lambda r: r["images_per_s"])
    return {"images": n, "naive_images": naive_n, "variants": rows, "naive_default_threads_images_per_s": naive_default,
            "speedup": best["images_per_s"] / naive_best}


def bench_bootstrap(n: int, d: int, reps: int) -> dict:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d)).astype(np.float32)
    r = rng.standard_normal((n, d))
    ref = FDReference.of(Moments.of(r))
    p = ref.prepare(x)
    counts = [np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(reps)]
    _, t_fast = _timed(lambda: [ref.weighted_distance(p, c) for c in counts], 1)

    def naive():
        out = []
        with lapack_single_thread():
            for c in counts:
                xs = np.repeat(x, c, axis=0).astype(np.float64)
                out.append(ref.distance(xs.mean(0), np.cov(xs, rowvar=False)))
        return out

    _, t_naive = _timed(naive, 1)
    return {"n": n, "d": d, "replicates": reps, "artifix_s_per_replicate": t_fast / reps,
            "naive_s_per_replicate": t_naive / reps, "speedup": t_naive / t_fast}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for extraction")
    args = ap.parse_args(argv)
    q = args.quick
    out = {"machine": {"cpus": os.cpu_count(), "torch_threads": args.threads,
                       "load_average_before": list(os.getloadavg())}}
    out["frechet"] = bench_frechet(1024 if q else 2048, 3)
    out["swd"] = bench_swd(128 if q else 512, 1 if q else 2)
    threads = sorted({1, args.threads})
    out["features"] = bench_features(16 if q else 48, 4 if q else 8, threads)
    out["bootstrap"] = bench_bootstrap(1000 if q else 2000, 1280, 5 if q else 10)
    out["machine"]["load_average_after"] = list(os.getloadavg())

    f, s, e, b = out["frechet"], out["swd"], out["features"], out["bootstrap"]
    lines = [
        f"machine: {os.cpu_count()} CPUs, torch threads {args.threads}, load average {out['machine']['load_average_before'][0]:.1f}"
        f" -> {out['machine']['load_average_after'][0]:.1f}",
        f"{'benchmark':<58}{'artifix':>10}{'baseline':>10}{'ratio':>8}  agreement",
        f"{'Frechet trace sqrt, d=%d (eigh+eigvalsh vs sqrtm)' % f['d']:<58}{f['artifix_s']:>9.2f}s{f['sqrtm_s']:>9.2f}s"
        f"{f['speedup']:>7.1f}x  |dTr|={f['trace_abs_diff']:.1e} (Tr={f['trace']:.1f}), |dFD|={f['fd_abs_diff']:.1e}",
        f"{'SWD, %d+%d images %dx%d (vs plain numpy)' % (s['images'], s['images'], *s['size']):<58}{s['artifix_s']:>9.2f}s"
        f"{s['numpy_s']:>9.2f}s{s['speedup']:>7.1f}x  |dSWD|={s['abs_diff']:.1e} (SWD={s['value']:.3f})",
    ]
    for name, row in e["variants"].items():
        lines.append(f"{'EffNet: %s' % name.replace('default batch', 'batch %d' % row['batch']):<58}{row['images_per_s']:>6.1f}i/s{'':>10}"
                     f"{row['speedup_vs_best_naive']:>7.1f}x  vs best naive; {row['speedup_vs_naive_same_threads']:.1f}x vs naive"
                     f" same threads; max|df|={row['max_abs_diff']:.1e}")
    lines.append(f"{'FD bootstrap replicate, n=%d d=%d (Gram vs recompute)' % (b['n'], b['d']):<58}"
                 f"{b['artifix_s_per_replicate']:>9.2f}s{b['naive_s_per_replicate']:>9.2f}s{b['speedup']:>7.1f}x")
    text = "\n".join(lines)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(out, indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
