"""artifix benchmark suite: every figure a ratio of two implementations measured side by side in one run.

    python bench/run_all.py                  # full sizes (about 10-20 minutes on 2 busy cores); writes bench/results.json
    python bench/run_all.py --quick          # small sizes (about a minute): a smoke test of the whole suite
    python bench/run_all.py --only frechet,swd --out /tmp/r.json

Rows (the aims are issue 9's):
- recording: sampling + recording per-unit statistics (UnitStats at the example's main.8) vs the bare generator
  forward with the same latents, NaN/Inf check of the images and uint8 conversion (`sample_batches`); aim <= 1.15x.
  The figure is the median of the per-round ratios (at least 15 alternating rounds).
- frechet: Tr((S1 S2)^1/2) by Cholesky + eigenvalues (artifix.metrics.fd) vs trace(scipy.linalg.sqrtm(S1 @ S2)) at
  d = 2048 (sqrtm with the default BLAS threads); aim >= 10x, agreement 1e-6 (|dFD| and relative).
- swd: artifix's SWD vs the plain numpy version of the same protocol in tests/test_metrics_swd.py (float64,
  np.sort along the sample axis), same images, patch centres and directions; aim >= 5x.
- features: EfficientNet-Lite0 features, artifix's extractor (batched, channels-last, BN folded, 1x1 convolutions as
  GEMMs, inference mode) vs a naive eager loop (one image per forward, BN unfolded, contiguous layout, no_grad),
  each with 1 torch thread and with torch's default thread count; aim >= 1.5x.
- causal: scan of every unit of a layer (the example's main.2, 256 units) for its effect on a differentiable image
  score: first-order (gradient x activation) pre-ranking + exact ablation of the top k vs exact ablation of all units;
  aim >= 10x with >= 90 % overlap of the top-20 sets.
- scaling: the streaming statistics pipeline (sample to main.8, UnitStats) for N = 1k, 5k, 20k, each in a fresh
  subprocess: wall time and peak RSS (memory must stay flat in N).

Timings are wall-clock medians of rounds in which the two sides alternate; the load average before and after is
recorded, because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

BENCHES = ("recording", "frechet", "swd", "features", "causal", "scaling", "repair", "demo", "scaling_cli")
AIMS = {"recording": ("<=", 1.15), "frechet": (">=", 10.0), "swd": (">=", 5.0), "features": (">=", 1.5),
        "causal": (">=", 10.0)}


def _clock(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def alternate(a: Callable[[], Any], b: Callable[[], Any], rounds: int) -> tuple[Any, Any, list[float], list[float]]:
    """Run a and b alternately `rounds` times (a first in even rounds, b first in odd ones); their outputs and times."""
    ta, tb, out_a, out_b = [], [], None, None
    for r in range(rounds):
        order = ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta))
        for fn, times in order:
            out, dt = _clock(fn)
            times.append(dt)
            if fn is a:
                out_a = out
            else:
                out_b = out
    return out_a, out_b, ta, tb


# ------------------------------------------------------------------------------------------------ recording


def bench_recording(n: int, batch: int, rounds: int) -> dict:
    """Sampling + per-unit statistics at main.8 vs bare sampling (latents, G forward, uint8), same seeds."""
    from artifix.model.generator import load_generator, sample_batches
    from artifix.units.scoring import trace_batches
    from artifix.units.stats import UnitStats

    g = load_generator()
    layer = "main.8"

    def bare():
        for _ in sample_batches(g, 0, 0, n, batch):
            pass

    def record():
        stats = None
        for part, acts, imgs in trace_batches(g, layer, 0, range(n), batch, images=True):
            if stats is None:
                stats = UnitStats(layer, acts.shape[1], n)
            stats.update(acts, part)
        return stats

    bare(), record()  # warm-up
    _, stats, t_bare, t_rec = alternate(bare, record, rounds)
    mb, mr = statistics.median(t_bare), statistics.median(t_rec)
    per_round = [r / b for r, b in zip(t_rec, t_bare)]
    # the figure is the median of the per-round ratios: rounds drift together on a shared machine, so each round's
    # ratio cancels the drift that a ratio of the two medians keeps
    return {"n": n, "batch": batch, "layer": layer, "rounds": rounds, "bare_s": mb, "record_s": mr,
            "bare_s_all": t_bare, "record_s_all": t_rec, "ratio": statistics.median(per_round),
            "ratio_of_medians": mr / mb, "recorded": stats.num_recorded, "ratio_per_round": per_round}


# ------------------------------------------------------------------------------------------------ frechet


def bench_frechet(d: int, rounds: int, n_small: int) -> dict:
    """FD at dimension d in both regimes vs trace(scipy.linalg.sqrtm(S1 @ S2)) on the same covariances.

    N >= d (2d samples per set): the d x d route (Cholesky + one symmetric eigenvalue problem), from the statistics.
    N < d (n_small samples per set): the n x n nuclear norm of the centred cross product (`fd_features`).
    sqrtm counts at its faster setting: the default BLAS threads or one thread (threads collapse on busy cores).
    """
    import scipy.linalg

    from artifix.metrics.fd import fd_features, frechet_distance, lapack_single_thread

    rng = np.random.default_rng(0)
    mix1, mix2 = rng.standard_normal((d, d)) / np.sqrt(d), rng.standard_normal((d, d)) / np.sqrt(d)
    rows = {}
    for regime, n in (("n_ge_d", 2 * d), ("n_lt_d", n_small)):
        x = rng.standard_normal((n, d)) @ mix1
        y = 0.8 * rng.standard_normal((n, d)) @ mix2 + 0.1
        s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        mu = x.mean(0) - y.mean(0)
        base = float(mu @ mu + np.trace(s1) + np.trace(s2))

        def sqrtm_fd():
            return base - 2 * float(np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2))))

        def sqrtm_one_thread():
            with lapack_single_thread():
                return sqrtm_fd()

        if regime == "n_ge_d":
            ours_fn = lambda: frechet_distance(x.mean(0), s1, y.mean(0), s2)  # noqa: E731
        else:
            ours_fn = lambda: fd_features(x, y)  # noqa: E731
        ours, ref, t_ours, t_ref = alternate(ours_fn, sqrtm_fd, rounds)
        _, _, t_ours1, t_ref1 = alternate(ours_fn, sqrtm_one_thread, 1)
        t_all = t_ours + t_ours1
        sq = min(statistics.median(t_ref), statistics.median(t_ref1))
        rows[regime] = {"n": n, "artifix_s": statistics.median(t_all), "sqrtm_s": sq, "artifix_s_all": t_all,
                        "sqrtm_default_threads_s_all": t_ref, "sqrtm_one_thread_s_all": t_ref1,
                        "ratio": sq / statistics.median(t_all), "fd": ours, "fd_abs_diff": abs(ours - ref),
                        "fd_rel_diff": abs(ours - ref) / abs(ref)}
    worst = min(rows.values(), key=lambda r: r["ratio"])
    return {"d": d, "rounds": rounds, "regimes": rows, "ratio": worst["ratio"],
            "fd_rel_diff": max(r["fd_rel_diff"] for r in rows.values())}


# ------------------------------------------------------------------------------------------------ swd


def bench_swd(n: int, rounds: int) -> dict:
    """artifix SWD vs the plain numpy reference implementation, same images and seeds."""
    from artifix.example import scenes
    from artifix.metrics.swd import swd
    from swd_numpy import swd_reference

    a = scenes.render(1, 0, n).images
    b = scenes.render(2, 0, n).images
    ours, ref, t_ours, t_ref = alternate(lambda: swd(a, b, seed=0)["value"], lambda: swd_reference(a, b, seed=0)[0], rounds)
    return {"images": n, "size": list(a.shape[1:3]), "rounds": rounds, "artifix_s": statistics.median(t_ours),
            "numpy_s": statistics.median(t_ref), "artifix_s_all": t_ours, "numpy_s_all": t_ref,
            "ratio": statistics.median(t_ref) / statistics.median(t_ours), "value": ours, "abs_diff": abs(ours - ref),
            "rel_diff": abs(ours - ref) / abs(ref)}


# ------------------------------------------------------------------------------------------------ features


def bench_features(n: int, rounds: int) -> dict:
    """EfficientNet-Lite0 features: artifix's extractor vs a naive eager loop, at 1 thread and torch's default."""
    from artifix.example import scenes
    from artifix.metrics import features as FE

    imgs = scenes.render(1, 0, n).images
    fast = FE.get_extractor("effnet-lite0")
    plain = FE.get_extractor("effnet-lite0", batch=1, channels_last=False, fold_bn=False)

    def naive():
        outs = []
        with torch.no_grad():
            for i in range(n):
                outs.append(plain.net(plain.preprocess(imgs[i:i + 1]).contiguous()).numpy())
        return np.concatenate(outs)

    default_threads = torch.get_num_threads()
    rows = {}
    try:
        for th in sorted({1, default_threads}):
            torch.set_num_threads(th)
            naive(), fast(imgs[:fast.batch])  # warm-up
            f_naive, f_fast, t_naive, t_fast = alternate(naive, lambda: fast(imgs), rounds)
            rows[str(th)] = {"threads": th, "naive_img_s": n / statistics.median(t_naive),
                             "artifix_img_s": n / statistics.median(t_fast), "naive_s_all": t_naive, "artifix_s_all": t_fast,
                             "ratio": statistics.median(t_naive) / statistics.median(t_fast),
                             "max_abs_diff": float(np.abs(f_naive - f_fast).max()),
                             "max_abs_feature": float(np.abs(f_naive).max())}
    finally:
        torch.set_num_threads(default_threads)
    best_fast = max(r["artifix_img_s"] for r in rows.values())
    naive_default = rows[str(default_threads)]["naive_img_s"]
    return {"images": n, "batch": fast.batch, "rounds": rounds, "default_threads": default_threads, "by_threads": rows,
            "ratio": best_fast / naive_default, "ratio_same_threads": {k: r["ratio"] for k, r in rows.items()},
            "max_abs_diff": max(r["max_abs_diff"] for r in rows.values())}


# ------------------------------------------------------------------------------------------------ causal scan


def magenta_score(out: torch.Tensor) -> torch.Tensor:
    """A differentiable per-sample image score: mean magenta excess relu((R + B) / 2 - G) of G's output in [-1, 1]."""
    return torch.relu((out[:, 0] + out[:, 2]) * 0.5 - out[:, 1]).mean((1, 2))


