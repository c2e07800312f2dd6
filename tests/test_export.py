"""Export: baking ablations into weights equals the hooked ablation; cleaned checkpoints keep the user's layout."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from artifix.errors import UserError
from artifix.example.model import Generator
from artifix.repair.bake import bake_ablation, bake_edits
from artifix.repair.export import export_cleaned
from artifix.repair.verification import verify
from artifix.model.generator import GeneratorSpec, LoadedGenerator, latents, load_generator, spec_from_options
from artifix.io import sha256_file
from artifix.model.trace import Trace, ablation
from tests.conftest import GENS

TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
ALPHAS = [1.0, [0.3, 0.75]]  # full ablation; partial strengths for units (1, 4)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights and BN running statistics (so BN folding is really exercised), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.3
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.2
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.5
            m.running_var = torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5
    return model.eval()


class Net(nn.Module):
    """A custom root around a Sequential, as most generators are."""

    def __init__(self, *mods: nn.Module) -> None:
        super().__init__()
        self.net = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def chain(consumer: str, bn_between: bool) -> Net:
    """ConvT -> BN -> ReLU (the layer, net.2) -> [BN] -> consumer; 6 channels at the layer."""
    head = [nn.ConvTranspose2d(8, 6, 4, 1, 0, bias=False), nn.BatchNorm2d(6), nn.ReLU()]
    mid = [nn.BatchNorm2d(6)] if bn_between else []
    tail = {
        "convtranspose": [nn.ConvTranspose2d(6, 3, 4, 2, 1, bias=True), nn.Tanh()],
        "conv": [nn.Conv2d(6, 3, 3, 1, 1, bias=True), nn.Tanh()],
        "linear": [nn.Flatten(), nn.Linear(6 * 4 * 4, 12)],
    }[consumer]
    return randomize(Net(*head, *mid, *tail))


def z8(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 8, 1, 1, generator=torch.Generator().manual_seed(seed))


def hooked(model: nn.Module, edits: dict, *args: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), Trace(model, edit={k: ablation(u, a) for k, (u, a) in edits.items()}):
        return model(*args)


def effect(a: nn.Module, b: nn.Module, z: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(z) - b(z)).abs().max())


@pytest.mark.parametrize("alpha", ALPHAS, ids=["full", "partial"])
@pytest.mark.parametrize("bn_between", [False, True], ids=["direct", "bn-between"])
@pytest.mark.parametrize("consumer", ["convtranspose", "conv", "linear"])
def test_baking_equals_hooked_ablation(consumer, bn_between, alpha):
    model = chain(consumer, bn_between)
    res = bake_ablation(model, "net.2", [1, 4], alpha)
    assert res.exact, res.reason
    lb = res.layers[0]
    if bn_between:
        assert (lb.method, lb.edited) == ("fold-batchnorm", ("net.3.weight", "net.3.bias"))
    else:
        assert lb.method == "scale-input" and lb.edited == (f"net.{4 if consumer == 'linear' else 3}.weight",)
    z = z8()
    with torch.no_grad():
        diff = float((res.model(z) - hooked(model, {"net.2": ([1, 4], alpha)}, z)).abs().max())
    assert diff <= TOL and verify(model, res.model, "net.2", [1, 4], alpha, inputs=z) == pytest.approx(diff, abs=1e-9)
    assert effect(model, res.model, z) > 1e-2  # the edit really changes G
    untouched = chain(consumer, bn_between).state_dict()  # same seed: the original model is not modified
    assert all(torch.equal(v, untouched[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bn_between", [False, True], ids=["direct", "bn-between"])
def test_linear_on_2d_activations_needs_and_uses_the_shape(bn_between):
    model = randomize(Net(nn.Linear(8, 10), nn.ReLU(), *([nn.BatchNorm1d(10)] if bn_between else []), nn.Linear(10, 5)))
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    if not bn_between:
        blind = bake_ablation(model, "net.1", [2, 7], 1.0)
        assert not blind.exact and "example" in blind.reason
    res = bake_ablation(model, "net.1", [2, 7], [1.0, 0.4], example=z[:8])
    assert res.exact, res.reason
    assert verify(model, res.model, "net.1", [2, 7], [1.0, 0.4], inputs=z) <= TOL
    assert effect(model, res.model, z) > 1e-2
    # the Linear producer itself: its output rows
    res = bake_ablation(model, "net.0", [3], 0.5, example=z[:8])
    assert res.exact and res.layers[0].edited == ("net.0.weight", "net.0.bias")
    assert verify(model, res.model, "net.0", [3], 0.5, inputs=z) <= TOL


@pytest.mark.parametrize("alpha", ALPHAS, ids=["full", "partial"])
@pytest.mark.parametrize("layer,method,edited", [
    ("main.3", "scale-output", ("main.3.weight",)),  # ConvTranspose output (feeds BN)
    ("main.4", "scale-output", ("main.4.weight", "main.4.bias")),  # BN output
    ("main.5", "scale-input", ("main.6.weight",)),  # ReLU output
])
def test_example_dcgan_layers(layer, method, edited, alpha):
    g = randomize(Generator(nz=16, ngf=4))
    z = torch.randn(64, 16, 1, 1, generator=torch.Generator().manual_seed(2))
    res = bake_ablation(g, layer, [1, 4], alpha, example=z[:8])
    assert res.exact and (res.layers[0].method, res.layers[0].edited) == (method, edited)
    assert verify(g, res.model, layer, [1, 4], alpha, inputs=z) <= TOL
    assert effect(g, res.model, z) > 1e-2


def test_refusals_are_not_guesses():
    relu = nn.ReLU()  # one ReLU object used twice: its hook edits both uses
    shared = randomize(Net(nn.ConvTranspose2d(8, 6, 4), relu, nn.ConvTranspose2d(6, 6, 3), relu, nn.ConvTranspose2d(6, 3, 3)))
    res = bake_ablation(shared, "net.1", [0])
    assert not res.exact and "more than once" in res.reason
    tanh = chain("conv", False)
    tanh.net[2] = nn.Tanh()
    assert bake_ablation(tanh, "net.2", [0]).exact  # the conv after it still absorbs a scale of tanh's output
    tanh.net.insert(3, nn.Tanh())  # tanh(s x) != s tanh(x): nothing can be passed
    res = bake_ablation(tanh, "net.2", [0])
    assert not res.exact and "Tanh" in res.reason
    sn = chain("conv", False)
    sn.net[3] = nn.utils.parametrizations.spectral_norm(sn.net[3])
    res = bake_ablation(sn, "net.3", [0])  # the spectral-normed conv's own output, followed by Tanh
    assert not res.exact and "parametrized" in res.reason
    res = bake_ablation(sn, "net.2", [0, 2], 0.5)  # its input: the BN behind the ReLU takes the edit instead
    assert res.exact and res.layers[0].method == "scale-output-behind" and res.layers[0].edited == ("net.1.weight", "net.1.bias")
    assert verify(sn, res.model, "net.2", [0, 2], 0.5, inputs=z8()) <= TOL
    train_bn = chain("conv", True).train()
    res = bake_ablation(train_bn, "net.2", [0])  # ReLU -> BN (batch statistics) -> conv
    assert res.layers[0].method == "scale-output-behind"  # the first BN scales exactly, even in training mode
    train_bn.net[1] = nn.BatchNorm2d(6, affine=False)
    res = bake_ablation(train_bn, "net.2", [0])
    assert not res.exact and "batch statistics" in res.reason and "no affine" in res.reason


def test_units_and_alpha_are_checked():
    g = randomize(Generator(nz=16, ngf=4))
    with pytest.raises(UserError, match="out of range"):
        bake_ablation(g, "main.5", [3, 16])  # 16 channels there (0..15), known from the consumer
    with pytest.raises(UserError, match="out of range"):
        bake_ablation(g, "main.4", [99], example=torch.randn(8, 16, 1, 1))
    with pytest.raises(UserError, match="outside"):
        bake_ablation(g, "main.5", [3], 1.5)
    with pytest.raises(UserError, match="twice"):
        bake_ablation(g, "main.5", [3, 3])
    with pytest.raises(UserError, match="not in the generator"):
        bake_ablation(g, "main.55", [3])


# ------------------------------------------------------------------------------------------ export


def tiny_spec(ckpt, **kw) -> GeneratorSpec:
    return spec_from_options({"generator": f"{GENS}:tiny_dcgan", "checkpoint": str(ckpt), "latent": "16,1,1", **kw})


@pytest.fixture
def rand_ckpt(tmp_path):
    """A DCGAN-tutorial-style checkpoint {'netG_state_dict', 'netD_state_dict', 'epoch'} whose G reacts strongly to edits."""
    path = tmp_path / "ckpt.pt"
    netd = {"main.0.weight": torch.randn(4, 3, 4, 4), "main.2.running_mean": torch.zeros(8)}
    torch.save({"netG_state_dict": randomize(Generator(nz=16, ngf=4), seed=5).state_dict(), "netD_state_dict": netd,
                "epoch": 3}, path)
    return path


def test_export_keeps_dict_layout_and_reproduces_hooked(tmp_path, rand_ckpt):
    g = load_generator(tiny_spec(rand_ckpt))
    edits = {"main.5": ([0, 3], [1.0, 0.3]), "main.4": ([2], 0.6)}
    res = export_cleaned(g, edits, tmp_path / "out")
    assert res.exact and res.max_abs_diff <= TOL and res.layout == "state_dict at netG_state_dict"
    assert {k: v["method"] for k, v in res.layers.items()} == {"main.5": "scale-input", "main.4": "scale-output"}
    out = json.loads((tmp_path / "out" / "export.json").read_text())
    assert out == json.loads(json.dumps(res.to_json()))
    assert res.input == {"path": str(rand_ckpt), "sha256": sha256_file(rand_ckpt)}
    for f in res.files.values():
        assert sha256_file(f["path"]) == f["sha256"]
    assert set(res.files) == {"checkpoint", "safetensors"}

    ckpt = res.files["checkpoint"]["path"]
    assert ckpt.endswith("/ckpt.pt")
    before = torch.load(rand_ckpt, weights_only=True)
    after = torch.load(ckpt, weights_only=True)
    assert list(after) == list(before) and after["epoch"] == 3
    assert all(torch.equal(after["netD_state_dict"][k], v) for k, v in before["netD_state_dict"].items())
    sd = after["netG_state_dict"]
    assert list(sd) == list(before["netG_state_dict"])
    changed = {k for k in sd if not torch.equal(sd[k], before["netG_state_dict"][k])}
    assert changed == {"main.6.weight", "main.4.weight", "main.4.bias"}

    fresh = Generator(nz=16, ngf=4)
    fresh.load_state_dict(sd, strict=True)
    fresh.eval()
    z, _ = latents(g.spec, seed=7, indices=range(64))  # other latents than the export's own check
    with torch.no_grad():
        diff = float((fresh(z) - hooked(g.module, edits, z)).abs().max())
        assert diff <= TOL and effect(fresh, g.module, z) > 1e-2
        from_sft = Generator(nz=16, ngf=4).eval()
        from_sft.load_state_dict(load_file(res.files["safetensors"]["path"]), strict=True)
        assert torch.equal(from_sft(z), fresh(z))
    # the bundled loader takes the cleaned checkpoint unchanged
    assert torch.equal(load_generator(tiny_spec(ckpt)).module.main[6].weight, sd["main.6.weight"])


@pytest.mark.parametrize("fmt", ["plain.pt", "gen.safetensors"])
def test_export_plain_and_safetensors_layouts(tmp_path, rand_ckpt, fmt):
    sd = torch.load(rand_ckpt, weights_only=True)["netG_state_dict"]
    src = tmp_path / fmt
    if fmt.endswith(".safetensors"):
        save_file(sd, str(src), metadata={"note": "kept"})
    else:
        torch.save(sd, src)
    g = load_generator(tiny_spec(src))
    res = export_cleaned(g, {"main.8": [1, 2]}, tmp_path / "out")
    assert res.exact and res.max_abs_diff <= TOL
    path = res.files["checkpoint"]["path"]
    assert path.endswith("/" + fmt)
    if fmt.endswith(".safetensors"):
        assert res.files["safetensors"]["path"] == path
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            assert fh.metadata() == {"note": "kept"}
        out = load_file(path)
    else:
        out = torch.load(path, weights_only=True)
        assert isinstance(out, dict) and set(out) == set(sd)
        assert set(load_file(res.files["safetensors"]["path"])) == set(sd)
    fresh = Generator(nz=16, ngf=4).eval()
    fresh.load_state_dict(out, strict=True)
    z, _ = latents(g.spec, seed=3, indices=range(16))
    with torch.no_grad():
        assert float((fresh(z) - hooked(g.module, {"main.8": ([1, 2], 1.0)}, z)).abs().max()) <= TOL


class ResGen(nn.Module):
    """fc -> act -> h + block(h) -> out: the activation at 'act' feeds both the block and the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.ConvTranspose2d(8, 6, 4, 1, 0)
        self.act = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, 1, 1), nn.ReLU())
        self.out = nn.Conv2d(6, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(z))
        h = h + self.block(h)
        return torch.tanh(self.out(h))


