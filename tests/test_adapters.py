"""Generator adapters (issue 16): each family goes through layers, sample, flags import, score, repair and gate by CLI
flags alone, and the cleaned file, in the input's own format, reloads with the family's own code and matches the hooked
original within 1e-5.

Fixtures (tiny, 16 px, written at test time): a StyleGAN2-shaped network pickle whose classes are importable only from
a --code-path checkout copied to a temporary folder (tests/fixtures/stylegan_checkout: fake dnnlib / torch_utils); a
rosinality-shaped g_ema checkpoint (tests/fixtures/rosinality_like.py); a ProGAN state dict in GAN Dissection's layout
(written key by key, not with artifix's class); a class-conditional DCGAN (index input, embedding inside).
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from artifix.model.trace import Trace, ablation
from tests.conftest import FIXTURES, GENS, run_cli

ROS = FIXTURES / "rosinality_like.py"
ROS_KWARGS = '{"size": 16, "style_dim": 16, "n_mlp": 2}'
PSI = 0.7


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Reference images, flags, and one generator file per family."""
    d = tmp_path_factory.mktemp("families")
    rng = np.random.default_rng(0)
    np.savez(d / "real.npz", images=rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8))
    rows = ["sample,label,reviewer"] + [f"{i},artifact,alice" for i in range(6)] + [f"{i},clean,alice" for i in range(6, 12)]
    (d / "flags.csv").write_text("\n".join(rows) + "\n")
    # StyleGAN2: the checkout lives outside the repository and outside sys.path; the pickle is written by another process
    shutil.copytree(FIXTURES / "stylegan_checkout", d / "checkout")
    subprocess.run([sys.executable, "make_pickle.py", str(d / "network.pkl")], cwd=d / "checkout", check=True)
    # rosinality: the training script's checkpoint layout, args as an argparse.Namespace
    from tests.fixtures.rosinality_like import Generator

    torch.manual_seed(1)
    g = Generator(16, 16, 2)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.2)
    torch.save({"g": g.state_dict(), "d": {"w": torch.zeros(2)}, "g_ema": g.state_dict(), "g_optim": {"state": {}},
                "args": argparse.Namespace(size=16, latent=16, n_mlp=2)}, d / "ros.pt")
    # ProGAN (GAN Dissection layout): layer1 (z -> 4x4), layer2, layer3 (up) ... layer6, output_16x16
    torch.manual_seed(2)
    sizes = [(16, 16, 4), (16, 16, 3), (16, 8, 3), (8, 8, 3), (8, 8, 3), (8, 8, 3)]
    sd = {}
    for i, (cin, cout, k) in enumerate(sizes, 1):
        sd[f"layer{i}.conv.weight"] = torch.randn(cout, cin, k, k)
        sd[f"layer{i}.wscale.b"] = torch.randn(cout) * 0.1
    sd["output_16x16.conv.weight"] = torch.randn(3, 8, 1, 1)
    sd["output_16x16.wscale.b"] = torch.zeros(3)
    torch.save(sd, d / "proggan.pth")
    # class-conditional (module adapter)
    from tests.fixtures.gens import cond_conv_gen

    torch.manual_seed(3)
    c = cond_conv_gen()
    with torch.no_grad():
        for m in c.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"netG_state_dict": c.state_dict()}, d / "cond.pt")
    yield d
    _forget_checkout(d / "checkout")


def _forget_checkout(path: Path) -> None:
    """Take the fake checkout off sys.path and out of sys.modules, so later tests see a clean interpreter."""
    sys.path[:] = [p for p in sys.path if Path(p) != path.resolve()]
    for name in [n for n in sys.modules if n.split(".")[0] in ("dnnlib", "torch_utils", "training") or n.startswith("_imported_module_")]:
        del sys.modules[name]


FAMILIES = {
    "stylegan": lambda d: ["--checkpoint", str(d / "network.pkl"), "--trust-pickle", "--code-path", str(d / "checkout"),
                           "--truncation", str(PSI)],
    "rosinality": lambda d: ["--adapter", "rosinality", "--generator", f"{ROS}:Generator", "--kwargs", ROS_KWARGS,
                             "--checkpoint", str(d / "ros.pt"), "--truncation", str(PSI)],
    "proggan": lambda d: ["--checkpoint", str(d / "proggan.pth")],
    "conditional": lambda d: ["--generator", f"{GENS}:cond_conv_gen", "--checkpoint", str(d / "cond.pt"), "--latent", "8",
                              "--classes", "3"],
}
LAYER = {"conditional": ["--layer", "main.4"]}  # a plain module has no default layer: name one (commands that hook)
DEFAULT = {"stylegan": "synthesis.b16.conv1", "rosinality": "convs.3", "proggan": "layer4", "conditional": "main.4"}
CLEANED = {"stylegan": "network.pkl", "rosinality": "ros.pt", "proggan": "proggan.pth", "conditional": "cond.pt"}


