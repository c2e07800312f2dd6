"""Unit scoring: formulas against brute force, and the planted-defect benchmark on the example GAN."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from artifix.model.generator import load_generator
from artifix.example.planted import plant_defects, simulate_reviewer
from artifix.units.scoring import (TOP_FRACTIONS, auc, collect_stats, combined_score, iou_iqr, iqr_from_counts, recall_at_k, robust_z, score_units)
from artifix.units.tally import IouTally


def brute_iqr(a: np.ndarray, s: np.ndarray) -> float:
    """I(A;S)/H(A,S) for two boolean arrays, straight from the definition."""
    h = mi = 0.0
    for x in (0, 1):
        for y in (0, 1):
            p = np.mean((a == x) & (s == y))
            px, py = np.mean(a == x), np.mean(s == y)
            if p > 0:
                h -= p * np.log(p)
                mi += p * np.log(p / (px * py))
    return mi / h if h > 0 else 0.0


def test_iqr_and_iou_match_brute_force():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(6, 5, 4, 4, generator=g)
    masks = torch.rand(6, 16, 16, generator=g) > 0.7
    thr = torch.quantile(acts.transpose(0, 1).reshape(5, -1), torch.tensor([0.3, 0.6, 0.9]), dim=1).T.contiguous()
    res = iou_iqr(acts, masks, thr, chunk=4)
    up = F.interpolate(acts, size=(16, 16), mode="bilinear", align_corners=False).numpy()
    m = masks.numpy()
    for u in range(5):
        iqrs = [brute_iqr(up[:, u] > t, m) for t in thr[u].tolist()]
        best = int(np.argmax(iqrs))
        a = up[:, u] > thr[u, best].item()
        assert res.iqr[u].item() == pytest.approx(iqrs[best], rel=1e-5, abs=1e-7)
        assert res.iou[u].item() == pytest.approx((a & m).sum() / (a | m).sum(), rel=1e-5)
        assert res.threshold[u].item() == pytest.approx(thr[u, best].item())


def _iou_iqr_before_the_shared_tally(acts, masks, thresholds, chunk):
    """The artifact scorer's IoU@IQR as it was before `artifix.units.tally`: F.interpolate, one threshold at a time."""
    b, c = acts.shape[:2]
    s = masks.reshape(b, -1).float()
    ns = s.sum().double()
    n11 = torch.zeros(c, thresholds.shape[1], dtype=torch.float64)
    na = torch.zeros_like(n11)
    for i in range(0, b, chunk):
        up = F.interpolate(acts[i:i + chunk].float(), size=masks.shape[-2:], mode="bilinear", align_corners=False).flatten(2)
        for j in range(thresholds.shape[1]):
            above = (up > thresholds[:, j].float()[None, :, None]).float()
            n11[:, j] += torch.einsum("bcp,bp->c", above, s[i:i + chunk]).double()
            na[:, j] += above.sum((0, 2)).double()
    iqr = iqr_from_counts(n11, na, ns, float(masks.numel()))
    best = iqr.argmax(1)
    ar = torch.arange(c)
    union = na[ar, best] + ns - n11[ar, best]
    return (n11[ar, best] / union).float(), iqr[ar, best].float(), thresholds[ar, best]


@pytest.mark.parametrize("b,c,h,w,hh,ww,relu,chunk", [(6, 5, 4, 4, 16, 16, False, 4), (7, 8, 5, 3, 16, 12, True, 3),
                                                      (3, 4, 16, 16, 16, 16, True, 2), (37, 6, 8, 8, 64, 64, False, 16)])
