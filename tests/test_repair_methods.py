"""Repair's methods on the planted example: alpha optimisation, the k sweep, several layers, the high-activation subset."""

import numpy as np
import pytest
import torch

from artifix.review.classifier import differentiable_score, train_classifier
from artifix.example.model import REVIEW_DIR, bundled_review, seed_bundled_review
from artifix.model.generator import forward, images_at, latents, load_generator
from artifix.example.planted import low_impact_units, plant_defects, simulate_reviewer
from artifix.repair import (RepairPlan, combine, high_activation_samples, optimise_alpha, paired_rate_diff, plan_auto,
                            random_control, sequential_auto, sweep)
from artifix.model.trace import Trace, ablation

TRUTH = [5, 17, 40]


@pytest.fixture(scope="module")
def planted_gen():
    """The example, its planted copy and the simulated review."""
    g = load_generator()
    bad = plant_defects(g, TRUTH)
    return g, bad, simulate_reviewer(g, bad, seed=0, n_scan=300, n_flag=24, n_clean=24)


@pytest.fixture(scope="module")
def planted(planted_gen, one_torch_thread):
    """The planted generator, the simulated review and a classifier trained on it."""
    g, bad, review = planted_gen
    ids = review.artifact + review.clean
    y = np.r_[np.ones(len(review.artifact)), np.zeros(len(review.clean))].astype(int)
    clf = train_classifier(images_at(bad, 0, ids), y)
    return g, bad, review, clf


def _mean_p(bad, clf, ids, edit=None):
    with Trace(bad.module, edit=edit or {}):
        return float(clf.predict_proba(images_at(bad, 0, ids)).mean())


def _magenta(x):
    """A differentiable artifact score that sees exactly the planted blotches: how magenta the image is."""
    r, g_, b = x[:, 0], x[:, 1], x[:, 2]
    return 100 * torch.relu(torch.minimum(r, b) - g_ - 0.5).mean(dim=(1, 2))


def test_alpha_optimisation_keeps_the_culprits_and_drops_an_innocent_unit(planted_gen):
    g, bad, review = planted_gen
    innocent = next(u for u in low_impact_units(g) if u not in TRUTH)  # removing it changes the images least
    plan = RepairPlan({"main.8": TRUTH + [innocent]}, "auto")
    alphas, hist = optimise_alpha(bad, plan, _magenta, 0, review.artifact, steps=15, lr=0.15, l2=0.05, batch=4,
                                  say=lambda m: None)
    a = dict(zip(plan.edits["main.8"], alphas["main.8"]))
    assert all(0.0 <= v <= 1.0 for v in a.values()) and len(hist) == 15
    # the L2 penalty switches the innocent unit off; the units that draw the blotches stay (nearly) fully removed
    assert a[innocent] <= 0.1 and min(a[u] for u in TRUTH) >= 0.8, a
    held_out = review.artifact[12:]
    z, y = latents(bad.spec, 0, held_out)
    with torch.inference_mode():
        before = float(_magenta(forward(bad, z, y)).mean())
        with Trace(bad.module, edit={"main.8": ablation(plan.edits["main.8"], alphas["main.8"])}):
            after = float(_magenta(forward(bad, z, y)).mean())
    assert after < 0.2 * before, (before, after)


def test_alpha_optimisation_with_the_classifier_runs_end_to_end(planted):
    _, bad, review, clf = planted
    plan = RepairPlan({"main.8": TRUTH}, "auto")
    alphas, hist = optimise_alpha(bad, plan, differentiable_score(clf, bad.spec.range, logit=True), 0, review.artifact,
                                  steps=4, lr=0.15, l2=0.05, batch=4, say=lambda m: None)
    assert len(alphas["main.8"]) == 3 and all(0 <= v <= 1 for v in alphas["main.8"]) and len(hist) == 4
    assert all(np.isfinite(h["score"]) for h in hist)


class MagentaDetector:
    """A stand-in artifact classifier that sees exactly the planted blotches (predict_proba + threshold, as the sweep uses)."""

    threshold = 0.5

    def predict_proba(self, images):
        im = images.astype(np.int16)
        magenta = (im[..., 0] > 170) & (im[..., 1] < 110) & (im[..., 2] > 170)
        return (magenta.reshape(len(im), -1).sum(1) >= 4).astype(float)


