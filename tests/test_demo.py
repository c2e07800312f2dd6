"""The README's main job, at a small size: plant, review, score, approve, repair, report."""

import json

from artifix.example.demo import DemoConfig, run_demo


def test_demo_finds_and_removes_planted_units(tmp_path):
    cfg = DemoConfig(out=tmp_path / "demo", scan=300, stats_n=300, metrics_n=64)
    s = run_demo(cfg, say=lambda m: None)
    assert s["recall_at_k"] == 1.0 and sorted(s["approved"]) == sorted(s["planted_units"])
    m = json.loads((cfg.out / "cleaned" / "manifest.json").read_text())
    assert m["export"]["exact"] and m["export"]["max_abs_diff"] <= 1e-5
    assert not set(m["random_control_units"]) & set(m["units"])
    rec = s["metrics"]["fd_recovery"]
    print("fd recovery", rec)
    assert rec["repair"] > 0.8 and rec["control"] < 0.3, rec
    assert set(m["metrics"]["subsets"]) == {"random", "high_activation"}
    rate = m["metrics"]["artifact_rate_flagged"]
    assert rate["after"]["value"] < rate["before"]["value"]
    for f in ("report.md", "samples.png", "planted_samples.png", "unit_scores.csv", "labels.sqlite",
              "cleaned/planted.pt", "cleaned/planted.safetensors", "cleaned/before_after_flagged.png"):
        assert (cfg.out / f).is_file(), f
