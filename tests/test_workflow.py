"""The workflow layer: one rule each, shared by the CLI and the dashboard; profiles; reference-free repair; intervals.

Regressions from issue 15 / 16 / 20: `artifix repair --seed 3` on the example must not import the seed-0 review;
the gate's units_removed checks every layer of a multi-layer repair; `--confidence 0.9` changes every interval;
a generator that is not the bundled example never falls back to the example's scenes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from artifix.concepts import dissect
from artifix import intervals, session, workflow
from artifix.errors import UserError
from artifix.model.generator import load_generator, spec_from_options
from artifix.labels import LabelStore
from artifix.profiles import GENERIC, profile_for
from artifix.repair import measurement
from artifix.results import RepairManifest
from tests.conftest import GENS, run_cli

ROOT = Path(__file__).resolve().parent.parent
LAYER = "main.3"  # the tiny DCGAN's 8x8 ReLU layer (as tests/test_bad_inputs.py)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny DCGAN checkpoint that is not the bundled example, and its CLI flags."""
    from tests.fixtures.gens import tiny_dcgan

    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    g = tiny_dcgan()
    for p in g.parameters():
        p.data.normal_(0, 0.2)
    torch.save({"netG_state_dict": g.state_dict(), "epoch": 3}, d / "ckpt.pt")
    return d, ["--generator", f"{GENS}:tiny_dcgan", "--checkpoint", str(d / "ckpt.pt"), "--latent", "16,1,1"]


def _tiny_g(d: Path):
    return load_generator(spec_from_options({"generator": f"{GENS}:tiny_dcgan", "checkpoint": str(d / "ckpt.pt"), "latent": "16,1,1"}))


# ------------------------------------------------------------------------------------------- profiles


def test_profiles_resolve_once_from_the_spec(tiny):
    ex = profile_for(load_generator().spec)
    assert ex.default_layer == "main.8" and ex.has_reference and ex.review is not None and ex.segmenter is not None
    assert ex.review.fits(ex.review.fingerprint, "main.8", 0) and not ex.review.fits(ex.review.fingerprint, "main.8", 3)
    g = _tiny_g(tiny[0])
    assert profile_for(g.spec) is GENERIC
    with pytest.raises(UserError, match="--layer is required"):
        workflow.resolve_layer(g, GENERIC, None)
    assert workflow.segmenter_for(GENERIC) is None
    with pytest.raises(UserError, match="--segmenter is required"):
        workflow.segmenter_for(GENERIC, required=True)
    with pytest.raises(UserError, match="--layers is required"):
        workflow.dissect_layers(GENERIC, None)


def test_bundled_review_compares_the_seed(tmp_path):
    """Regression: `artifix repair --seed 3` on the example imported the flags recorded at seed 0."""
    g = load_generator()
    with LabelStore(tmp_path / "labels.db") as s:
        run3 = workflow.register(s, g, "main.8", 3, 100)  # an empty seed-3 run of the unmodified example
    code, _, err = run_cli("repair", "--seed", "3", "--store", str(tmp_path / "labels.db"), "--out", str(tmp_path / "r"))
    assert code == 2 and "approved" in err and "bundled" not in err, err
    assert not (tmp_path / "r").exists()
    with LabelStore(tmp_path / "labels.db") as s:
        assert s.counts(run3)["flag_events"] == 0 and len(s.unit_decisions(run3)) == 0  # nothing imported at seed 3
        assert workflow.import_bundled_review(profile_for(g.spec), s, run3, g.fingerprint, "main.8", 3) is None
        assert s.counts(run3)["flag_events"] == 0 and not session.bundled_review_applies(s, run3, g, "main.8", 3)
        run0 = workflow.register(s, g, "main.8", 0, 100)
        assert session.bundled_review_applies(s, run0, g, "main.8", 0)
        added = session.load_bundled_review(s, run0, g, "main.8", 0)
        assert added["approved"] == [13, 63, 19] and s.counts(run0)["flag_events"] > 0
        assert s.counts(run3)["flag_events"] == 0  # the seed-3 run stays empty


# ---------------------------------------------------------------------------------------- shared rules


