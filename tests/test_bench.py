"""The benchmark suite runs end to end in quick mode and its agreement figures hold (timings are not checked)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_runs_and_agrees(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rows = "recording,frechet,swd,features,causal,scaling"  # the command rows (repair, demo, scaling_cli) cost minutes
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--only", rows, "--threads", "1", "--out", str(out),
                           "--json"], capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert json.loads(out.read_text())["quick"] is True
    for name in ("recording", "frechet", "swd", "features", "causal"):
        assert math.isfinite(res[name]["ratio"]) and res[name]["ratio"] > 0, name
        assert "aim" in proc.stderr and name in res
    assert res["recording"]["recorded"] == res["recording"]["n"]
    # agreement: the fast paths compute the same numbers as the baselines
    assert res["frechet"]["fd_rel_diff"] < 1e-6 and set(res["frechet"]["regimes"]) == {"n_ge_d", "n_lt_d"}
    assert res["swd"]["rel_diff"] < 1e-5
    assert res["features"]["max_abs_diff"] < 1e-3
    c = res["causal"]
    assert c["max_abs_diff_exact"] == 0.0  # the fast path's exact ablations are the full scan's, unit for unit
    assert len(c["top_exact"]) == len(c["top_fast"]) == c["top"] and 0.0 <= c["overlap"] <= 1.0
    assert c["units"] == 128 and -1.0 <= c["spearman_first_order_vs_exact"] <= 1.0
    rows = res["scaling"]["rows"]
    assert [r["n"] for r in rows] == [100, 300, 100, 300] and all(r["recorded"] == r["n"] and r["peak_rss_mb"] > 0 for r in rows)


def test_repair_floor_child_runs(tmp_path):
    """The repair row's floor (bench/pipeline.py's child process) renders and extracts a small manifest's sets."""
    sys.path.insert(0, str(ROOT / "bench"))
    import pipeline

    manifest = {"metrics": {"n": 4, "seed": 0}, "edits": {"main.8": {"units": [1, 2], "alphas": [1.0, 1.0]}},
                "random_control": {"main.8": [3, 4]}}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    floor = pipeline._child(pipeline._FLOOR_CHILD, [str(path), "16", json.dumps([5, 6])])
    # before / repair / control on the random, high-activation and flagged samples, plus the 4 reference scenes
    assert floor["images"] == 3 * (4 + 4 + 2) + 4 and floor["seconds"] > 0