def bench_causal(layer: str, n: int, k: int, top: int, rounds: int) -> dict:
    """Top-`top` units by score drop: first-order pre-ranking + exact ablation of k units vs exact ablation of all."""
    from artifix.model.generator import forward, latents, load_generator
    from artifix.units.scoring import first_order_effect
    from artifix.model.trace import Trace, ablation, get_layer

    g = load_generator()
    idx = list(range(n))
    z, y = latents(g.spec, 0, idx)
    with torch.inference_mode():
        base = magenta_score(forward(g, z, y).float()).mean().item()
    with torch.inference_mode(), Trace(g.module, layer) as t:
        forward(g, z, y)
    channels = t[layer].shape[1]
    get_layer(g.module, layer)

    def exact(units):
        change = {}
        for u in units:
            with torch.inference_mode(), Trace(g.module, edit={layer: ablation([int(u)])}):
                change[int(u)] = magenta_score(forward(g, z, y).float()).mean().item() - base
        return change  # score change from ablating the unit (negative: the score drops)

    def full():
        ch = exact(range(channels))
        return ch, sorted(ch, key=lambda u: (ch[u], u))[:top]

    def fast():
        fo = first_order_effect(g, layer, 0, idx, magenta_score, batch=64)  # first-order estimate of the same change
        cand = [int(u) for u in torch.argsort(fo, stable=True)[:k]]
        ch = exact(cand)
        return ch, sorted(ch, key=lambda u: (ch[u], u))[:top], fo

    (ch_all, truth), (ch_k, found, fo), t_all, t_fast = alternate(full, fast, rounds)
    rank_corr = float(np.corrcoef(np.argsort(np.argsort(fo.numpy())), np.argsort(np.argsort([ch_all[u] for u in range(channels)])))[0, 1])
    return {"layer": layer, "units": channels, "samples": n, "k": k, "top": top, "rounds": rounds,
            "exact_all_s": statistics.median(t_all), "fast_s": statistics.median(t_fast), "exact_all_s_all": t_all,
            "fast_s_all": t_fast, "ratio": statistics.median(t_all) / statistics.median(t_fast),
            "overlap": len(set(truth) & set(found)) / top, "spearman_first_order_vs_exact": rank_corr,
            "top_exact": truth, "top_fast": found,
            "max_abs_diff_exact": max(abs(ch_k[u] - ch_all[u]) for u in ch_k)}