def test_units_rule_is_one_everywhere():
    assert workflow.parse_units("3, 17") == [3, 17] and session.paint_units("3 17") == [3, 17]
    from artifix.cli.commands.common import parse_units

    for bad, why in (("3,-1", "non-negative"), ("3,3", "distinct"), ("a", "integers")):
        for fn in (workflow.parse_units, parse_units, session.paint_units):
            with pytest.raises(UserError, match=why):
                fn(bad)


def test_painted_mask_flags_artifact_in_the_same_transaction(store, tmp_path):
    run = store.register_run("f" * 16, ["l"], 0, 10, image_size=(4, 4))
    store.set_flag(run, 1, "clean", "bob")
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    session.save_painted_mask(store, run, 1, "alice", m)
    assert store.label(run, 1) == "artifact"
    audit = store.audit(run)
    assert audit.action.tolist().count("set_flag") == 1  # bob's flag; the painted flag came with set_mask
    # the CLI import follows the same rule: a folder of masks flags its samples
    from PIL import Image

    (tmp_path / "masks").mkdir()
    Image.fromarray((m * 255).astype(np.uint8)).save(tmp_path / "masks" / "2_carol.png")
    summary = store.import_labels(run, tmp_path / "masks", reviewer="carol")
    assert summary["flags_from_masks"] == 1 and store.label(run, 2) == "artifact"


def test_region_outline_is_shared():
    from artifix.cli.commands.dissection import parse_region

    img = np.zeros((8, 8, 3), np.uint8)
    mask = parse_region("2,2,6,6", (8, 8))
    out = session.region_outline(img, mask)
    assert out is not None and (out[2, 2] == (255, 0, 255)).all() and (out[3, 3] == 0).all() and (out[0, 0] == 0).all()
    assert session.region_outline is workflow.region_outline


# ----------------------------------------------------------------------------- no reference: never the example's


def test_metrics_and_gate_stop_without_real(tiny):
    d, flags = tiny
    code, _, err = run_cli("metrics", *flags, "--n", "4")
    assert code == 2 and "--real is required" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("gate", *flags, "--n", "4", "--measure-only", "--criteria", '[{"metric": "fd"}]', "--out", str(d / "gate"))
    assert code == 2 and "--real is required" in err and len(err.strip().splitlines()) == 1, err
    assert not (d / "gate").exists()


def _approved_run(g, tmp_path: Path) -> tuple[Path, int]:
    """A fresh label store whose run of `g` at LAYER has units 1 and 5 approved by alice: (store path, run id)."""
    store_path = tmp_path / "labels.db"
    with LabelStore(store_path) as s:
        run = workflow.register(s, g, LAYER, 0, 200)
        for u in (1, 5):
            s.decide_unit(run, LAYER, u, "approved", "alice")
    return store_path, run


def test_repair_without_real_measures_only_reference_free(tiny, tmp_path):
    """Repair (CLI) and the dashboard's repair say what they skipped and never measure against the example's scenes."""
    d, flags = tiny
    g = _tiny_g(d)
    store_path, run = _approved_run(g, tmp_path)
    code, out, err = run_cli("repair", *flags, "--layer", LAYER, "--store", str(store_path), "--repair-n", "16", "--high-pool", "0",
                             "--out", str(tmp_path / "cli"), "--json")
    assert code == 0, err
    assert "skipped FD, KID, SWD" in err
    cli = json.loads(out)
    assert cli["skipped_measures"] == ["fd", "kid", "swd"] and cli["metrics"]["repair"] == {}
    assert cli["metrics"]["subsets"]["random"]["pixel_change"]["repair"]["value"] > 0
    said: list[str] = []
    with LabelStore(store_path) as s:
        dash = session.repair_approved(g, LAYER, s, run, tmp_path / "dash", seed=0, n=16, high_pool=0, say=said.append)
    assert any("skipped FD, KID, SWD" in t for t in said)
    # the same repair manifest from the CLI and the dashboard's call
    a, b = RepairManifest.from_json(cli), RepairManifest.from_json(dash)
    assert a.edits == b.edits and a.control == b.control and a.skipped_measures == b.skipped_measures
    assert cli["metrics"]["subsets"]["random"]["pixel_change"] == dash["metrics"]["subsets"]["random"]["pixel_change"]
    assert "No reference data" in (tmp_path / "cli" / "MODEL_CARD.md").read_text()
    report = (tmp_path / "cli" / "report.md").read_text()  # a run without flags shows samples 0-7, and links only what exists
    assert "![random](before_after_random.png)" in report and "before_after_flagged" not in report
    assert (tmp_path / "cli" / "before_after_random.png").is_file()


