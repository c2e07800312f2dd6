"""The Review page's kept first page (dashboard/first_page.py): drawn without torch, label buttons that save, and no
snapshot once anything it came from has changed."""

from __future__ import annotations

import os

import pytest

from artifix.labels import LabelStore

FP = "f" * 16


def _script(opts: dict, run_id: int) -> None:
    """AppTest script: keep a page once (as the full Review page does), then draw it as a restarted dashboard would."""
    from types import SimpleNamespace

    import numpy as np
    import streamlit as st

    from dashboard import first_page

    if "kept" not in st.session_state:
        g = SimpleNamespace(fingerprint=opts["fp"], spec=SimpleNamespace(checkpoint=opts["ckpt"], code_path=None, generator="pkg.mod:make"))
        q = SimpleNamespace(order="cold start", priors={i: 0.5 - 0.1 * i for i in range(5)}, probability=None)
        first_page.save(opts["cache"], opts, g, run_id, "main.8", q, [0, 1, 2], np.full((3, 8, 8, 3), 200, np.uint8))
        st.session_state["kept"] = True
    st.session_state["drawn"] = first_page.draw(opts, st.empty())


@pytest.fixture()
def setup(tmp_path):
    ckpt = tmp_path / "G.pt"
    ckpt.write_bytes(b"weights")
    store = LabelStore(str(tmp_path / "l.sqlite"))
    run_id = store.register_run(FP, ["main.8"], 0, 10)
    opts = {"store": str(tmp_path / "l.sqlite"), "cache": str(tmp_path / "cache"), "classifier": str(tmp_path / "none.pt"),
            "pool": 10, "start": 0, "page_size": 3, "reviewer": "alice", "fp": FP, "ckpt": str(ckpt)}
    return opts, run_id, store, ckpt


def _app(opts: dict, run_id: int):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_function(_script, args=(opts, run_id), default_timeout=60)


def test_the_kept_page_is_drawn_and_its_label_buttons_save(setup):
    opts, run_id, store, _ = setup
    at = _app(opts, run_id).run()
    assert not at.exception and at.session_state["drawn"] is True
    assert [h.value for h in at.header] == ["Review"]
    assert at.button(key="next-batch").disabled and "still loading" in at.button(key="next-batch").help
    assert at.session_state[f"batch-{run_id}"] == [0, 1, 2]  # the full page continues with this batch
    at.button(key="flag-1-artifact").click().run()
    flags = store.flags(run_id)
    assert flags.set_index("sample").loc[1, "label"] == "artifact" and store.reviewer_flags(run_id, "alice")["sample"].tolist() == [1]


def test_no_kept_page_once_its_checkpoint_changed(setup):
    opts, run_id, _, ckpt = setup
    at = _app(opts, run_id).run()
    assert at.session_state["drawn"] is True
    ckpt.write_bytes(b"retrained weights")
    os.utime(ckpt, ns=(1, 1))
    at.run()
    assert at.session_state["drawn"] is False


def test_no_kept_page_for_other_settings_or_another_generator(setup):
    from dashboard import first_page

    opts, run_id, _, _ = setup
    at = _app(opts, run_id).run()
    assert at.session_state["drawn"] is True
    assert first_page.load({**opts, "seed": 1}) is None  # other settings: another key
    assert first_page.load({**opts, "port": 9000}) is not None  # where it listens does not change the page
    # a page kept for another generator than the run's (its fingerprint changed): not drawn
    other = {**opts, "fp": "0" * 16, "cache": opts["cache"] + "-2"}
    at2 = _app(other, run_id).run()
    assert at2.session_state["drawn"] is False