def test_shared_tally_gives_the_scorers_numbers(b, c, h, w, hh, ww, relu, chunk):
    """iou_iqr on the shared streaming tally equals the scorer's own former tally, and merged shards equal one pass."""
    g = torch.Generator().manual_seed(b * 100 + c)
    acts = torch.randn(b, c, h, w, generator=g)
    acts = torch.relu(acts) if relu else acts  # ReLU: many values tie with a threshold of 0
    masks = torch.rand(b, hh, ww, generator=g) > 0.8
    thr = torch.quantile(acts.transpose(0, 1).reshape(c, -1), 1 - TOP_FRACTIONS.float(), dim=1).T.contiguous()
    res = iou_iqr(acts, masks, thr, chunk=chunk)
    want = _iou_iqr_before_the_shared_tally(acts, masks, thr, chunk)
    for got, ref in zip((res.iou, res.iqr, res.threshold), want):
        assert torch.allclose(got, ref, rtol=0, atol=1e-6)
    assert torch.equal(res.threshold, want[2])
    whole, first, second = IouTally(thr, 2), IouTally(thr, 2), IouTally(thr, 2)
    whole.update(acts, masks)
    first.update(acts[: b // 2], masks[: b // 2])
    second.update(acts[b // 2:], masks[b // 2:])
    assert torch.equal(first.merge_(second).hist, whole.hist) and first.pixels == whole.pixels == masks.numel()
    iou_t, iqr_t = whole.scores()  # per (unit, class, threshold); the IQR-optimal column is the scorer's
    assert torch.equal(iou_t[:, 1].gather(1, whole.result()[2][:, 1:]).float()[:, 0], res.iou)


def test_iqr_is_one_for_identical_and_zero_for_independent():
    # A == S: |A & S| = |A| = |S| = 20 of 40
    assert iqr_from_counts(torch.tensor([20.0]), torch.tensor([20.0]), torch.tensor(20.0), 40.0).item() == pytest.approx(1.0)
    # A and S independent: p(A)=1/2, p(S)=1/2, p(A,S)=1/4
    assert iqr_from_counts(torch.tensor([10.0]), torch.tensor([20.0]), torch.tensor(20.0), 40.0).item() == pytest.approx(0.0, abs=1e-12)


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(0.5, 1, (30, 4)), 1)
    neg = np.round(rng.normal(0.0, 1, (25, 4)), 1)
    got = auc(torch.tensor(pos), torch.tensor(neg)).numpy()
    for u in range(4):
        ref = roc_auc_score(np.r_[np.ones(30), np.zeros(25)], np.r_[pos[:, u], neg[:, u]])
        assert got[u] == pytest.approx(ref, abs=1e-6)


def test_combined_score_keeps_outliers_on_top():
    causal = torch.tensor([0.0, 0.01, -0.01, 0.2, float("nan")])
    iou = torch.tensor([0.05, 0.06, 0.04, 0.3, 0.05])
    auc_ = torch.tensor([0.9, 0.8, 0.85, 0.7, 0.9])
    s = combined_score({"causal": causal, "iou": iou, "auc": auc_})
    assert int(s.argmax()) == 3
    assert robust_z(torch.tensor([1.0, 1.0, 1.0, 5.0]))[3] > 0


@pytest.fixture(scope="module")
def planted_setup():
    torch.set_num_threads(2)
    g = load_generator()
    truth = [5, 17, 40]
    bad = plant_defects(g, truth)
    review = simulate_reviewer(g, bad, seed=0, n_scan=300, n_flag=30, n_clean=30)
    stats = collect_stats(bad, "main.8", 0, 400)
    return g, bad, truth, review, stats


def test_planted_units_are_found_from_30_flags(planted_setup):
    g, bad, truth, review, stats = planted_setup
    assert len(review.artifact) <= 30 and len(review.clean) == 30
    rep = score_units(bad, "main.8", 0, stats, review.artifact, review.clean, review.masks, exact_top=10)
    ranking = rep.table.unit.tolist()
    assert recall_at_k(ranking, truth) >= 0.9, rep.table.head(6)
    # a random unit set of the same size does not find them
    rng = np.random.default_rng(0)
    random_recalls = [recall_at_k(list(rng.choice(64, 3, replace=False)), truth) for _ in range(200)]
    assert np.mean(random_recalls) < 0.2
    # the planted units are rarely activated, as Choi et al. describe artifact units
    assert (stats.firing_rate()[truth] < 0.3).all()


def test_flags_without_masks_use_classifier_pseudo_masks(planted_setup):
    """Unpainted flags: the trained classifier's localisation maps stand in for masks (Tousi et al. 2021).

    Measured on this example (README): the region-based causal effect then singles out the planted units,
    while the combined ranking is weaker than with painted regions, because pseudo masks are coarse.
    """
    from artifix.review.classifier import pseudo_masks, train_classifier
    from artifix.model.generator import images_at

    g, bad, truth, review, stats = planted_setup
    ids = review.artifact + review.clean
    imgs = images_at(bad, 0, ids)
    labels = np.r_[np.ones(len(review.artifact)), np.zeros(len(review.clean))].astype(int)
    clf = train_classifier(imgs, labels, seed=0)
    assert clf.report["auc"] > 0.8
    masks = dict(zip(review.artifact, pseudo_masks(clf, imgs[: len(review.artifact)])))
    rep = score_units(bad, "main.8", 0, stats, review.artifact, review.clean, masks, exact_top=8)
    assert {"iou", "auc", "causal"} <= set(rep.components)
    by_causal = rep.table.dropna(subset=["causal"]).sort_values("causal", ascending=False).unit.tolist()
    assert recall_at_k(by_causal, truth) >= 2 / 3, rep.table.head(8).to_string()


def test_cold_start_prior_without_labels(planted_setup):
    g, bad, truth, review, stats = planted_setup
    rep = score_units(bad, "main.8", 0, stats, [], [])
    assert rep.components == []
    assert recall_at_k(rep.table.unit.tolist(), truth, k=10) >= 2 / 3


def test_realism_score_matches_definition_and_flags_outliers():
    from artifix.units.scoring import realism_scores

    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 5))
    fake = np.r_[rng.normal(size=(20, 5)) * 0.3, rng.normal(size=(5, 5)) + 12]  # 20 inside, 5 far away
    r = realism_scores(fake, real, k=3, chunk=64)
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    radii = np.sort(d_rr, 1)[:, 3]
    keep = radii <= np.median(radii)
    brute = (radii[keep][None] / np.linalg.norm(fake[:, None] - real[keep][None], axis=-1)).max(1)
    assert np.allclose(r, brute)
    assert (r[:20] >= 1).mean() > 0.9 and (r[20:] < 0.5).all()


def test_review_priors_put_planted_samples_first(planted_setup):
    from artifix.units.scoring import review_priors

    g, bad, truth, review, stats = planted_setup
    ids = list(range(300))
    pri = review_priors(stats, ids)
    order = np.argsort(-pri, kind="stable")
    fires = stats.firing()[:300][:, truth].any(1).numpy()  # a planted unit fires in the sample
    top = fires[order[:30]].mean()
    assert top >= 0.9 and top >= 2 * fires.mean(), (top, fires.mean())