def test_cli_and_dashboard_repair_alike(tiny, tmp_path):
    """`artifix repair` and the dashboard's Repair button write the same manifest for the same approvals: every metric,
    interval, control unit, ledger count and file hash (the cleaned checkpoint is byte-identical), all but paths and time."""
    d, flags = tiny
    g = _tiny_g(d)
    real = tmp_path / "real.npz"
    np.savez(real, images=np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8))
    store_path, run = _approved_run(g, tmp_path)
    code, out, err = run_cli("repair", *flags, "--layer", LAYER, "--store", str(store_path), "--repair-n", "16", "--high-pool", "0",
                             "--real", str(real), "--cache", str(tmp_path / "cache-cli"), "--out", str(tmp_path / "cli"), "--json")
    assert code == 0, err
    cli = json.loads(out)
    with LabelStore(store_path) as s:
        dash = session.repair_approved(g, LAYER, s, run, tmp_path / "dash", seed=0, n=16, high_pool=0, real=str(real),
                                       cache=str(tmp_path / "cache-dash"))
    assert {k.split("_")[0] for k in cli["metrics"]["repair"]} == {"fd", "kid", "swd"}, cli["metrics"]["repair"].keys()

    def comparable(m: dict, folder: str) -> dict:
        m = json.loads(json.dumps(m).replace(str(tmp_path / folder), "OUT"))
        m.pop("seconds")
        return m

    assert comparable(cli, "cli") == comparable(dash, "dash")


def test_a_cautioned_approval_without_a_note_is_refused_everywhere(tiny, tmp_path):
    """The dashboard's rule (a unit with a caution needs a note) holds for the CLI's repair and the Python API too."""
    import artifix as ax

    d, flags = tiny
    g = _tiny_g(d)
    store_path = tmp_path / "labels.db"
    neg = {"combined": 1.2, "causal": -0.03, "causal_se": 0.01, "auc": 0.7}
    with LabelStore(store_path) as s:
        run = workflow.register(s, g, LAYER, 0, 200)
        s.propose_units(run, [(LAYER, 1, neg), (LAYER, 5, {**neg, "causal": 0.2})], "artifix")
        s.decide_unit(run, LAYER, 5, "approved", "alice")  # positive and beyond its interval: no caution, no note needed
        s.decide_unit(run, LAYER, 1, "approved", "alice")  # recorded straight into the store, without a note
    argv = ["repair", *flags, "--layer", LAYER, "--store", str(store_path), "--repair-n", "8", "--high-pool", "0",
            "--out", str(tmp_path / "out")]
    code, _, err = run_cli(*argv)
    assert code == 2 and "unit 1 of main.3 was approved by alice without a note although its causal effect is -0.030" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    api_run = ax.open(g, layer=LAYER, store=str(store_path), n=200)
    with pytest.raises(UserError, match="write a note"):
        api_run.approve([1])
    api_run.approve([1], note="removing it anyway to measure")
    code, _, err = run_cli(*argv)
    assert code == 0, err


def test_cli_and_dashboard_rank_alike(tiny, tmp_path):
    d, flags = tiny
    g = _tiny_g(d)
    store_path = tmp_path / "labels.db"
    with LabelStore(store_path) as s:
        run = workflow.register(s, g, LAYER, 0, 200)
        s.set_flags(run, {i: ("artifact" if i % 3 == 0 else "clean") for i in range(24)}, "alice")
    code, out, err = run_cli("score", *flags, "--layer", LAYER, "--store", str(store_path), "--stats-n", "200", "--top", "5",
                             "--out", str(tmp_path / "score"), "--cache", str(tmp_path / "cache"), "--json")
    assert code == 0, err
    cli_rank = [r["unit"] for r in json.loads(out)["top"]]
    with LabelStore(store_path) as s:
        stats = workflow.unit_stats(g, LAYER, 0, 200, str(tmp_path / "cache"))
        rep = session.score_run(g, LAYER, s, run, stats, seed=0)
    assert [int(u) for u in rep.table.unit[:5]] == cli_rank


