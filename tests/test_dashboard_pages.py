"""Dashboard page logic with Streamlit's AppTest: every click reaches the label store, approvals are checked on the
server, scores / previews / repair reports render. Small settings (200 statistics samples, a pool of 18) keep it quick.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from artifix.cli import serve
from artifix import session
from artifix.labels import LabelStore

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
CACHE = str(ROOT / ".artifix-cache")


def settings(tmp_path: Path, **over) -> dict:
    """Dashboard settings as `artifix dashboard` would pass them, for a small run of the bundled example."""
    from dashboard.state import resolve_settings

    opts = resolve_settings([], {})
    opts.update(store=str(tmp_path / "labels.sqlite"), stats_n=200, pool=18, page_size=6, exact_top=3, top=3,
                cache=CACHE, canvas="box", reviewer="alice", out=str(tmp_path / "repair"),
                classifier=str(tmp_path / "clf.pt"), preview_n=3, repair_n=32, dissect_n=100)
    opts.update(over)
    return opts


def app(monkeypatch, opts: dict, page: str | None = None):
    """Run the app once with `opts` (optionally switching to `page`); returns the AppTest."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(serve.SETTINGS_ENV, json.dumps(opts))
    at = AppTest.from_file(APP, default_timeout=600).run()
    assert not at.exception, at.exception
    if page:
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, at.exception
    return at


