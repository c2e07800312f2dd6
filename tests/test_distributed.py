"""Scale-out: `torchrun --nproc_per_node=2 -m artifix <command>` (2 CPU processes, gloo) gives the 1-process result.

Each command runs as a real subprocess, once as `python -m artifix` and once under torchrun with two ranks, both
with OMP_NUM_THREADS=1 and the worktree on PYTHONPATH; the JSON results must agree within float tolerance:
sampling statistics (`stats`), unit scores (`score`: IoU@IQR tallies, AUC, exact ablations split between ranks,
label-free priors from the merged statistics) and metrics (`metrics`: FD / KID / SWD and their intervals). A small
script checks the library pieces the CLI run does not reach without a classifier (first-order effects).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from artifix import dist

ROOT = Path(__file__).resolve().parent.parent
GEN = ["--generator", "artifix.example:make_generator"]


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), ARTIFIX_CACHE=str(cache))
    return env


def _run(cmd: list[str], cwd: Path, cache: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stdout


def one_process(args: list[str], cwd: Path, cache: Path) -> dict:
    """`python -m artifix ARGS --json` -> the parsed result."""
    return json.loads(_run([sys.executable, "-m", "artifix", *args, "--json"], cwd, cache))


def two_processes(args: list[str], cwd: Path, cache: Path) -> dict:
    """`torchrun --nproc_per_node=2 --standalone -m artifix ARGS --json` -> rank 0's parsed result."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "artifix", *args, "--json"]
    return json.loads(_run(cmd, cwd, cache))


def assert_close(a, b, rel=1e-6, path="result"):
    """Same structure; equal ints/strings; floats within rel (relative to max(1, |a|)); NaN matches NaN."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ"
        for k in a:
            assert_close(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, rel, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if math.isnan(a):
            assert math.isnan(b), f"{path}: {a} vs {b}"
        else:
            assert abs(a - b) <= rel * max(1.0, abs(a)), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def test_blocks_cover_the_samples_in_order():
    for n in (0, 1, 5, 64, 1001):
        for w in (1, 2, 3, 7):
            blocks = [dist.block(n, r, w) for r in range(w)]
            assert [off for off, _ in blocks] == [sum(c for _, c in blocks[:r]) for r in range(w)]
            assert sum(c for _, c in blocks) == n and max(c for _, c in blocks) - min(c for _, c in blocks) <= 1
    assert dist.shard(list(range(10))) == list(range(10)) and not dist.active()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A planted-defect checkpoint and a store holding a reviewer's flags and painted masks."""
    from artifix.example.model import CHECKPOINT
    from artifix.model.generator import load_generator
    from artifix.example.planted import plant_defects, simulate_reviewer
    from tests.conftest import run_cli

    d = tmp_path_factory.mktemp("dist")
    g = load_generator()
    bad = plant_defects(g, [5, 17, 40])
    ck = torch.load(CHECKPOINT, weights_only=True)
    ck["netG_state_dict"] = bad.module.state_dict()
    torch.save(ck, d / "planted.pt")
    review = simulate_reviewer(g, bad, seed=0, n_scan=200, n_flag=12, n_clean=12)
    rows = ["sample,label,reviewer"] + [f"{i},artifact,alice" for i in review.artifact] + [f"{i},clean,alice" for i in review.clean]
    (d / "labels" / "masks").mkdir(parents=True)
    (d / "labels" / "flags.csv").write_text("\n".join(rows) + "\n")
    for i, m in list(review.masks.items())[:8]:
        Image.fromarray(m.astype(np.uint8) * 255).save(d / "labels" / "masks" / f"{i}_alice.png")
    for store in ("s1.sqlite", "s2.sqlite"):  # one store per run: `score` records its proposals
        code, _, err = run_cli("flags", "import", str(d / "labels"), *GEN, "--checkpoint", str(d / "planted.pt"),
                               "--store", str(d / store), cwd=d)
        assert code == 0, err
    return d


