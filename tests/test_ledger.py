"""Feature ledger: each image set rendered and extracted once per run; before-sets reused from disk by a second repair."""

import numpy as np
import pytest

from artifix.model.generator import images_at, load_generator
from artifix.ledger import Ledger, edit_key, set_key
from artifix.metrics import features as FE
from artifix.metrics.extractor import Extractor
from artifix.metrics.reference import load_real
from artifix.repair import RepairPlan, measure
from artifix.example.scenes import render
from artifix.model.trace import Trace, ablation


@pytest.fixture(scope="module")
def g():
    return load_generator()


@pytest.fixture
def counted(monkeypatch):
    """Count the images that pass through any feature extractor."""
    calls = {"images": 0}
    real_call = Extractor.__call__

    def call(self, images):
        calls["images"] += len(images)
        return real_call(self, images)

    monkeypatch.setattr(Extractor, "__call__", call)
    return calls


def test_keys_name_the_edit_seed_and_indices():
    a, b = {"main.8": ablation([1, 2])}, {"main.8": ablation([1, 2], 0.5)}
    assert edit_key(None) == "" and edit_key(a) != edit_key(b)
    keys = {set_key("fp", e, s, ids) for e, s, ids in [(None, 0, [0, 1]), (a, 0, [0, 1]), (None, 1, [0, 1]), (None, 0, [1, 0])]}
    assert len(keys) == 4


def test_images_are_rendered_once_and_match_the_generator(g, tmp_path):
    led = Ledger(g, 0, cache=tmp_path)
    edit = {"main.8": ablation([3, 9])}
    first = led.images(edit, [4, 1, 7])
    again = led.images(edit, [4, 1, 7])
    assert again is first and led.renders == 3
    with Trace(g.module, edit=edit):
        assert np.array_equal(first, images_at(g, 0, [4, 1, 7]))


def test_second_repair_reuses_the_cached_before_features(g, tmp_path, counted):
    n = 12
    real = load_real(render(1, 0, n).images, FE.get_extractor(None), swd_n=n)  # reference statistics, extracted up front
    counted["images"] = 0
    plan = RepairPlan({"main.8": [13, 19]}, "auto")
    control = {"main.8": [2, 5]}
    kw = dict(seed=0, n=n, flagged=[], real=real, metrics="fd,swd", cache=str(tmp_path), say=lambda m: None)
    first = measure(g, plan, control, **kw)
    used_first = counted["images"]
    # before, after, control: every set extracted once ('before' not twice, the classifier would read the same rows)
    assert used_first == 3 * n and first["ledger"]["extracted"] == 3 * n
    counted["images"] = 0
    second = measure(g, plan, control, **kw)
    # a fresh run: the before set's images and features come from the disk cache; only after and control are extracted
    assert second["ledger"]["disk_hits"] == 2 and second["ledger"]["rendered"] == 2 * n
    assert counted["images"] == 2 * n and second["ledger"]["extracted"] == 2 * n
    for name in first["repair"]:
        assert second["repair"][name]["diff"] == pytest.approx(first["repair"][name]["diff"], rel=1e-9)