def open_page(monkeypatch, opts: dict, page: str):
    """Run the app once, opened directly on `page` (the Review page's queue is never computed); returns the AppTest."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(serve.SETTINGS_ENV, json.dumps(opts))
    at = AppTest.from_file(APP, default_timeout=600)
    at.session_state["page"] = page
    at.run()
    assert not at.exception, at.exception
    return at


def run_of(opts: dict) -> tuple[LabelStore, int]:
    """The store and run id the dashboard opened for these settings."""
    from artifix.model.generator import load_generator

    store = LabelStore(opts["store"])
    g = load_generator()
    return store, session.open_run(store, g, "main.8", opts["seed"], 1000)


def button(at, key: str):
    return next(b for b in at.button if b.key == key)


def batch_of(at) -> list[int]:
    return [int(b.key.split("-")[1]) for b in at.button if b.key and b.key.startswith("flag-") and b.key.endswith("-clean")]


def test_review_flags_are_saved_at_once_and_counted(tmp_path, monkeypatch):
    opts = settings(tmp_path)
    at = app(monkeypatch, opts)
    batch = batch_of(at)
    assert len(batch) == 6  # page_size samples of the queue, none labelled yet
    assert any("cold start" in c.value for c in at.caption)  # no classifier: the priors order the queue
    button(at, f"flag-{batch[0]}-artifact").click().run()
    button(at, f"flag-{batch[1]}-clean").click().run()
    button(at, f"flag-{batch[2]}-unsure").click().run()
    store, run = run_of(opts)
    flags = store.flags(run).set_index("sample")
    assert flags.loc[batch[0], "label"] == "artifact" and flags.loc[batch[1], "label"] == "clean"
    assert flags.loc[batch[2], "label"] == "unsure" and set(flags.reviewer) == {"alice"}
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["labelled"] == "3" and metrics["artifact"] == "1" and metrics["by alice"] == "3"
    # changing one's mind is one more click, and history keeps both events
    button(at, f"flag-{batch[0]}-clean").click().run()
    assert store.label(run, batch[0]) == "clean" and len(store.flag_history(run)) == 4
    # the next batch skips every labelled sample
    button(at, "next-batch").click().run()
    nxt = batch_of(at)
    assert not set(nxt) & set(batch[:3])


def test_box_region_is_saved_as_mask_and_flags_artifact(tmp_path, monkeypatch):
    opts = settings(tmp_path)
    at = app(monkeypatch, opts)
    s = batch_of(at)[0]
    at.slider(key=f"canvas-1-{s}-paint-x").set_value((10, 30)).run()
    at.slider(key=f"canvas-1-{s}-paint-y").set_value((5, 25)).run()
    store, run = run_of(opts)
    mask = store.mask(run, s, "alice")
    want = np.zeros((64, 64), bool)
    want[5:25, 10:30] = True
    assert mask is not None and np.array_equal(mask, want)
    assert store.label(run, s) == "artifact"
    assert {m.label: m.value for m in at.metric}["painted"] == "1"


def test_units_page_ranks_every_component_previews_and_proposes(tmp_path, monkeypatch):
    opts = settings(tmp_path)
    store, run = run_of(opts)
    store.set_flags(run, {1: "artifact", 2: "artifact", 3: "clean", 4: "clean"}, "alice")
    m = np.zeros((64, 64), bool)
    m[20:40, 20:40] = True
    store.set_mask(run, 1, "alice", m)
    at = app(monkeypatch, opts, "Units")
    assert any("Score units" in i.value for i in at.info)  # nothing computed before the button
    button(at, "score").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    for col in ("rank", "unit", "status", "combined", "causal", "iou", "auc", "firing_rate", "collateral"):
        assert col in table.columns
    assert len(table) == 64 and list(table["rank"]) == list(range(1, 65))
    assert len(at.image) >= 3  # unit card + before/after rows for flagged and clean samples
    # the unit card lists the unit's concepts (dissection of main.8 with the bundled segmenter), the table its best one
    assert "concept" in table.columns and "concept_iou" in table.columns
    u = int(table.unit.iloc[0])
    (line,) = [m.value for m in at.markdown if m.value.startswith(f"**Unit {u} draws**")]
    from artifix.concepts.dissect import concepts_of_units
    from artifix.model.generator import load_generator
    from artifix.concepts.segmenter import load_segmenter

    diss = session.layer_dissection(load_generator(), "main.8", load_segmenter(), 0, 100, CACHE)  # the page's, from the disk cache
    (want,) = concepts_of_units(diss, [u], top=3)
    assert want["concepts"] and all(f"{c['concept']} {c['iou']:.2f}" in line for c in want["concepts"])
    assert table.concept.iloc[0] == diss.best()[u]["concept"]
    button(at, "propose-top").click().run()
    assert any("3 proposed" in c.value for c in at.sidebar.caption)  # the sidebar counts include this click
    assert any(w.value.startswith("This ranking rests on 2 flagged and 2 clean samples: too few to trust. Flag 8 more artifact")
               for w in at.warning)
    dec = store.unit_decisions(run)
    assert sorted(dec.unit) == sorted(int(u) for u in table.unit[:3]) and set(dec.status) == {"proposed"}
    # a new label makes the ranking stale, and the page says so instead of silently showing old scores
    store.set_flag(run, 5, "clean", "alice")
    at.run()
    assert any("labels changed" in w.value for w in at.warning)


def test_approvals_are_checked_on_the_server(tmp_path, monkeypatch):
    opts = settings(tmp_path, reviewer="mallory", approvers="alice,bob")
    store, run = run_of(opts)
    store.propose_units(run, [("main.8", 5), ("main.8", 50)], "artifix")
    at = app(monkeypatch, opts, "Approvals")
    assert any("Only alice, bob may approve" in w.value for w in at.warning)
    approve = button(at, "approve-main.8-5")
    assert not approve.disabled  # the browser may click; the server decides
    approve.click().run()
    assert any("mallory may not approve" in e.value for e in at.error)
    assert store.approved_units(run) == []
    # an approver's decision is recorded with the note, and appears in the audit history
    at = app(monkeypatch, settings(tmp_path, reviewer="alice", approvers="alice,bob"), "Approvals")
    at.text_input(key="note-main.8-5").set_value("blotches gone, clean samples unchanged").run()
    button(at, "approve-main.8-5").click().run()
    button(at, "reject-main.8-50").click().run()
    (a,) = store.approved_units(run)
    assert (a.unit, a.reviewer, a.note) == (5, "alice", "blotches gone, clean samples unchanged")
    dec = store.unit_decisions(run).set_index("unit")
    assert dec.loc[50, "status"] == "rejected"
    audit = at.dataframe[-1].value
    assert {"decide_unit", "propose_unit"} <= set(audit.action) and "alice" in set(audit.actor)


TREE = "tree"


def _class_pixels(image: np.ndarray, mask: np.ndarray, concept: str) -> int:
    """Pixels inside `mask` that the bundled segmenter calls `concept`."""
    from artifix.concepts.segmenter import load_segmenter

    seg = load_segmenter()
    return int(((seg.labels(image[None])[0].numpy() == seg.classes.index(concept)) & mask).sum())


def test_paint_page_adds_a_concept_inside_the_region(tmp_path, monkeypatch):
    from artifix.concepts import dissect
    from artifix.model.generator import load_generator
    from artifix.concepts.segmenter import load_segmenter

    opts = settings(tmp_path)
    at = open_page(monkeypatch, opts, "Paint")
    assert at.selectbox(key="paint-layer").value == "main.5"  # the example's causal-check layer
    assert at.selectbox(key="paint-concept").value == TREE and at.number_input(key="paint-k").value == 20
    assert any("Draw the region" in i.value for i in at.info) and "painted" not in at.session_state
    at.slider(key="paint-region-0-paint-x").set_value((8, 40)).run()
    at.slider(key="paint-region-0-paint-y").set_value((4, 28)).run()  # a box in the sky of sample 0
    assert not at.exception, at.exception
    p = at.session_state["painted"]
    g = load_generator()
    diss = session.layer_dissection(g, "main.5", load_segmenter(), 0, 100, CACHE)
    assert (p.layer, p.index, p.mode, p.units) == ("main.5", 0, "add", diss.top_units(TREE, 20))
    want = np.zeros((64, 64), bool)
    want[4:28, 8:40] = True
    assert np.array_equal(p.mask, want)
    before, after = dissect.paint(g, "main.5", p.units, want.astype(np.float32), "add", 0, 0)
    assert np.array_equal(p.before, before) and np.array_equal(p.after, after)  # the page only calls the library
    diff = np.abs(p.after.astype(int) - p.before.astype(int)).max(-1)
    assert diff[want].mean() > 4 * diff[~want].mean() and diff[want].mean() > 40  # changed inside, hardly outside
    assert _class_pixels(p.before, want, TREE) < 20 < 150 < _class_pixels(p.after, want, TREE)  # trees where there were none
    captions = [c for im in at.image for c in im.captions]
    assert any(c.startswith("after: add 20 units of main.5") for c in captions)
    assert any("inside the region (768 px)" in m.value for m in at.markdown)
    # fewer units of another concept: the page follows
    at.number_input(key="paint-k").set_value(5).run()
    at.selectbox(key="paint-concept").set_value("building").run()
    assert at.session_state["painted"].units == diss.top_units("building", 5)


def test_paint_page_removes_a_concept_inside_the_region(tmp_path, monkeypatch):
    opts = settings(tmp_path)
    at = open_page(monkeypatch, opts, "Paint")
    at.button_group(key="paint-mode").set_value("remove").run()
    at.slider(key="paint-region-0-paint-x").set_value((4, 60)).run()
    at.slider(key="paint-region-0-paint-y").set_value((32, 60)).run()  # the lower half: ground and the GAN's trees
    assert not at.exception, at.exception
    p = at.session_state["painted"]
    assert p.mode == "remove" and len(p.units) == 20
    region = np.zeros((64, 64), bool)
    region[32:60, 4:60] = True
    assert _class_pixels(p.after, region, TREE) < 0.6 * _class_pixels(p.before, region, TREE)
    assert p.change_inside > 4 * p.change_outside
    assert any(c.startswith("after: remove 20 units") for im in at.image for c in im.captions)


def test_paint_page_without_a_segmenter_paints_named_units(tmp_path, monkeypatch):
    from tests.conftest import GENS

    opts = settings(tmp_path, generator=f"{GENS}:tiny_dcgan", latent="16,1,1", layer="main.5")
    at = open_page(monkeypatch, opts, "Paint")
    assert any(c.value.startswith("No segmenter for this generator") for c in at.caption)
    assert not at.get("selectbox") or all(s.key != "paint-concept" for s in at.selectbox)
    layer = at.selectbox(key="paint-layer")
    assert layer.value == "main.5" and layer.options[0] == "main.5" and "main.8" in layer.options  # the run's layer first
    assert any(i.value == "Name the units to paint with (comma-separated)." for i in at.info)  # no "pick a concept"
    at.text_input(key="paint-units").set_value("0, 1").run()
    at.slider(key="paint-region-0-paint-x").set_value((0, 32)).run()
    at.slider(key="paint-region-0-paint-y").set_value((0, 32)).run()
    assert not at.exception, at.exception
    p = at.session_state["painted"]
    assert p.units == [0, 1] and p.mode == "add" and p.change_inside > p.change_outside
    at.text_input(key="paint-units").set_value("0, 999").run()  # a unit the layer lacks: one sentence, no traceback
    assert not at.exception and any("out of range" in e.value for e in at.error)


def test_units_page_says_when_there_is_no_segmenter(tmp_path, monkeypatch):
    from tests.conftest import GENS

    opts = settings(tmp_path, generator=f"{GENS}:tiny_dcgan", latent="16,1,1", layer="main.8")
    at = open_page(monkeypatch, opts, "Units")
    button(at, "score").click().run()
    assert not at.exception, at.exception
    assert "concept" not in at.dataframe[0].value.columns
    assert sum(c.value.startswith("No segmenter for this generator") for c in at.caption) == 1


def test_sidebar_loads_the_maintainers_example_review_into_an_empty_run(tmp_path, monkeypatch):
    from artifix.example.model import bundled_review

    opts = settings(tmp_path)
    at = open_page(monkeypatch, opts, "Approvals")
    button(at, "seed-review").click().run()
    assert not at.exception, at.exception
    store, run = run_of(opts)
    review = bundled_review()
    assert sorted(a.unit for a in store.approved_units(run)) == sorted(a["unit"] for a in review["approved"])
    assert store.counts(run)["labelled"] == 64 and set(store.flags(run).reviewer) == {review["reviewer"]}
    assert any(s.value.startswith("loaded the maintainers' review") for s in at.sidebar.success)
    # it stays, disabled, saying why (loaded only into an empty run), instead of vanishing after one click
    seed = button(at, "seed-review")
    assert seed.disabled and "loaded only into an empty run" in seed.help and "new --store" in seed.help
    assert any("Maintainers' review: this run already has labels" in c.value for c in at.sidebar.caption)
    # a run with labels of its own is never mixed with the bundled review
    opts2 = settings(tmp_path / "other")
    store2, run2 = run_of(opts2)
    store2.set_flag(run2, 3, "clean", "alice")
    at2 = open_page(monkeypatch, opts2, "Approvals")
    assert button(at2, "seed-review").disabled
    assert store2.counts(run2)["labelled"] == 1 and store2.unit_decisions(run2).empty
    # nor is a user's generator (its fingerprint is not the example's)
    from tests.conftest import GENS

    at3 = open_page(monkeypatch, settings(tmp_path / "third", generator=f"{GENS}:tiny_dcgan", latent="16,1,1", layer="main.8"), "Approvals")
    assert all(b.key != "seed-review" for b in at3.button)


def _manifest(with_sweep: bool) -> dict:
    met = {"a": 10.0, "b": 8.0, "diff": -2.0, "ci": [-2.5, -1.5]}
    ctl = {"a": 10.0, "b": 10.1, "diff": 0.1, "ci": [-0.3, 0.5]}
    rate = {"value": 0.1, "ci": [0.05, 0.15], "n": 100}
    m = {"layer": "main.8", "units": [5, 50], "selection": "approved", "random_control_units": [3, 9],
         "export": {"max_abs_diff": 0.0, "files": {"checkpoint": {"path": "/was/written/here/G.pt", "sha256": "0"}}},
         "metrics": {"n": 100, "repair": {"fd_effnetl0_100": met}, "control": {"fd_effnetl0_100": ctl},
                     "artifact_rate": {"before": rate, "after": {**rate, "value": 0.02}, "control": rate}}}
    if with_sweep:  # the format artifix.repair.sweep writes
        rows = [{"k": k, "units": [5, 50, 55][:k], "unit_added": [5, 50, 55][k - 1], "helped": k < 3,
                 "fd": {"name": "fd_effnetl0_100", "value": 10.0 - k, "ci": [9.0 - k, 11.0 - k], "marginal": -1.0, "marginal_ci": [-1.5, -0.5]},
                 "swd": {"name": "swd_100", "value": 5.0 - k / 2, "ci": [4.0 - k / 2, 6.0 - k / 2], "marginal": -0.5, "marginal_ci": [-1, 0]},
                 "artifact_rate": {"value": 0.1 / (k + 1), "ci": [0.0, 0.2], "n": 100, "marginal": -0.02, "marginal_ci": [-0.04, 0.0]}}
                for k in range(1, 4)]
        m["sweep"] = {"layer": "main.8", "order": [5, 50, 55], "criterion": "artifact_rate", "rows": rows, "k_best": 2,
                      "stopped_at": 3, "n": 100, "before_artifact_rate": {"value": 0.1, "ci": [0.05, 0.15], "n": 100}}
    return m


@pytest.mark.parametrize("with_sweep", [True, False])
def test_repair_page_shows_metrics_sweep_and_downloads(tmp_path, monkeypatch, with_sweep):
    opts = settings(tmp_path)
    out = Path(opts["out"])
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(_manifest(with_sweep)))
    (out / "report.md").write_text("# report\n")
    (out / "G.pt").write_bytes(b"weights")  # the cleaned generator next to the manifest (the folder may have moved)
    at = app(monkeypatch, opts, "Repair")
    table = at.dataframe[0].value
    assert list(table.metric) == ["fd_effnetl0_100", "artifact rate (random samples)"]
    assert table.loc[0, "change 95% CI"] == "[-2.500, -1.500]" and table.loc[0, "random control change"] == pytest.approx(0.1)
    charts = at.get("vega_lite_chart")
    if with_sweep:
        assert len(charts) == 1 and not any("No sweep" in i.value for i in at.info)
        from dashboard.page_repair import sweep_frame

        df = sweep_frame(_manifest(True))
        fd = df[df.metric == "fd"]
        assert list(fd.k) == [0, 1, 2, 3] and list(fd.value) == [10.0, 9.0, 8.0, 7.0]  # k = 0: value - marginal of k = 1
        ar = df[df.metric == "artifact_rate"]
        assert ar.value.iloc[0] == 0.1 and ar.lo.iloc[0] == 0.05  # the baseline rate with its interval
        assert any("k_best = 2" in c.value for c in at.caption)
    else:
        assert len(charts) == 0 and any("No sweep in this report" in i.value for i in at.info)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "report: report.md" in labels and "manifest: manifest.json" in labels
    assert "cleaned generator (checkpoint): G.pt" in labels


def test_repair_page_runs_the_repair_on_approved_units(tmp_path, monkeypatch):
    opts = settings(tmp_path)
    at = app(monkeypatch, opts, "Repair")
    assert button(at, "run-repair").disabled  # nothing approved: nothing can be removed
    store, run = run_of(opts)
    store.set_flags(run, {1: "artifact", 3: "clean"}, "alice")
    store.propose_units(run, [("main.8", 5), ("main.8", 50)], "artifix")
    store.decide_unit(run, "main.8", 5, "approved", "alice", "test")
    at.run()
    button(at, "run-repair").click().run()
    assert not at.exception, at.exception
    m = json.loads((Path(opts["out"]) / "manifest.json").read_text())
    assert m["units"] == [5] and m["selection"] == "approved" and m["approvals"][0]["reviewer"] == "alice"
    assert len(m["random_control_units"]) == 1 and m["random_control_units"] != [5]
    assert at.dataframe[0].value.shape[0] >= 1


def test_canvas_drawing_rasterises_to_the_image_mask():
    from dashboard.canvas import fabric_to_mask

    rect = {"type": "rect", "left": 50, "top": 100, "width": 45, "height": 20, "strokeWidth": 5, "scaleX": 1, "scaleY": 1}
    m = fabric_to_mask({"objects": [rect]}, (320, 320), (64, 64))
    want = np.zeros((64, 64), bool)
    want[20:25, 10:20] = True  # canvas (50..100, 100..125) / 5, stroke included
    assert np.array_equal(m, want)
    # a freehand stroke: path points in canvas pixels, 20 px wide, left/top offset by half the stroke
    path = {"type": "path", "left": 90, "top": 90, "width": 100, "height": 0, "strokeWidth": 20, "scaleX": 1, "scaleY": 1,
            "pathOffset": {"x": 150, "y": 100}, "path": [["M", 100, 100], ["L", 200, 100]]}
    m = fabric_to_mask({"objects": [path]}, (320, 320), (64, 64))
    ys, xs = np.nonzero(m)
    assert ys.min() >= 17 and ys.max() <= 22 and xs.min() >= 17 and xs.max() <= 42 and m.sum() > 60
    # the same stroke moved 50 px right in edit mode moves the mask 10 image pixels
    moved = fabric_to_mask({"objects": [{**path, "left": 140}]}, (320, 320), (64, 64))
    assert np.array_equal(np.roll(m, 10, axis=1), moved)
    assert not fabric_to_mask({"objects": []}, (320, 320), (64, 64)).any()


def test_another_painter_can_replace_the_canvas(tmp_path, monkeypatch):
    from dashboard import canvas

    calls = []

    def fake(image, key, mode, brush, scale):
        calls.append((image.shape, mode))
        return None

    canvas.register("fake", fake)
    assert canvas.paint_region(np.zeros((64, 64, 3), np.uint8), "k", painter="fake") is None
    assert calls == [((64, 64, 3), "paint")]


def test_launch_binds_localhost_with_xsrf_protection():
    from dashboard.state import resolve_settings

    opts = resolve_settings([], {})
    assert opts["host"] == "127.0.0.1"
    cmd = serve.launch_command(opts)
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboard/app.py")
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.enableXsrfProtection"] == "true"
    assert flags["--server.enableCORS"] == "true" and flags["--browser.gatherUsageStats"] == "false"
    # `streamlit run dashboard/app.py` from the checkout gets the same settings from .streamlit/config.toml
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1" and cfg["server"]["enableXsrfProtection"] is True
    # an explicit host is honoured, and the settings travel in the environment, not on the command line
    opts2 = resolve_settings(["--host", "0.0.0.0", "--store", "postgresql://u:secret@db/x"], {})
    cmd2 = serve.launch_command(opts2)
    assert "0.0.0.0" in cmd2 and not any("secret" in c for c in cmd2)
    assert "secret" in serve.launch_env(opts2, {})[serve.SETTINGS_ENV]
    assert not serve.is_local("0.0.0.0") and serve.is_local("127.0.0.1")


def test_dashboard_bad_port_is_a_user_error():
    from artifix.errors import UserError

    with pytest.raises(UserError, match="--port"):
        serve.launch_command({"host": "127.0.0.1", "port": 70000})


def test_plain_streamlit_run_checks_the_options_as_the_cli_does():
    """`streamlit run dashboard/app.py -- --pool 0` gets the CLI's sentence (the app shows it as its error)."""
    from artifix.errors import UserError
    from dashboard.state import resolve_settings
    from tests.conftest import run_cli

    with pytest.raises(UserError, match="--pool") as e:
        resolve_settings(["--pool", "0"], {})
    code, _, err = run_cli("dashboard", "--pool", "0")
    assert code == 2 and str(e.value) in err