def test_residual_add_gives_torchscript_export(tmp_path):
    model = randomize(ResGen())
    res = bake_ablation(model, "act", [1, 2], example=z8(8))
    assert not res.exact and res.model is None and "custom forward() of ResGen" in res.reason
    inside = bake_ablation(model, "block.1", [1, 2], [1.0, 0.5], example=z8(8))  # inside the block: the conv absorbs it
    assert inside.exact and inside.layers[0].method == "scale-output-behind"
    assert verify(model, inside.model, "block.1", [1, 2], [1.0, 0.5], inputs=z8()) <= TOL

    g = LoadedGenerator(model, GeneratorSpec(latent=(8, 1, 1)), "test")
    out = export_cleaned(g, {"act": ([1, 2], [1.0, 0.5])}, tmp_path / "out")
    assert not out.exact and set(out.files) == {"torchscript"} and out.layout == "torchscript"
    assert "cannot be baked" in out.note and "custom forward()" in out.note and out.max_abs_diff <= TOL
    assert not (tmp_path / "out" / "generator.pt").exists()
    ts = torch.jit.load(out.files["torchscript"]["path"])
    z = z8(5, seed=9)  # another batch size than the traced one
    with torch.no_grad():
        want = hooked(model, {"act": ([1, 2], [1.0, 0.5])}, z)
        assert float((ts(z) - want).abs().max()) <= TOL
        assert float((model(z) - want).abs().max()) > 1e-2


