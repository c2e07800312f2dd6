"""The adapter registry: --adapter names, plugins from the artifix.adapters entry-point group, TorchScript refusals."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import artifix.adapters as A
from tests.conftest import GENS, run_cli


def test_unknown_adapter_is_one_sentence():
    code, out, err = run_cli("sample", "--adapter", "stylegan4", "--checkpoint", "x.pkl")
    assert code == 2 and not out and len(err.strip().splitlines()) == 1
    assert "unknown --adapter 'stylegan4'" in err and "stylegan" in err and "rosinality" in err


def test_torchscript_samples_but_refuses_hooks(tmp_path, tiny_ckpt):
    from artifix.model.generator import load_generator, spec_from_options

    g = load_generator(spec_from_options({"generator": f"{GENS}:tiny_dcgan", "checkpoint": str(tiny_ckpt), "latent": "16,1,1"}))
    assert g.adapter.name == "module"
    ts = tmp_path / "g.ts"
    torch.jit.trace(g.module, torch.zeros(8, 16, 1, 1)).save(str(ts))
    gen = ["--generator", str(ts), "--latent", "16,1,1"]
    code, out, err = run_cli("sample", *gen, "--n", "4", "--grid", str(tmp_path / "s.png"), "--json")
    assert code == 0, err
    store = ["--store", str(tmp_path / "l.sqlite")]
    for cmd in (["score", "--layer", "main.3", *store], ["layers"], ["repair", "--layer", "main.3", *store], ["flags", "show", *store],
                ["sample", "--layer", "main.3", "--ablate", "1"]):
        code, out, err = run_cli(*cmd, *gen)
        assert code == 2 and "TorchScript file cannot carry them" in err and len(err.strip().splitlines()) == 1, (cmd, err)
    assert not (tmp_path / "l.sqlite").exists()
    code, _, err = run_cli("sample", "--adapter", "torchscript", "--generator", f"{GENS}:tiny_dcgan", "--latent", "16,1,1")
    assert code == 2 and "needs a TorchScript file" in err


PLUGIN = '''
import torch
from torch import nn
from artifix.adapters.base import Adapter, finish
from dataclasses import replace


class Doubler(nn.Module):
    def __init__(self):
        super().__init__()
        self.lift = nn.Conv2d(4, 3, 1)

    def forward(self, z):
        return torch.tanh(self.lift(z.view(-1, 4, 1, 1).repeat(1, 1, 8, 8)))


class FakeAdapter(Adapter):
    name = "fakegan"

    def detect(self, spec):
        return bool(spec.checkpoint) and spec.checkpoint.endswith(".fake")

    def load(self, spec):
        torch.manual_seed(0)
        return finish(Doubler(), replace(spec, latent=(4,)), self)

    def default_layers(self, module):
        return ["lift"]
'''


@pytest.fixture
def plugin(tmp_path):
    """A package declaring an adapter in the artifix.adapters entry-point group (an installed .dist-info)."""
    (tmp_path / "fakeplug.py").write_text(PLUGIN)
    info = tmp_path / "fakeplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[artifix.adapters]\nfakegan = fakeplug:FakeAdapter\n")
    sys.path.insert(0, str(tmp_path))
    A._registry.clear()
    A._plugins_loaded = False
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("fakeplug", None)
    A._registry.clear()
    A._plugins_loaded = False


def test_entry_point_plugin_is_registered_and_detected(plugin):
    assert "fakegan" in A.names() and A.names()[:5] == ["module", "torchscript", "stylegan", "rosinality", "proggan"]
    (plugin / "g.fake").write_text("")
    code, out, err = run_cli("layers", "--checkpoint", str(plugin / "g.fake"), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["adapter"] == "fakegan" and res["default_layer"] == "lift"
    code, out, err = run_cli("sample", "--adapter", "fakegan", "--checkpoint", str(plugin / "g.fake"), "--n", "2",
                             "--grid", str(plugin / "s.png"), "--json")
    assert code == 0, err
    assert json.loads(out)["image_shape"] == [8, 8, 3]
