"""Concept dissection: the bundled segmenter, IoU tallies against brute force, causal checks, plug-ins, bad input."""

import json

import numpy as np
import pytest
import torch

from artifix.concepts import dissect as D
from artifix.report import dissection as R
from artifix.example import scenes
from artifix.errors import UserError
from artifix.model.generator import load_generator
from artifix.units.scoring import TOP_FRACTIONS, iou_iqr, iqr_from_counts
from artifix.concepts.segmenter import confusion, iou_from_confusion, load_segmenter
from tests.conftest import run_cli

K = len(scenes.CLASSES)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="module")
def g():
    return load_generator()


@pytest.fixture(scope="module")
def seg():
    return load_segmenter()


@pytest.fixture(scope="module")
def main5(g, seg):
    return D.dissect(g, ["main.5"], seg, seed=0, n=96)["main.5"]


def test_segmenter_beats_trivial_baseline_on_held_out_scenes(seg):
    train = np.concatenate([b.labels for b in scenes.stream(21, 400, 200)])
    prior = torch.from_numpy(np.stack([(train == c).sum(0) for c in range(K)]).argmax(0))  # per-position majority class
    held = scenes.render(22, 5000, 96)  # the card used scenes 0..999 of stream 22; these are fresh ones
    truth = torch.from_numpy(held.labels)
    cm = confusion(seg.labels(held.images), truth, K)
    cm_b = sum(confusion(prior, t, K) for t in truth)
    iou, iou_b = iou_from_confusion(cm), iou_from_confusion(cm_b)
    assert torch.nanmean(iou) > torch.nanmean(iou_b) + 0.3
    assert cm.diag().sum() / cm.sum() > 0.9 > cm_b.diag().sum() / cm_b.sum()
    for c in ("sky", "ground", "building", "tree"):
        assert iou[scenes.CLASS_INDEX[c]] > 0.6, c


def test_tally_matches_brute_force_on_a_tiny_case():
    torch.manual_seed(0)
    b, c, h, w, hh, ww, k = 5, 4, 4, 4, 8, 8, 3
    acts = torch.relu(torch.randn(b, c, h, w))
    labels = torch.randint(0, k, (b, hh, ww))
    up = torch.nn.functional.interpolate(acts, size=(hh, ww), mode="bilinear", align_corners=False)
    thr = torch.stack([torch.quantile(up[:, u].reshape(-1), 1 - TOP_FRACTIONS.float()) for u in range(c)])
    tally = D.ConceptTally(thr, k)
    tally.update(acts[:2], labels[:2])  # two batches: streaming
    tally.update(acts[2:], labels[2:])
    iou, iqr, best = tally.result()
    for u in range(c):
        for cls in range(k):
            s = labels == cls
            q = [float(iqr_from_counts(((up[:, u] > t) & s).sum()[None].double(), (up[:, u] > t).sum()[None].double(), s.sum().double(),
                                       float(b * hh * ww))[0]) for t in thr[u]]
            j = int(np.argmax(q))
            a = up[:, u] > thr[u, j]
            want = float((a & s).sum()) / float((a | s).sum())
            assert iou[u, cls].item() == pytest.approx(want, abs=1e-12)
            assert int(best[u, cls]) == j
    for cls in range(k):  # and the same numbers as the artifact scorer's IoU@IQR
        assert torch.allclose(iou_iqr(acts, labels == cls, thr).iou.double(), iou[:, cls], atol=1e-6)


def test_dissection_finds_object_units_and_reports(main5, tmp_path):
    rows = main5.best()
    assert len(rows) == 128 and all(0 <= r["iou"] <= 1 for r in rows)
    assert main5.interpretable() == sum(main5.counts().values())
    for c in ("tree", "building"):
        top = main5.top_units(c, 5)
        assert main5.iou[top[0], scenes.CLASS_INDEX[c]] > D.IOU_MIN
    cards = D.concepts_of_units(main5, main5.top_units("building", 2), top=3)
    assert cards[0]["concepts"] and "building" in [x["concept"] for x in cards[0]["concepts"]]
    again = D.LayerDissection.from_json(json.loads(json.dumps(main5.to_json())))
    assert np.allclose(again.iou, main5.iou, atol=1e-5) and again.counts() == main5.counts()
    png = R.charts({"main.5": main5, "copy": again})
    assert png.ndim == 3 and png.shape[2] == 3
    assert "| main.5 |" in R.report_markdown({"main.5": main5}, concepts=["tree"])


def test_ablating_top_tree_units_removes_more_tree_than_random_units(g, seg, main5):
    units = main5.top_units("tree", 20)
    r = D.ablation_effect(g, "main.5", units, seg, "tree", seed=0, n=48)
    assert r["pixels_before"] > 0 and len(r["control_units"]) == 20 and not set(r["control_units"]) & set(units)
    assert r["removed_fraction"] > 0.4  # 64 % on 200 samples (README, "What each unit draws")
    assert r["removed_fraction"] > r["control_removed_fraction"] + 0.3 and r["removed_ci"][0] > r["control_removed_ci"][1]


