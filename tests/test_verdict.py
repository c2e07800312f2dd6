"""Verdicts (improved / worse / not significant / skipped), the disagreement sentence and provenance blocks."""

from __future__ import annotations

import numpy as np

from artifix import provenance, verdict
from artifix.report.card import model_card


def _m(fd=(-6.8, (-8.1, -5.4)), swd=(1.03, (0.84, 1.23)), rate=None, collateral=None) -> dict:
    rep = {"fd_effnetl0_100": {"a": 50.0, "b": 50 + fd[0], "diff": fd[0], "ci": list(fd[1]), "confidence": 0.9, "features": "effnetl0",
                               "n_real": 500},
           "swd_100": {"a": 5.0, "b": 5 + swd[0], "diff": swd[0], "ci": list(swd[1]), "confidence": 0.9}}
    ctl = {k: {**v, "diff": 0.01, "ci": [-0.2, 0.2]} for k, v in rep.items()}
    met = {"n": 100, "repair": rep, "control": ctl, "subsets": {"random": {"samples": 100, "repair": rep, "control": ctl}}}
    if rate is not None:
        r = {"value": 0.2, "ci": [0.1, 0.3], "n": 100}
        met["artifact_rate"] = {"before": r, "after": r, "control": r, "repair_diff": {"diff": rate[0], "ci": list(rate[1])},
                                "control_diff": {"diff": 0.0, "ci": [-0.02, 0.02]}}
    return {"metrics": met, "collateral": collateral}


def test_classify_reads_the_interval_of_the_change():
    assert verdict.classify(-1.0, (-2.0, -0.5)) == "improved"
    assert verdict.classify(1.0, (0.5, 2.0)) == "worse"
    assert verdict.classify(0.1, (-0.5, 0.7)) == "not significant"
    assert verdict.classify(1.0, (0.5, 2.0), lower_is_better=False) == "improved"
    assert verdict.classify(1.0, None) == "no interval"


def test_mixed_metrics_get_one_sentence_naming_the_artifact_measure():
    v = verdict.repair_verdict(_m(rate=(-0.1, (-0.15, -0.05))))
    by = {m.family: m.verdict for m in v.metrics}
    assert by == {"fd": "improved", "swd": "worse", "artifact_rate": "improved"}
    assert v.confidence == 0.9 and v.line().startswith("Verdict at 90% confidence: FD (fd_effnetl0_100) improved (-6.8 [-8.1, -5.4]")
    assert "random control not significant" in v.line()
    assert v.disagreement.startswith("The metrics disagree: FD (fd_effnetl0_100) and artifact rate improved while SWD (swd_100) got worse.")
    assert "artifact rate is the measure that sees artifacts here, and it improved" in v.disagreement
    # a profile may name another measure as the one that sees artifacts
    assert "The FD is the measure that sees artifacts here, and it improved" in verdict.repair_verdict(_m(), artifact_metric="fd").disagreement


def test_all_improved_or_worse_has_no_disagreement_and_skips_are_explained():
    good = verdict.repair_verdict(_m(swd=(-0.5, (-0.8, -0.2))))
    assert {m.verdict for m in good.metrics} == {"improved"} and good.disagreement is None
    bad = verdict.repair_verdict(_m(fd=(3.0, (1.0, 5.0))))
    assert {m.verdict for m in bad.metrics} == {"worse"} and bad.disagreement is None
    assert any(s.startswith("artifact rate: no artifact classifier") for s in good.skipped)
    assert any("collateral on concepts: no segmenter" in s for s in good.skipped)
    assert any(x.startswith("Not measured: artifact rate") for x in good.lines())
    mixed = verdict.repair_verdict(_m())  # disagreement and no classifier: the sentence says nothing sees the artifacts
    assert "was not measured, so this run cannot tell whether the artifacts went away" in mixed.disagreement
    ns = verdict.repair_verdict(_m(fd=(0.1, (-0.3, 0.5)), swd=(0.0, (-0.1, 0.1)), collateral={"concepts": []}))
    assert {m.verdict for m in ns.metrics} == {"not significant"}
    assert not any("collateral" in s for s in ns.skipped)


def test_gate_verdict_uses_each_criterion_direction():
    report = {"criteria": [
        {"name": "fd", "metric": "fd", "against": "baseline", "direction": "lower", "change": -1.0, "ci": [-2.0, -0.1], "confidence": 0.9},
        {"name": "acc", "metric": "acc", "against": "baseline", "direction": "higher", "change": -1.0, "ci": [-2.0, -0.1]},
        {"name": "rate", "metric": "artifact_rate", "against": "absolute", "direction": "lower", "candidate": 0.1, "ci": [0, 0.2]}]}
    v = verdict.gate_verdict(report)
    assert [m.verdict for m in v.metrics] == ["improved", "worse"] and v.confidence == 0.9
    assert v.disagreement is not None and v.skipped == ["rate: an absolute limit, so there is no before/after change."]


def test_units_phrase_and_model_card_carry_verdict_and_provenance(tmp_path):
    assert verdict.units_phrase(1) == "1 unit" and verdict.units_phrase(3) == "3 units"
    ref = tmp_path / "real.npz"
    np.savez(ref, images=np.zeros((4, 8, 8, 3), np.uint8))
    m = _m(rate=(-0.1, (-0.15, -0.05)))
    m.update(edits={"main.8": {"units": [5], "alphas": [1.0]}}, selection="approved", random_control={"main.8": [9]},
             export={"max_abs_diff": 0.0, "verify_n": 8, "exact": True},
             provenance=provenance.provenance(real=str(ref), metrics=m["metrics"]["repair"], flagged=[3, 1], clean=[2], masks=1))
    p = m["provenance"]
    import hashlib

    assert p["reference"]["sha256"] == hashlib.sha256(ref.read_bytes()).hexdigest() and p["reference"]["n"] == 500
    assert p["feature_space"]["fd_effnetl0_100"] == "effnetl0" and p["flags"]["artifact"] == 2 and p["device"] == "cpu"
    assert p["flags"]["sha256"] == provenance.flags_snapshot([1, 3], [2])["sha256"] != provenance.flags_snapshot([1], [2, 3])["sha256"]
    card = model_card(m)
    assert "Removed 1 unit (approved)" in card
    assert "**Verdict at 90% confidence: FD (fd_effnetl0_100) improved" in card and "The metrics disagree" in card
    assert "## Provenance" in card and p["reference"]["sha256"][:16] in card and "2 artifact, 1 clean, 1 painted" in card
    bundled = provenance.reference(None, m["metrics"]["repair"])
    assert bundled["kind"] == "bundled scenes" and bundled["n"] == 500