def test_cli_and_dashboard_gate_alike(tmp_path):
    """The dashboard has no gate action (nor session.py, nor workflow.py): `artifix gate` must then report exactly what
    `gate.run_gate`, the function it calls, returns and writes for the same settings, generator, seed and cache."""
    from artifix import defaults
    from artifix.example.model import CHECKPOINT
    from artifix.gate import GateSettings, parse_criteria, run_gate

    mf = tmp_path / "manifest.json"
    mf.write_text(json.dumps({"layer": "main.8", "units": [13, 19], "alphas": [1.0, 1.0]}))
    crit = json.dumps([{"metric": "swd", "threshold": "50%"}, {"metric": "units_removed", "manifest": str(mf)}])
    small = {"n": 16, "seed": 3, "bootstrap": 10, "swd_bootstrap": 4, "swd_n": 16, "real_n": 16}
    code, out, err = run_cli("gate", "--baseline", str(CHECKPOINT), "--criteria", crit, "--cache", str(tmp_path / "cache"),
                             *[a for k, v in small.items() for a in (f"--{k.replace('_', '-')}", str(v))], "--out", str(tmp_path / "cli"), "--json")
    assert code == 1, err  # units 13 and 19 are still in the candidate
    cli = json.loads((tmp_path / "cli" / "gate-report.json").read_text())
    assert json.loads(out) == cli
    keys = ("features", "real", "real_n", "real_resize", "inception_weights", "swd_n", "kid_subsets", "kid_subset_size",
            "feature_batch", "torchscript_size", "torchscript_range")
    metric_opts = {**{k: defaults.get("metrics", k) for k in keys}, "swd_n": 16, "real_n": 16, "cache": str(tmp_path / "cache")}
    s = GateSettings(criteria=parse_criteria(crit, defaults.get("gate", "confidence"), None), n=16, seed=3,
                     metrics_seed=defaults.get("metrics", "metrics_seed"), bootstrap=10, swd_bootstrap=4, baseline=str(CHECKPOINT),
                     out=str(tmp_path / "fn"), metric_opts=metric_opts)
    fn = run_gate(s, spec_from_options(defaults.section("generator")))
    assert [(r["name"], r["status"], r["reason"]) for r in fn["criteria"]] == [(r["name"], r["status"], r["reason"]) for r in cli["criteria"]]
    assert [r["status"] for r in cli["criteria"]] == ["pass", "fail"] and fn["exit_code"] == cli["exit_code"] == 1
    written = json.loads((tmp_path / "fn" / "gate-report.json").read_text())
    assert {k: v for k, v in written.items() if k != "run"} == {k: v for k, v in cli.items() if k != "run"}  # "run": timings


# --------------------------------------------------------------------------------------- gate, manifests


