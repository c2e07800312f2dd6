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


def test_the_natural_part_renders_the_recorded_repair_and_reports_its_numbers(tmp_path):
    from artifix.example.demo_natural import RESULTS, natural_story
    from artifix.model.generator import load_generator
    import json

    res = json.loads(RESULTS.read_text())
    said: list[str] = []
    out = natural_story(load_generator(), tmp_path, said.append, n_show=4)
    assert (tmp_path / "natural_before_after.png").is_file()
    assert out["layer"] == res["repair"]["layer"] and out["units"] == res["repair"]["units"]
    md = "\n".join(out["markdown"])
    wins = res["ab"]["repair"]["wins"]
    assert f"preferred in {wins} of {wins + res['ab']['repair']['losses']} decided pairs" in md
    assert "Targets met (" in md and "Missed:" in md and any("[natural] blind A/B" in s for s in said)
