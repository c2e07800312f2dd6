"""The dashboard tells reviewers what the numbers mean (issue 21), with Streamlit's AppTest: verdicts on the Repair page,
the caution before approving a negative-effect unit, undo recorded in the audit log, and disabled controls saying why.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.test_dashboard_pages import app, button, batch_of, open_page, run_of, settings


def _manifest(fd, swd, rate=None, high=False) -> dict:
    def entry(diff, ci):
        return {"a": 10.0, "b": 10.0 + diff, "diff": diff, "ci": list(ci), "confidence": 0.95, "features": "effnetl0", "n_real": 500}

    rep = {"fd_effnetl0_100": entry(*fd), "swd_100": entry(*swd)}
    ctl = {k: entry(0.01, (-0.3, 0.3)) for k in rep}
    sub = {"samples": 100, "repair": rep, "control": ctl}
    met = {"n": 100, "seed": 0, "repair": rep, "control": ctl, "subsets": {"random": sub}}
    if rate is not None:
        r = {"value": 0.2, "ci": [0.1, 0.3], "n": 100}
        met["artifact_rate"] = sub["artifact_rate"] = {"before": r, "after": {**r, "value": 0.2 + rate[0]}, "control": r,
                                                       "repair_diff": {"diff": rate[0], "ci": list(rate[1])},
                                                       "control_diff": {"diff": 0.0, "ci": [-0.02, 0.02]}}
    if high:
        met["subsets"]["high_activation"] = {**sub, "samples": "top 100 of 400 by the removed units' activation"}
    return {"layer": "main.8", "units": [5], "selection": "approved", "random_control_units": [9],
            "export": {"max_abs_diff": 0.0, "files": {}}, "metrics": met, "collateral": None,
            "provenance": {"reference": {"kind": "bundled scenes", "seed": 1, "n": 500, "sha256": None, "note": "generated"},
                           "feature_space": {"fd_effnetl0_100": "effnetl0"}, "classifier": None,
                           "flags": {"artifact": 3, "clean": 2, "masks": None, "sha256": "ab" * 32}, "artifix_version": "0.1.0",
                           "device": "cpu"}}


def test_repair_page_verdicts_mixed_skipped_improved_and_worse(tmp_path, monkeypatch):
    opts = settings(tmp_path)
    out = Path(opts["out"])
    out.mkdir()
    mf = out / "manifest.json"
    # the example's case: FD fell, SWD rose, no classifier
    mf.write_text(json.dumps(_manifest((-6.8, (-8.1, -5.4)), (1.03, (0.84, 1.23)), high=True)))
    at = app(monkeypatch, opts, "Repair")
    md = [m.value for m in at.markdown]
    assert any(v.startswith("**Verdict at 95% confidence: FD (fd_effnetl0_100) improved (-6.8 [-8.1, -5.4]") and
               "SWD (swd_100) worse (+1.03 [+0.84, +1.23]" in v for v in md)
    assert any(v.startswith("Removed **1 unit** of `main.8`") for v in md)
    dis = [w.value for w in at.warning if w.value.startswith("The metrics disagree")]
    assert len(dis) == 2 and all("the measure that sees artifacts here, was not measured" in x for x in dis)  # both sample sets
    assert any("artifact rate: no artifact classifier was given" in c.value for c in at.caption)  # skipped, and why
    assert len(at.dataframe) == 2 and any("where the removed units fire most" in v for v in md)  # the high-activation table
    assert any("bundled scenes" in e.value for ex in at.expander for e in ex.markdown)  # provenance
    # all improved, with the artifact rate: no disagreement, no skipped artifact-rate note
    mf.write_text(json.dumps(_manifest((-2.0, (-2.5, -1.5)), (-0.5, (-0.8, -0.2)), rate=(-0.1, (-0.15, -0.05)))))
    at.run()
    assert any("artifact rate improved (-0.1 [-0.15, -0.05]; random control not significant)" in m.value for m in at.markdown)
    assert not any(w.value.startswith("The metrics disagree") for w in at.warning)
    assert not any("artifact rate: no artifact classifier" in c.value for c in at.caption)
    # worse everywhere
    mf.write_text(json.dumps(_manifest((3.0, (1.0, 5.0)), (0.4, (0.1, 0.7)), rate=(0.05, (0.01, 0.09)))))
    at.run()
    line = next(m.value for m in at.markdown if m.value.startswith("**Verdict"))
    assert line.count(" worse (") == 3 and "improved" not in line


def test_caution_before_approving_a_negative_effect_unit(tmp_path, monkeypatch):
    opts = settings(tmp_path)
    store, run = run_of(opts)
    store.set_flags(run, {1: "artifact", 2: "artifact", 3: "clean"}, "alice")
    store.propose_units(run, [("main.8", 7, {"combined": 1.5, "causal": -0.04, "causal_se": 0.01, "iou": 0.1, "auc": 0.8}),
                              ("main.8", 8, {"combined": 1.2, "causal": 0.30, "causal_se": 0.01, "iou": 0.3, "auc": 0.9})], "artifix")
    at = open_page(monkeypatch, opts, "Approvals")
    warn = [w.value for w in at.warning]
    assert any(w.startswith("The ranking behind these proposals") and "Flag 8 more artifact and 9 more clean samples" in w for w in warn)
    assert any(w.startswith("Caution on unit 7: its causal effect is -0.040 (not positive)") for w in warn)
    assert not any(w.startswith("Caution on unit 8: its causal effect") for w in warn)
    assert "required" in at.text_input(key="note-main.8-7").placeholder
    button(at, "approve-main.8-7").click().run()
    assert any("write a note saying why you approve it anyway" in e.value for e in at.error)
    assert store.approved_units(run) == []  # refused without a note
    at.text_input(key="note-main.8-7").set_value("kept: removes the blotch on #1 although clean samples change").run()
    button(at, "approve-main.8-7").click().run()
    (a,) = store.approved_units(run)
    assert a.unit == 7 and a.note.startswith("kept: removes the blotch")
    approve = button(at, "approve-main.8-7")
    assert approve.disabled and approve.help == "disabled: already approved"


def test_undo_of_ones_own_labels_is_an_audit_event(tmp_path, monkeypatch):
    opts = settings(tmp_path)
    at = app(monkeypatch, opts)
    undo = button(at, "undo-label")
    assert undo.disabled and "alice has no label left to undo" in undo.help
    a, b = batch_of(at)[:2]
    button(at, f"flag-{a}-artifact").click().run()
    button(at, f"flag-{b}-clean").click().run()
    button(at, f"flag-{a}-clean").click().run()  # a changed mind: artifact -> clean
    store, run = run_of(opts)
    button(at, "undo-label").click().run()  # undoes a: clean, back to artifact
    assert store.label(run, a) == "artifact" and store.label(run, b) == "clean"
    assert any(f"undid your 'clean' on sample {a}: it is now 'artifact'" in c.value for c in at.caption)
    button(at, "undo-label").click().run()  # undoes b: back to unlabelled
    assert store.label(run, b) is None and store.counts(run)["labelled"] == 1
    assert len(store.flag_history(run)) == 3  # nothing deleted
    audit = store.audit(run)
    undos = audit[audit.action == "undo_flag"]
    assert list(undos.actor) == ["alice", "alice"]
    assert [(x["sample"], x["undone_label"], x["restored_label"]) for x in undos.detail] == [(a, "clean", "artifact"), (b, "clean", None)]
    assert {m.label: m.value for m in at.metric}["labelled"] == "1"
    # another reviewer's labels are not undone by alice
    store.set_flag(run, b, "unsure", "bob")
    button(at, "undo-label").click().run()
    assert store.label(run, b) == "unsure" and store.label(run, a) is None


def test_disabled_controls_say_why(tmp_path, monkeypatch):
    opts = settings(tmp_path)
    at = app(monkeypatch, opts)
    train = button(at, "train")
    assert train.disabled and train.help == ("disabled: needs at least 2 artifact and 2 clean flags; you have 0 artifact and 0 clean")
    button(at, f"flag-{batch_of(at)[0]}-artifact").click().run()
    assert "you have 1 artifact and 0 clean" in button(at, "train").help
    at.sidebar.radio(key="page").set_value("Repair").run()
    run_repair = button(at, "run-repair")
    assert run_repair.disabled and "no approved units" in run_repair.help


def test_unit_card_marks_where_the_unit_fires():
    from artifix.report.unitviz import OUTLINE, PEAK, marked, normalised

    image = np.full((64, 64, 3), 128, np.uint8)
    act = np.zeros((8, 8), np.float32) + 5.0  # a high, even background: a global scale would wash it all
    act[1, 6] = 6.0  # its peak, top right
    m = normalised(act, (64, 64))
    assert m.min() == 0.0 and m.max() == 1.0
    out = marked(image, act)
    ys, xs = np.nonzero((out == PEAK).all(-1))
    assert 5 <= ys.mean() <= 16 and 45 <= xs.mean() <= 56  # the cross sits on the peak
    assert (out == OUTLINE).all(-1).any() and (out[40:, :20] < 60).all()  # outlined region; the rest dimmed


def test_undo_of_ones_own_paint_is_an_audit_event(tmp_path, monkeypatch):
    """Undo my last paint: the mask before it (or none) is back, the 'artifact' flag the painting added is undone too."""
    opts = settings(tmp_path)
    at = app(monkeypatch, opts)
    undo = button(at, "undo-mask")
    assert undo.disabled and "alice has no painted mask left to undo" in undo.help
    store, run = run_of(opts)
    a, b = batch_of(at)[:2]
    h, w = store.get_run(run).image_size
    first, second = np.zeros((h, w), bool), np.zeros((h, w), bool)
    first[:8, :8], second[20:40, 20:40] = True, True
    store.set_flag(run, b, "clean", "alice")
    store.set_mask(run, a, "alice", first, flag_artifact=True)  # painting flags a: artifact
    store.set_mask(run, a, "alice", second, flag_artifact=True)  # repainted: already artifact, no second flag
    store.set_mask(run, b, "bob", first, flag_artifact=True)  # bob's paint of b is not alice's to undo
    at.run()
    assert store.counts(run)["masked"] == 2
    button(at, "undo-mask").click().run()  # alice's repaint of a: her first mask is back
    assert (store.mask(run, a, "alice") == first).all() and store.label(run, a) == "artifact"
    assert any(f"undid your painted mask of sample {a} (400 px): your earlier mask is back" in c.value for c in at.caption)
    button(at, "undo-mask").click().run()  # alice's first paint of a: no mask, and its artifact flag is undone
    assert store.mask(run, a, "alice") is None and store.label(run, a) is None
    assert store.counts(run)["masked"] == 1 and (store.mask(run, b) == first).all()
    assert button(at, "undo-mask").disabled  # nothing of alice's left: bob's mask stays
    audit = store.audit(run)
    undos = audit[audit.action == "undo_mask"]
    assert list(undos.actor) == ["alice", "alice"] and [x["sample"] for x in undos.detail] == [a, a]
    assert [x["restored_mask_id"] is not None for x in undos.detail] == [True, False]
    flag_undos = audit[audit.action == "undo_flag"]
    assert [(x["sample"], x["undone_label"], x["restored_label"]) for x in flag_undos.detail] == [(a, "artifact", None)]
    assert len(store.flag_history(run)) == 3  # nothing deleted


def test_approvals_read_the_current_ranking_for_units_proposed_without_scores(tmp_path, monkeypatch):
    """Regression: units proposed without scores (the demo, the bundled review) were cautioned as 'causal effect not
    measured' even after the Units page had just measured it for the current labels."""
    opts = settings(tmp_path)
    store, run = run_of(opts)
    store.set_flags(run, {1: "artifact", 2: "artifact", 3: "clean", 4: "clean"}, "alice")
    at = app(monkeypatch, opts, "Units")
    button(at, "score").click().run()
    table = at.dataframe[0].value
    top = [int(u) for u in table.unit[:2]]
    store.propose_units(run, [("main.8", u) for u in top], "artifix")  # proposed without scores
    at.sidebar.radio(key="page").set_value("Approvals").run()
    assert not at.exception, at.exception
    caps = [c.value for c in at.caption]
    for u in top:
        causal = float(table.causal[table.unit == u].iloc[0])
        assert any(f"causal {causal:.3f}" in c and "from the Units page's ranking of the current labels" in c for c in caps), (u, caps)
    assert not any("proposed without scores" in w.value for w in at.warning)
    # a new label makes that ranking stale: the page no longer borrows it, and says the units were proposed without scores
    store.set_flag(run, 5, "clean", "alice")
    at.run()
    warn = [w.value for w in at.warning]
    assert all(any(w.startswith(f"Caution on unit {u}: it was proposed without scores") for w in warn) for u in top)