def test_units_removed_checks_every_layer(tmp_path):
    """Regression: the gate's units_removed read only the primary layer of a multi-layer repair."""
    from artifix.repair.export import export_cleaned

    g = load_generator()
    from artifix.example.model import CHECKPOINT

    export_cleaned(g, {"main.8": ([13, 19], [1.0, 1.0])}, tmp_path / "clean8", CHECKPOINT)  # only main.8 baked
    mf = {"layer": "main.8", "units": [13, 19], "alphas": [1.0, 1.0], "layers": ["main.8", "main.5"],
          "edits": {"main.8": {"units": [13, 19], "alphas": [1.0, 1.0]}, "main.5": {"units": [4, 7], "alphas": [1.0, 1.0]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(mf))
    assert RepairManifest.from_json(mf).removed == {"main.8": [13, 19], "main.5": [4, 7]}
    ckpt = tmp_path / "clean8" / CHECKPOINT.name
    crit = json.dumps([{"metric": "units_removed", "manifest": str(tmp_path / "manifest.json")}])
    code, out, err = run_cli("gate", "--generator", "artifix.example:make_generator", "--checkpoint", str(ckpt), "--criteria", crit, "--n", "8", "--out", str(tmp_path / "g"), "--json")
    assert code == 1, err  # main.5's units are still there
    m = json.loads(out)["measurements"][f"units_removed[{Path(tmp_path / 'manifest.json').as_posix()}]"]
    assert m["removed"] == {"main.8": [13, 19], "main.5": [4, 7]} and m["candidate"]["value"] > 0


# --------------------------------------------------------------------------------------------- intervals


def test_confidence_changes_every_interval():
    """Regression (issue 20): scalar intervals of repair and dissection were 95 % whatever --confidence said."""
    rng = np.random.default_rng(0)
    p_a, p_b = rng.random(200), rng.random(200) * 0.8
    before = rng.integers(0, 50, 100).astype(float)
    after = before * rng.random(100)
    imgs = [rng.integers(0, 255, (8, 4, 4, 3), dtype=np.uint8)]
    imgs2 = [np.clip(imgs[0].astype(int) + rng.integers(0, 30, imgs[0].shape), 0, 255).astype(np.uint8)]

    def width(ci):
        return ci[1] - ci[0]

    for conf_lo, conf_hi in ((0.9, 0.95),):
        pairs = [
            (measurement._rate(p_a, 0.5, 0, confidence=conf_lo)["ci"], measurement._rate(p_a, 0.5, 0, confidence=conf_hi)["ci"]),
            (measurement.paired_rate_diff(p_a, p_b, 0.5, 0, confidence=conf_lo)["ci"], measurement.paired_rate_diff(p_a, p_b, 0.5, 0, confidence=conf_hi)["ci"]),
            (measurement.pixel_change(imgs, imgs2, 0, conf_lo)["ci"], measurement.pixel_change(imgs, imgs2, 0, conf_hi)["ci"]),
            (dissect._fraction_ci(before, after, 0, confidence=conf_lo)[1], dissect._fraction_ci(before, after, 0, confidence=conf_hi)[1]),
            (intervals.wilson(7, 40, conf_lo).ci, intervals.wilson(7, 40, conf_hi).ci),
            (intervals.normal(1.0, 0.2, conf_lo), intervals.normal(1.0, 0.2, conf_hi)),
        ]
        for lo, hi in pairs:
            assert 0 < width(lo) < width(hi), (lo, hi)
    assert intervals.z(0.95) == pytest.approx(1.959964, abs=1e-6)
    from artifix.gate.judge import _quantile

    assert _quantile(0.9, None) == pytest.approx(intervals.z(0.9))


def test_metrics_confidence_changes_the_interval(tmp_path):
    from artifix.example import scenes
    from artifix.metrics import compute_metrics, paired_compare
    from tests.test_metrics_reference import PixelFeatures

    fake = scenes.render(1, 0, 40).images
    other = np.clip(fake.astype(int) + 20, 0, 255).astype(np.uint8)
    opts = dict(metrics="fd", features=PixelFeatures(), bootstrap=30, seed=0, cache=tmp_path, n=40)
    one = {c: compute_metrics(iter([fake]), confidence=c, **opts) for c in (0.9, 0.95)}
    two = {c: paired_compare(iter([fake]), iter([other]), confidence=c, **opts) for c in (0.9, 0.95)}
    for res, keys in ((one, ("ci",)), (two, ("ci", "ci_a", "ci_b"))):
        name = next(iter(res[0.9]))
        for k in keys:
            lo, hi = res[0.9][name][k], res[0.95][name][k]
            assert 0 < lo[1] - lo[0] < hi[1] - hi[0], (name, k)
    e = two[0.9][next(iter(two[0.9]))]
    assert e["se_b"] == pytest.approx((e["ci_b"][1] - e["ci_b"][0]) / (2 * intervals.z(0.9)))  # the gate reads se_b directly