def test_stats_two_ranks_equal_one_process(project):
    args = ["stats", *GEN, "--checkpoint", "planted.pt", "--stats-n", "150", "--batch", "32", "--top", "5"]
    one = one_process(args, project, project / "cache1")
    two = two_processes(args, project, project / "cache2")
    assert one.pop("ranks") == 1 and two.pop("ranks") == 2
    assert_close(one, two, rel=1e-9)  # sketch quantiles, min/max, firing rates and top-k exactly; moments to rounding
    assert len(one["units"]) == 64 and one["units"][0]["count"] == 150 * 16 * 16


def test_score_two_ranks_equal_one_process(project):
    args = [*GEN, "--checkpoint", "planted.pt", "--stats-n", "120", "--exact-top", "6", "--top", "64"]
    one = one_process(["score", *args, "--store", "s1.sqlite", "--out", "o1"], project, project / "cache1")
    two = two_processes(["score", *args, "--store", "s2.sqlite", "--out", "o2"], project, project / "cache2")
    assert one["components"] == ["auc", "causal", "iou"] and one["n_masks"] == 8
    for res in (one, two):
        res.pop("cards")
    assert [r["unit"] for r in one["top"]] == [r["unit"] for r in two["top"]]
    assert_close(one, two, rel=1e-6)
    assert sum(r["causal"] is not None for r in two["top"]) == 6  # ablations split 3 + 3 and gathered
    assert (project / "o2" / "unit_scores.csv").read_text() == (project / "o1" / "unit_scores.csv").read_text()


def test_metrics_two_ranks_equal_one_process(project):
    # torchrun's own parser takes '--n' for an abbreviation of its options, so the sample count comes from the config
    (project / "m.toml").write_text("[metrics]\nn = 48\n")
    args = ["metrics", "--config", "m.toml", "--swd-n", "40", "--bootstrap", "20", "--swd-bootstrap", "4",
            "--kid-subsets", "10", "--kid-subset-size", "24", "--feature-batch", "8"]
    cache = project / "metrics-cache"  # the reference statistics are not sharded: both runs may share them
    one = one_process(args, project, cache)
    two = two_processes(args, project, cache)
    assert sorted(one["metrics"]) == ["fd_effnetl0_48", "kid_effnetl0_48", "swd_40"]
    assert_close(one, two, rel=1e-6)


SCRIPT = r'''
import sys, torch
from artifix import dist
from artifix.model.generator import load_generator
from artifix.units.scoring import exact_effect, first_order_effect, iou_iqr
dist.init()
torch.manual_seed(0)
g = load_generator()
fo = first_order_effect(g, "main.8", 0, list(range(3, 40)), lambda out: out[:, 0].mean((1, 2)), batch=8)
ex = exact_effect(g, "main.8", 0, [1, 2, 3], [4, 5], [0, 7, 9, 11, 20], None,
                  masks={1: torch.rand(64, 64).numpy() > 0.7, 3: torch.rand(64, 64).numpy() > 0.9})
acts = torch.rand(37, 6, 8, 8)
masks = torch.rand(37, 64, 64) > 0.8
res = iou_iqr(acts, masks, torch.linspace(0.05, 0.95, 9).repeat(6, 1), chunk=4)
if dist.is_main():
    torch.save({"fo": fo, "ex": torch.tensor(ex.to_numpy(float)), "cols": list(ex.columns),
                "iou": res.iou, "iqr": res.iqr, "thr": res.threshold, "world": dist.world_size()}, sys.argv[1])
dist.shutdown()
'''


def test_library_pieces_two_ranks_equal_one_process(tmp_path):
    script = tmp_path / "pieces.py"
    script.write_text(SCRIPT)
    _run([sys.executable, str(script), str(tmp_path / "one.pt")], tmp_path, tmp_path / "cache")
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script),
          str(tmp_path / "two.pt")], tmp_path, tmp_path / "cache")
    one, two = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "two.pt"))
    assert one["world"] == 1 and two["world"] == 2
    torch.testing.assert_close(one["fo"], two["fo"], rtol=1e-5, atol=1e-9)  # per-rank sums added in rank order
    assert one["cols"] == two["cols"] and torch.equal(one["ex"], two["ex"])  # units split between ranks, gathered
    for k in ("iou", "iqr", "thr"):
        assert torch.equal(one[k], two[k])  # integer tallies: exact