# ------------------------------------------------------------------------------------------------ scaling

_SCALING_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[3])
import torch
torch.set_num_threads(int(sys.argv[2]))
from artifix.model.generator import load_generator
from artifix.units.scoring import collect_stats
from artifix import progress
progress.QUIET = True

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def hwm():
    # this process's peak RSS (VmHWM; unlike ru_maxrss it is not inherited from the parent across exec)
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM:"))

n = int(sys.argv[1])
g = load_generator()
collect_stats(g, "main.8", 0, 64)  # warm-up: allocator pools and kernels
base = rss()
peak_load = hwm()
try:  # reset the peak so that it covers the N-sample pass only
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    reset = True
except OSError:
    reset = False
t = time.perf_counter()
s = collect_stats(g, "main.8", 0, n)
dt = time.perf_counter() - t
fr = float(s.firing_rate().mean())
print(json.dumps({"n": n, "seconds": dt, "samples_per_s": n / dt, "rss_before_mb": base / 2**20,
                  "peak_rss_mb": hwm() / 2**20, "peak_rss_covers": "the pass" if reset else "the process",
                  "peak_rss_loading_mb": peak_load / 2**20,
                  "rss_after_mb": rss() / 2**20, "recorded": s.num_recorded, "mean_firing_rate": fr,
                  "per_sample_table_mb": 2 * n * s.channels * 4 / 2**20}))