def test_stylegan_pickle_needs_trust_and_code_path(world):
    """Without --trust-pickle: refused before unpickling; without --code-path: the missing module is named."""
    code, _, err = run_cli("layers", "--checkpoint", str(world / "network.pkl"))
    assert code == 2 and "--trust-pickle" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("layers", "--checkpoint", str(world / "network.pkl"), "--trust-pickle")
    assert code == 2 and "'torch_utils'" in err and "--code-path" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_through_every_command(world, family, tmp_path, one_torch_thread):
    """layers -> sample -> flags import -> score -> repair (cleaned file in the input's format) -> gate, CLI flags only."""
    gen = FAMILIES[family](world)
    store = ["--store", str(tmp_path / "labels.sqlite"), *LAYER.get(family, [])]
    code, out, err = run_cli("layers", *gen, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["default_layer"] == (None if family == "conditional" else DEFAULT[family])
    assert res["adapter"] == ("module" if family == "conditional" else family)
    assert DEFAULT[family] in [r["layer"] for r in res["layers"]]

    code, out, err = run_cli("sample", *gen, "--n", "8", "--grid", str(tmp_path / "grid.png"), "--json")
    assert code == 0, err
    assert json.loads(out)["image_shape"] == [16, 16, 3] and (tmp_path / "grid.png").is_file()

    code, out, err = run_cli("flags", "import", str(world / "flags.csv"), *gen, *store, "--json")
    assert code == 0, err
    assert json.loads(out)["counts"]["artifact"] == 6

    scoring = ["--stats-n", "24", "--exact-top", "3", "--top", "3"]
    code, out, err = run_cli("score", *gen, *store, *scoring, "--out", str(tmp_path / "score"), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["layer"] == DEFAULT[family] and len(res["top"]) == 3

    rep = tmp_path / "rep"
    code, out, err = run_cli("repair", *gen, *store, *scoring, "--auto", "--k", "2", "--repair-n", "8", "--high-pool", "0",
                             "--collateral-n", "0", "--real", str(world / "real.npz"), "--out", str(rep), "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["export"]["exact"] and m["export"]["max_abs_diff"] <= 1e-5, m["export"]["note"]
    cleaned = rep / CLEANED[family]
    assert cleaned.is_file() and not (rep / f"{cleaned.stem}.torchscript.pt").exists()
    diff, change = RELOAD[family](world, cleaned, m["layer"], m["units"])
    assert diff <= 1e-5, f"cleaned {family} file differs from the hooked original by {diff}"
    assert change > 1e-3, "the removal changed nothing: the comparison would not catch a missing edit"

    cand = [a if a != str(world / CLEANED[family]) else str(cleaned) for a in gen]
    crit = json.dumps([{"metric": "units_removed", "manifest": str(rep / "manifest.json")}, {"metric": "fd", "tier": "warn"}])
    code, out, err = run_cli("gate", *cand, "--baseline", str(world / CLEANED[family]), "--criteria", crit, "--real",
                             str(world / "real.npz"), "--n", "8", "--bootstrap", "2", "--swd-n", "8", "--out", str(tmp_path / "gate"),
                             "--json")
    assert code == 0, err
    units = next(v for k, v in json.loads(out)["measurements"].items() if k.startswith("units_removed"))
    assert units["candidate"]["value"] == 0 and units["max_pixel_change"] == 0


# ---------------------------------------------------------------------------- reload with the family's own code


def _latents(n: int = 16, dim: int = 16, seed: int = 5) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))


def _compare(original, cleaned, layer: str, units: list[int], run) -> tuple[float, float]:
    """(max |cleaned - original hooked|, max |cleaned - original|), both through `run(model)` (the family's own call)."""
    with torch.no_grad():
        plain = run(original)
        with Trace(original, edit={layer: ablation(units)}, retain=False):
            hooked = run(original)
        got = run(cleaned)
    return float((got - hooked).abs().max()), float((got - plain).abs().max())


def _reload_stylegan(world: Path, cleaned: Path, layer: str, units: list[int]) -> tuple[float, float]:
    with open(world / "network.pkl", "rb") as fh:
        before = pickle.load(fh)  # the checkout is on sys.path: the CLI put it there
    with open(cleaned, "rb") as fh:
        after = pickle.load(fh)
    assert list(after) == list(before)  # same dict: G, D, G_ema, augment_pipe, training_set_kwargs
    assert all(torch.equal(a, b) for a, b in zip(after["D"].state_dict().values(), before["D"].state_dict().values()))
    z = _latents()
    run = lambda g: g(z, torch.zeros(16, 0), truncation_psi=PSI, noise_mode="const")  # noqa: E731
    return _compare(before["G_ema"].eval(), after["G_ema"].eval(), layer, units, run)


def _reload_rosinality(world: Path, cleaned: Path, layer: str, units: list[int]) -> tuple[float, float]:
    from tests.fixtures.rosinality_like import Generator

    with torch.serialization.safe_globals([argparse.Namespace]):
        ck, orig = torch.load(cleaned, weights_only=True), torch.load(world / "ros.pt", weights_only=True)
    assert set(ck) == set(orig) and ck["args"] == orig["args"]
    models = []
    for sd in (orig["g_ema"], ck["g_ema"]):
        g = Generator(16, 16, 2).eval()
        g.load_state_dict(sd, strict=True)
        models.append(g)
    z = _latents()
    with torch.no_grad():
        mean = models[0].style(torch.from_numpy(np.random.default_rng(0).standard_normal((4096, 16)).astype(np.float32))).mean(0, keepdim=True)
    run = lambda g: g([z], truncation=PSI, truncation_latent=mean, randomize_noise=False)[0]  # noqa: E731
    return _compare(models[0], models[1], layer, units, run)


def _reload_proggan(world: Path, cleaned: Path, layer: str, units: list[int]) -> tuple[float, float]:
    from artifix.adapters.proggan import ProgressiveGenerator

    sd, orig = torch.load(cleaned, weights_only=True), torch.load(world / "proggan.pth", weights_only=True)
    assert list(sd) == list(orig)  # a plain state dict with GAN Dissection's names, as it came in
    models = []
    for s in (orig, sd):
        g = ProgressiveGenerator(s).eval()
        g.load_state_dict(s, strict=True)
        models.append(g)
    z = _latents()
    return _compare(models[0], models[1], layer, units, lambda g: g(z))


def _reload_conditional(world: Path, cleaned: Path, layer: str, units: list[int]) -> tuple[float, float]:
    from tests.fixtures.gens import cond_conv_gen

    models = []
    for path in (world / "cond.pt", cleaned):
        g = cond_conv_gen().eval()
        g.load_state_dict(torch.load(path, weights_only=True)["netG_state_dict"], strict=True)
        models.append(g)
    z, y = _latents(dim=8), torch.arange(16) % 3
    return _compare(models[0], models[1], layer, units, lambda g: g(z, y))


RELOAD = {"stylegan": _reload_stylegan, "rosinality": _reload_rosinality, "proggan": _reload_proggan,
          "conditional": _reload_conditional}


def test_stylegan_layer_behind_demodulation_exports_verified_torchscript(world, tmp_path):
    """b8.conv1 feeds b16.conv0 (demodulated): no weight change is exact, so the export is a verified TorchScript module."""
    from artifix.repair.export import export_cleaned
    from artifix.model.generator import load_generator, spec_from_options

    g = load_generator(spec_from_options({"checkpoint": str(world / "network.pkl"), "trust_pickle": True,
                                          "code_path": str(world / "checkout")}))
    res = export_cleaned(g, {"synthesis.b8.conv1": [1, 2]}, tmp_path / "out", n=8)
    assert res.layout == "torchscript" and "demodulated" in res.note and res.max_abs_diff <= 1e-5
    assert not (tmp_path / "out" / "network.pkl").exists()
    ts = torch.jit.load(res.files["torchscript"]["path"])
    z = _latents(1)
    with torch.no_grad(), Trace(g.module, edit={"synthesis.b8.conv1": ablation([1, 2])}, retain=False):
        want = g(z)
    assert float((ts(z) - want).abs().max()) <= 1e-5