def test_sweep_keeps_the_planted_units_and_stops_at_an_innocent_one(planted_gen):
    g, bad, review = planted_gen
    innocent = [u for u in low_impact_units(g) if u not in TRUTH][:2]
    plan = RepairPlan({"main.8": TRUTH + innocent}, "auto")
    res = sweep(bad, plan, seed=0, n=400, clf=MagentaDetector(), metrics="swd", say=lambda m: None,
                metric_opts={"swd_bootstrap": 4})  # the stop rule reads the artifact rate; SWD rows need only an interval
    assert res["criterion"] == "artifact_rate"
    assert [r["helped"] for r in res["rows"]] == [True, True, True, False], res["rows"]
    assert res["k_best"] == 3 and res["stopped_at"] == 4
    rates = [res["before_artifact_rate"]["value"]] + [r["artifact_rate"]["value"] for r in res["rows"]]
    assert rates[0] > rates[1] > rates[2] > rates[3] and rates[4] >= rates[3], rates  # the innocent unit did not help
    assert all(r["swd"]["ci"] and r["swd"]["name"] == "swd_400" for r in res["rows"])


def test_paired_rate_difference_interval():
    p_a = np.array([0.9] * 50 + [0.1] * 50)
    p_b = np.array([0.1] * 40 + [0.9] * 10 + [0.1] * 50)
    d = paired_rate_diff(p_a, p_b, 0.5, seed=0)
    assert d["diff"] == pytest.approx(-0.4) and d["ci"][1] < 0 and d["significant"]
    same = paired_rate_diff(p_a, p_a, 0.5, seed=0)
    assert same["diff"] == 0 and not same["significant"]


def test_high_activation_subset_finds_the_flagged_samples(planted_gen):
    _, bad, review = planted_gen
    top = high_activation_samples(bad, {"main.8": TRUTH}, seed=0, n=20, pool=300)
    flagged = set(review.artifact) | {i for i, f in enumerate(review.changed_fraction) if f > 0}
    assert len(set(top) & flagged) >= 18


def test_several_layers_sequentially(planted_gen):
    g, bad, _ = planted_gen
    seen = []

    def rank(layer, earlier):
        # the ranking of a later layer must be computed with the earlier layers' units already removed
        z, y = latents(bad.spec, 0, range(8))
        with torch.inference_mode():
            out = forward(bad, z, y)
        seen.append((layer, dict(earlier), out))
        return list(range(10, 20)) if layer == "main.5" else TRUTH + [1, 2]

    plan = sequential_auto(bad, ["main.5", "main.8"], 2, rank, say=lambda m: None)
    assert plan.layers == ["main.5", "main.8"] and plan.edits == {"main.5": [10, 11], "main.8": [5, 17]}
    assert seen[0][1] == {} and set(seen[1][1]) == {"main.5"}
    assert not torch.equal(seen[0][2], seen[1][2])  # the second ranking ran under the first layer's ablation
    ctrl = random_control(plan, {"main.5": 128, "main.8": 64}, seed=0)
    assert len(ctrl["main.5"]) == 2 and not set(ctrl["main.5"]) & {10, 11} and not set(ctrl["main.8"]) & {5, 17}
    with pytest.raises(Exception, match="twice"):
        combine([plan_auto([1, 2], "main.8", 1), plan_auto([3], "main.8", 1)])


def test_bundled_review_seeds_only_an_empty_run(store):
    g = load_generator()
    review = bundled_review()
    assert review["fingerprint"] == g.fingerprint and (REVIEW_DIR / "flags.csv").is_file()
    rid = store.register_run(g.fingerprint, [review["layer"]], 0, 2000, image_size=(64, 64))
    added = seed_bundled_review(store, rid, g.fingerprint, review["layer"])
    assert added["approved"] == [a["unit"] for a in review["approved"]]
    assert sorted(a.unit for a in store.approved_units(rid)) == sorted(added["approved"])
    assert store.counts(rid)["artifact"] > 10
    # a second call, or a run with the team's own labels, is left alone
    assert seed_bundled_review(store, rid, g.fingerprint, review["layer"]) is None
    other = store.register_run(g.fingerprint, [review["layer"]], 1, 2000, image_size=(64, 64))
    store.set_flags(other, {3: "clean"}, "bob")
    assert seed_bundled_review(store, other, g.fingerprint, review["layer"]) is None
    assert store.counts(other)["labelled"] == 1 and not store.approved_units(other)