def test_first_load_draws_the_skeleton_and_the_stages_before_the_queue_is_ready(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from artifix.cli import serve
    from artifix import session
    from artifix.model.generator import load_generator
    from dashboard import queue_cache
    from tests.test_dashboard_pages import APP, CACHE

    opts = settings(tmp_path, pool=15)  # a pool no other test orders: the order is in neither the memory nor the disk cache
    key = queue_cache.queue_key(load_generator().fingerprint, "main.8", opts["seed"], opts["start"], 15, opts["stats_n"], None)
    (Path(CACHE) / "dashboard" / f"queue-{key}.json").unlink(missing_ok=True)

    def still_ordering(*a, **k):
        raise RuntimeError("still ordering the pool")

    monkeypatch.setattr(session, "review_queue", still_ordering)  # the page as a reviewer sees it while the order is computed
    monkeypatch.setenv(serve.SETTINGS_ENV, json.dumps(opts))
    at = AppTest.from_file(APP, default_timeout=600).run()
    assert "still ordering the pool" in str(at.exception[0].message)
    stages = [m.value for m in at.markdown if m.value[:4] in ("1/3 ", "2/3 ", "3/3 ")]
    assert [s[:3] for s in stages] == ["1/3", "2/3"] and "unit statistics of `main.8` on 200 samples" in stages[0]
    assert "ordering the 15 samples of the pool" in stages[1]
    assert [c.value for c in at.caption].count("…") == 3  # the skeleton of the grid is already drawn
    assert not batch_of(at)
    monkeypatch.undo()
    at = app(monkeypatch, opts)  # the order computed: the grid replaces the progress box and the skeleton
    assert len(batch_of(at)) == 6
    assert "…" not in [c.value for c in at.caption] and not any(m.value.startswith("1/3 ") for m in at.markdown)