"""


def bench_scaling(ns: list[int], threads: int) -> dict:
    """Streaming statistics of main.8 for each N in a fresh subprocess: time and peak RSS.

    Each N runs twice: with glibc's default allocator settings, and with MALLOC_MMAP_THRESHOLD_=65536 (blocks of 64 KiB
    and more are mapped and returned at once), which separates heap fragmentation from memory the statistics hold.
    """
    rows = []
    for malloc in ("default", "mmap64k"):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if malloc == "mmap64k":
            env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        for n in ns:
            proc = subprocess.run([sys.executable, "-c", _SCALING_CHILD, str(n), str(threads), str(ROOT)],
                                  capture_output=True, text=True, timeout=3600, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"scaling run for N={n} failed: {proc.stderr[-2000:]}")
            rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "malloc": malloc})
    peaks = [r["peak_rss_mb"] for r in rows if r["malloc"] == "default"]
    d = [r for r in rows if r["malloc"] == "default"]
    return {"pipeline": "sample to main.8 (forward stops there) + UnitStats (quantile sketch, moments, per-sample max/mean)",
            "threads": threads, "rows": rows, "peak_rss_growth_mb": peaks[-1] - peaks[0],
            "time_per_sample_ratio_last_first": (d[-1]["seconds"] / d[-1]["n"]) / (d[0]["seconds"] / d[0]["n"])}


# ------------------------------------------------------------------------------------------------ main


def _verdict(name: str, ratio: float) -> str:
    op, aim = AIMS[name]
    ok = ratio <= aim if op == "<=" else ratio >= aim
    return f"aim {op} {aim:g}x: {'met' if ok else 'NOT met'}"


def table(res: dict) -> str:
    """The human-readable table of ratios."""
    m = res["machine"]
    lines = [f"machine: {m['cpus']} CPUs, torch threads {m['torch_threads']}, load average {m['load_before'][0]:.1f} -> "
             f"{m['load_after'][0]:.1f}; {'quick' if res['quick'] else 'full'} sizes", ""]
    lines.append(f"{'benchmark':<64}{'artifix':>11}{'baseline':>11}{'ratio':>8}  agreement / aim")
    if "recording" in res:
        r = res["recording"]
        lines.append(f"{'sampling + unit stats at main.8 vs bare forward, N=%d' % r['n']:<64}{r['record_s']:>10.2f}s"
                     f"{r['bare_s']:>10.2f}s{r['ratio']:>7.2f}x  {_verdict('recording', r['ratio'])}")
    if "frechet" in res:
        r = res["frechet"]
        for regime, row in r["regimes"].items():
            how = "Cholesky+eigvalsh" if regime == "n_ge_d" else "n x n nuclear norm"
            label = f"Frechet, d={r['d']}, N={row['n']} ({how}) vs scipy sqrtm"
            lines.append(f"{label:<64}{row['artifix_s']:>10.2f}s{row['sqrtm_s']:>10.2f}s{row['ratio']:>7.1f}x  "
                         f"|dFD| {row['fd_abs_diff']:.1e} (rel {row['fd_rel_diff']:.1e}); {_verdict('frechet', row['ratio'])}")
    if "swd" in res:
        r = res["swd"]
        lines.append(f"{'SWD, %d+%d images %dx%d, vs plain numpy' % (r['images'], r['images'], *r['size']):<64}"
                     f"{r['artifix_s']:>10.2f}s{r['numpy_s']:>10.2f}s{r['ratio']:>7.1f}x  |dSWD| {r['abs_diff']:.1e} "
                     f"(rel {r['rel_diff']:.1e}); {_verdict('swd', r['ratio'])}")
    if "features" in res:
        r = res["features"]
        for th, row in r["by_threads"].items():
            lines.append(f"{'EffNet-Lite0 features, %d images, %s thread(s), vs naive loop' % (r['images'], th):<64}"
                         f"{row['artifix_img_s']:>7.1f}i/s{row['naive_img_s']:>7.1f}i/s{row['ratio']:>7.2f}x  max|df| {row['max_abs_diff']:.1e}")
        lines.append(f"{'EffNet-Lite0 features: best artifix vs naive at default threads':<64}{'':>22}{r['ratio']:>7.2f}x  "
                     f"{_verdict('features', r['ratio'])}")
    if "causal" in res:
        r = res["causal"]
        lines.append(f"{'causal scan of %s (%d units, %d samples): 1st order + top %d exact' % (r['layer'], r['units'], r['samples'], r['k']):<64}"
                     f"{r['fast_s']:>10.2f}s{r['exact_all_s']:>10.2f}s{r['ratio']:>7.1f}x  top-{r['top']} overlap "
                     f"{r['overlap']:.0%}; {_verdict('causal', r['ratio'])}")
    if "scaling" in res:
        r = res["scaling"]
        lines.append("")
        lines.append(f"scaling ({r['pipeline']}; {r['threads']} thread(s)):")
        lines.append(f"{'malloc':>8}{'N':>8}{'seconds':>10}{'samples/s':>11}{'peak RSS MB':>13}{'RSS before MB':>15}"
                     f"{'per-sample table MB':>21}")
        for row in r["rows"]:
            lines.append(f"{row['malloc']:>8}{row['n']:>8}{row['seconds']:>10.1f}{row['samples_per_s']:>11.0f}{row['peak_rss_mb']:>13.0f}"
                         f"{row['rss_before_mb']:>15.0f}{row['per_sample_table_mb']:>21.1f}")
    lines += _pipeline_lines(res)
    return "\n".join(lines)


def _pipeline_lines(res: dict) -> list[str]:
    """Table rows of the end-to-end benchmarks (bench/pipeline.py)."""
    lines = []
    if "repair" in res:
        r = res["repair"]
        ok = "met" if r["seconds"] <= r["aim_s"] else "NOT met"
        lines += ["", f"{'artifix repair on the example, repair_n=%d (cold cache)' % r['n']:<64}{r['seconds']:>10.1f}s"
                  f"{r['floor_s']:>10.1f}s{r['ratio']:>7.2f}x  vs its floor (render each set once + features once: "
                  f"{r['floor']['images']} images); aim <= {r['aim_s']:.0f} s: {ok}, <= {r['aim_ratio']}x floor: "
                  f"{'met' if r['ratio'] <= r['aim_ratio'] else 'NOT met'}; peak RSS {r['peak_rss_mb']:.0f} MB"]
    if "demo" in res:
        r = res["demo"]
        lines.append(f"{'artifix demo (wall time)':<64}{r['seconds']:>10.1f}s{'':>19}  aim <= {r['aim_s']:.0f} s: "
                     f"{'met' if r['seconds'] <= r['aim_s'] else 'NOT met'}; peak RSS {r['peak_rss_mb']:.0f} MB")
    if "scaling_cli" in res:
        lines += ["", "scaling of the commands (fresh process each):", f"{'command':>10}{'N':>8}{'seconds':>10}{'peak RSS MB':>13}"]
        for row in res["scaling_cli"]["rows"]:
            lines.append(f"{row['command']:>10}{row['n']:>8}{row['seconds']:>10.1f}{row['peak_rss_mb']:>13.0f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test; ratios are not meaningful)")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated benchmarks: " + ", ".join(BENCHES))
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds per comparison (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=None, help="JSON results file (default bench/results.json; quick: none)")
    ap.add_argument("--json", action="store_true", help="print the JSON results on stdout (the table goes to stderr)")
    ap.add_argument("--score-ns", default="1000,5000,20000", help="N of the score scaling rows")
    ap.add_argument("--repair-ns", default="250,500,1000", help="N of the repair scaling rows (20000 takes hours on 2 cores)")
    args = ap.parse_args(argv)
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    bad = [b for b in only if b not in BENCHES]
    if bad:
        ap.error(f"unknown benchmark {bad[0]!r}; choose from {', '.join(BENCHES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from artifix.model import devices

    devices.tune_allocator()  # as every artifix command does (devices.use): the in-process rows run as the CLI would
    q = args.quick
    rounds = args.rounds or (1 if q else 3)
    res: dict[str, Any] = {"quick": q, "rounds": rounds,
                           "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                       "load_before": list(os.getloadavg()), "torch": torch.__version__,
                                       "numpy": np.__version__}}
    t0 = time.perf_counter()
    if "recording" in only:
        res["recording"] = bench_recording(128 if q else 2048, 64, rounds if q else max(rounds, 15))
    if "frechet" in only:
        res["frechet"] = bench_frechet(256 if q else 2048, min(rounds, 2), 100 if q else 1000)  # one sqrtm at d=2048: 10-150 s
    if "swd" in only:
        res["swd"] = bench_swd(32 if q else 512, rounds)
    if "features" in only:
        res["features"] = bench_features(8 if q else 64, rounds)
    if "causal" in only:
        res["causal"] = bench_causal("main.5" if q else "main.2", 16 if q else 64, 4 if q else 20, 4 if q else 20, rounds)
    if "scaling" in only:
        res["scaling"] = bench_scaling([100, 300] if q else [1000, 5000, 20000], torch.get_num_threads())
    import pipeline  # bench/pipeline.py: the end-to-end rows

    if "repair" in only:
        res["repair"] = pipeline.bench_repair(q)
    if "demo" in only and not q:  # the demo has no small mode; --quick skips it
        res["demo"] = pipeline.bench_demo(q)
    if "scaling_cli" in only:
        ns = [100, 300] if q else [int(v) for v in args.score_ns.split(",")]
        rns = [32, 64] if q else [int(v) for v in args.repair_ns.split(",")]
        res["scaling_cli"] = pipeline.bench_scaling_cli(ns, rns)
    res["machine"]["load_after"] = list(os.getloadavg())
    res["seconds"] = time.perf_counter() - t0
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = table(res)
    out = args.out or (None if q else str(ROOT / "bench" / "results.json"))
    if out:
        from artifix.io import write_json_atomic

        write_json_atomic(out, res)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(res, indent=2, default=str))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