def test_inserting_tree_units_adds_tree_mostly_inside_the_region(g, seg, main5):
    mask = np.zeros((64, 64), bool)
    mask[20:44, 20:44] = True  # around the horizon (where the segmenter already calls much of the GAN's ground tree, adding does little)
    units = main5.top_units("tree", 20)
    r = D.insertion_effect(g, "main.5", units, seg, "tree", mask, seed=0, n=16)
    gain_in = r["share_inside_after"] - r["share_inside_before"]
    gain_out = r["share_outside_after"] - r["share_outside_before"]
    assert gain_in > 0.1 and gain_in > 3 * max(gain_out, 0)
    before, after = D.paint(g, "main.5", units, mask, "add", seed=0, index=3)
    assert before.shape == after.shape == (64, 64, 3) and before.dtype == np.uint8
    diff = np.abs(after.astype(int) - before).max(-1)
    assert diff[mask].mean() > 2 * diff[~mask].mean()
    _, removed = D.paint(g, "main.5", units, None, "remove", seed=0, index=3)
    assert not np.array_equal(removed, before)


def test_concept_collateral_lists_every_class(g, seg, main5):
    units = main5.top_units("building", 5)
    rows = D.concept_collateral(g, "main.5", units, seg, seed=0, n=16, dissection=main5)
    assert sorted(r["concept"] for r in rows) == sorted(scenes.CLASSES)
    assert all({"pixels_before", "pixels_after", "removed_fraction", "removed_ci", "drawn_by"} <= set(r) for r in rows)
    fr = [r["removed_fraction"] for r in rows if r["pixels_before"] > 0]
    assert fr == sorted(fr, reverse=True)


class _Bright(torch.nn.Module):
    """A toy domain segmenter: 'bright' where the mean intensity exceeds 0.5, at half resolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 2) - 0.5
        return torch.cat([-m, m], 1) * 10


def test_torchscript_segmenter_plugs_in(g, tmp_path):
    path = tmp_path / "bright.pt"
    torch.jit.script(_Bright()).save(str(path))
    with pytest.raises(UserError, match="class names"):
        load_segmenter(path)
    seg = load_segmenter(path, "dark,bright")
    (tmp_path / "bright.json").write_text(json.dumps({"classes": ["dark", "bright"]}))
    assert load_segmenter(path).classes == ("dark", "bright")
    img = np.zeros((1, 64, 64, 3), np.uint8)
    img[:, :, 32:] = 255
    lab = seg.labels(img)
    assert lab.shape == (1, 64, 64) and lab[0, :, :30].max() == 0 and lab[0, :, 34:].min() == 1
    res = D.dissect(g, ["main.11"], seg, seed=0, n=16, batch=8)["main.11"]
    assert res.iou.shape == (32, 2) and res.interpretable() > 0
    with pytest.raises(UserError, match="3 class names given"):
        load_segmenter(path, "a,b,c")  # three names for two logit channels


def test_bad_input_is_one_user_error(g, seg, tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a model at all")
    errors = []
    for call in (lambda: load_segmenter(bad), lambda: load_segmenter(tmp_path / "missing.pt"),
                 lambda: D.class_index(seg.classes, "unicorn"), lambda: load_segmenter(None, "a,,b"),
                 lambda: D.paint(g, "main.5", [999], None, "add"), lambda: D.paint(g, "main.5", [1], None, "paint"),
                 lambda: D.dissect(g, ["main.99"], seg, n=4)):
        with pytest.raises(UserError) as e:
            call()
        errors.append(str(e.value))
    assert all("\n" not in m and m.endswith((".", "?")) for m in errors), errors
    assert "sky" in errors[2]


def test_cli_dissect_and_paint(tmp_path):
    out = tmp_path / "d"
    code, stdout, err = run_cli("dissect", "--layers", "main.5,main.8", "--dissect-n", "24", "--ace-n", "16", "--ace-units", "5",
                                "--concepts", "tree", "--out", str(out), "--cache", str(tmp_path / "cache"), "--json", "--quiet")
    assert code == 0, err
    res = json.loads(stdout)
    assert [r["layer"] for r in res["summary"]] == ["main.5", "main.8"] and res["ace"][0]["concept"] == "tree"
    for f in ("dissection.md", "dissection.csv", "dissection.json", "dissection.png", "chart_main.8.png"):
        assert (out / f).is_file(), f
    code, stdout, err = run_cli("paint", "--units", "1,2,3", "--region", "0,0,32,32", "--mode", "remove", "--index", "2",
                                "--out", str(out), "--json", "--quiet")
    assert code == 0, err
    assert (out / "paint_main.8_2_remove.png").is_file()
    code, _, err = run_cli("dissect", "--layers", "main.8", "--concepts", "unicorn", "--out", str(out))
    assert code == 2 and "unknown concept" in err
    code, _, err = run_cli("paint", "--units", "1", "--region", "0,0,99,5", "--out", str(out))
    assert code == 2 and "--region" in err
