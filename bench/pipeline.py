"""End-to-end rows of the benchmark: `artifix demo`, `artifix repair` at its defaults beside its floor, and the
scaling of `artifix score` and `artifix repair` in N (time and peak RSS), each in a fresh subprocess.

The floor of a repair is the work no implementation can skip: rendering its distinct image sets once (before, after
and random control on the random and the high-activation samples, plus the flagged samples, plus the reference scenes
that a cold cache must extract) and extracting their features once, measured in the same run on the same machine.
Not in the floor: loading, the export's verification, the high-activation selection (activations only), the
segmenter's collateral pass, the metrics' arithmetic and the bootstraps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

_CLI_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from artifix.cli.main import run
t = time.perf_counter()
code = run(sys.argv[2:])
dt = time.perf_counter() - t
with open("/proc/self/status") as fh:
    hwm = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM:"))
print(json.dumps({"exit_code": code, "seconds": dt, "peak_rss_mb": hwm / 2**20}))
"""

_FLOOR_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from artifix import progress
progress.QUIET = True
from artifix.model.generator import load_generator
from artifix.ledger import Ledger
from artifix.metrics import get_extractor
from artifix.repair import high_activation_samples
from artifix.model.trace import ablation
m = json.load(open(sys.argv[2]))
n, seed = int(m["metrics"]["n"]), int(m["metrics"]["seed"])
pool = int(sys.argv[3])
g = load_generator()
edits = {l: ablation(e["units"], e["alphas"]) for l, e in m["edits"].items()}
ctrl = {l: ablation(u) for l, u in m["random_control"].items()}
high = high_activation_samples(g, {l: e["units"] for l, e in m["edits"].items()}, seed, n, pool) if pool > n else None
flagged = [int(i) for i in json.loads(sys.argv[4])]
ex = get_extractor(None)
ex(np.zeros((2, 64, 64, 3), np.uint8))  # warm-up
led = Ledger(g, seed, disk=False)
t = time.perf_counter()
sets = [list(range(n))] + ([high] if high else []) + ([flagged] if flagged else [])
for ids in sets:
    for e in (None, edits, ctrl):
        led.images(e, ids)
from artifix.example import scenes
from artifix.example.model import REAL_SCENES_SEED
real = np.concatenate([b.images for b in scenes.stream(REAL_SCENES_SEED, n, 256)])  # the reference: a cold cache extracts it
t_render = time.perf_counter() - t
for ids in sets:
    for e in (None, edits, ctrl):
        led.features(e, ids, ex)
ex(real)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "render_s": t_render, "features_s": dt - t_render, "images": led.renders + len(real)}))
"""


def _child(code: str, args: list[str], env: dict[str, str] | None = None, timeout: int = 3600) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"benchmark child {args[:3]} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(argv: list[str], cache: str) -> dict[str, Any]:
    """One artifix command in a fresh process: exit code, wall seconds, peak RSS."""
    return _child(_CLI_CHILD, argv, env={"ARTIFIX_CACHE": cache})


def bench_demo(quick: bool) -> dict[str, Any]:
    """`artifix demo` wall time with a cold cache (quick: not run, the demo has no small mode)."""
    with tempfile.TemporaryDirectory() as tmp:
        r = run_cli(["demo", "--quiet", "--out", str(Path(tmp) / "demo")], str(Path(tmp) / "cache"))  # a cold cache
    return {**r, "aim_s": 90.0}


def bench_repair(quick: bool) -> dict[str, Any]:
    """`artifix repair` on the bundled example at its defaults (quick: --repair-n 64) beside its floor."""
    extra = ["--repair-n", "64"] if quick else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rep"
        argv = ["repair", "--quiet", "--out", str(out), "--store", str(Path(tmp) / "labels.sqlite"), *extra]
        r = run_cli(argv, str(Path(tmp) / "cache"))  # a cold cache: nothing from an earlier run
        m = json.loads((out / "manifest.json").read_text())
        n = int(m["metrics"]["n"])
        flagged = _bundled_flagged() if m["metrics"].get("artifact_rate_flagged") else []
        floor = _child(_FLOOR_CHILD, [str(out / "manifest.json"), str(4 * n), json.dumps(flagged)])
    return {**r, "n": n, "floor_s": floor["seconds"], "floor": floor, "ratio": r["seconds"] / floor["seconds"],
            "ledger": m["metrics"].get("ledger"), "aim_s": 120.0, "aim_ratio": 1.5}


def _bundled_flagged() -> list[int]:
    """The samples the bundled review flagged as artifacts (what repair measures the flagged artifact rate on)."""
    import csv

    with open(ROOT / "data" / "example" / "review" / "flags.csv", newline="") as fh:
        return [int(r["sample"]) for r in csv.DictReader(fh) if r["label"] == "artifact"]


def bench_scaling_cli(ns: list[int], repair_ns: list[int]) -> dict[str, Any]:
    """`artifix score --stats-n N` and `artifix repair --repair-n N` in fresh processes, each with a cold cache of its own
    (a shared one hands later rows the statistics and before sets of earlier ones): time and peak RSS."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in ns:
            r = run_cli(["score", "--quiet", "--stats-n", str(n), "--out", str(Path(tmp) / f"score{n}"),
                         "--store", str(Path(tmp) / f"s{n}.sqlite")], str(Path(tmp) / f"cache-score{n}"))
            rows.append({"command": "score", "n": n, **r})
        for n in repair_ns:
            r = run_cli(["repair", "--quiet", "--repair-n", str(n), "--out", str(Path(tmp) / f"rep{n}"),
                         "--store", str(Path(tmp) / f"r{n}.sqlite")], str(Path(tmp) / f"cache-repair{n}"))
            rows.append({"command": "repair", "n": n, **r})
    return {"rows": rows}