def test_export_refuses_bad_input(tmp_path, rand_ckpt):
    g = load_generator(tiny_spec(rand_ckpt))
    with pytest.raises(UserError, match="out of range"):
        export_cleaned(g, {"main.5": [16]}, tmp_path / "out")
    with pytest.raises(UserError, match="overwrite the original"):
        export_cleaned(g, {"main.5": [1]}, rand_ckpt.parent)
    other = tmp_path / "other.pt"
    torch.save({"netG_state_dict": {k: v + 1 for k, v in g.module.state_dict().items()}}, other)
    with pytest.raises(UserError, match="differ from the loaded generator"):
        export_cleaned(g, {"main.5": [1]}, tmp_path / "out", checkpoint_layout_from=other)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bake_edits_composes_layers_sharing_a_module():
    g = randomize(Generator(nz=16, ngf=4))
    edits = {"main.5": ([1, 4], [0.5, 1.0]), "main.6": ([0, 2], 0.25), "main.7": ([3], 0.5)}  # main.6 is consumer and producer
    z = torch.randn(64, 16, 1, 1, generator=torch.Generator().manual_seed(4))
    res = bake_edits(g, edits, example=z[:8])
    assert res.exact, res.reason
    assert verify(g, res.model, edits, inputs=z) <= TOL


def test_conditional_generator_linear_and_embedding_producers(tmp_path):
    from tests.fixtures.gens import cond_gen

    torch.manual_seed(0)
    path = tmp_path / "cond.pt"
    torch.save(cond_gen().state_dict(), path)
    g = load_generator(spec_from_options({"generator": f"{GENS}:cond_gen", "checkpoint": str(path), "latent": "8", "classes": 4}))
    res = export_cleaned(g, {"fc": ([1, 2, 100], 0.3), "embed": ([0, 2], [1.0, 0.5])}, tmp_path / "out")
    assert res.exact and res.max_abs_diff <= TOL
    assert {k: v["edited"] for k, v in res.layers.items()} == {"fc": ["fc.weight", "fc.bias"], "embed": ["embed.weight"]}
    with pytest.raises(UserError, match="out of range"):
        export_cleaned(g, {"embed": [3]}, tmp_path / "out2")  # 3 embedding features
