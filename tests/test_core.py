"""Core: loading generators, seeded sampling, tracing and ablation."""

import json

import numpy as np
import pytest
import torch

from artifix.errors import UserError
from artifix.model.generator import (GeneratorSpec, forward, latents, load_generator, read_checkpoint, sample, spec_from_options, to_uint8)
from artifix.model.trace import Trace, ablation, get_layer
from tests.conftest import GENS, run_cli


def tiny_spec(ckpt, **kw) -> GeneratorSpec:
    return spec_from_options({"generator": f"{GENS}:tiny_dcgan", "checkpoint": str(ckpt), "latent": "16,1,1", **kw})


def test_dcgan_checkpoint_loads_with_auto_detected_key(tiny_ckpt):
    g = load_generator(tiny_spec(tiny_ckpt))
    ref = torch.load(tiny_ckpt, weights_only=True)["netG_state_dict"]
    for k, v in g.module.state_dict().items():
        assert torch.equal(v, ref[k])
    assert not g.module.training
    imgs = sample(g, seed=0, n=5)
    assert imgs.shape == (5, 64, 64, 3) and imgs.dtype == np.uint8


def test_explicit_key_and_nested_key(tmp_path, tiny_ckpt):
    sd = torch.load(tiny_ckpt, weights_only=True)["netG_state_dict"]
    path = tmp_path / "nested.pt"
    torch.save({"models": {"gen": sd}}, path)
    g = load_generator(tiny_spec(path, key="models.gen"))
    assert torch.equal(g.module.state_dict()["main.0.weight"], sd["main.0.weight"])
    with pytest.raises(UserError, match="name it with --key"):
        load_generator(tiny_spec(path))


def test_dataparallel_prefix_is_stripped(tmp_path, tiny_ckpt):
    sd = torch.load(tiny_ckpt, weights_only=True)["netG_state_dict"]
    path = tmp_path / "dp.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    load_generator(tiny_spec(path))


def test_cuda_saved_checkpoint_loads_on_cpu(tmp_path, tiny_ckpt, monkeypatch):
    """A file whose storages are tagged 'cuda:0' (as saved on a GPU) loads on this CPU-only machine."""
    import torch.serialization as ser

    sd = torch.load(tiny_ckpt, weights_only=True)["netG_state_dict"]
    path = tmp_path / "cuda.pt"
    monkeypatch.setattr(ser, "location_tag", lambda storage: "cuda:0")
    torch.save({"g_ema": sd}, path)
    monkeypatch.undo()
    assert b"cuda:0" in path.read_bytes()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            torch.load(path, weights_only=True)  # what a naive loader hits
    g = load_generator(tiny_spec(path))
    assert torch.equal(g.module.state_dict()["main.0.weight"], sd["main.0.weight"])


def test_safetensors_checkpoint(tmp_path, tiny_ckpt):
    from safetensors.torch import save_file

    sd = torch.load(tiny_ckpt, weights_only=True)["netG_state_dict"]
    path = tmp_path / "g.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    g = load_generator(tiny_spec(path))
    assert torch.equal(g.module.state_dict()["main.3.weight"], sd["main.3.weight"])


def test_torchscript_generator_samples(tmp_path, tiny_ckpt):
    g = load_generator(tiny_spec(tiny_ckpt))
    ts = torch.jit.trace(g.module, torch.randn(2, 16, 1, 1))
    path = tmp_path / "g.ts"
    ts.save(str(path))
    s = load_generator(spec_from_options({"generator": str(path), "latent": "16,1,1"}))
    assert s.scripted
    assert np.array_equal(sample(s, seed=3, n=6), sample(g, seed=3, n=6))


def test_conditional_generator_samples_per_class():
    for mode in ("index", "onehot"):
        spec = spec_from_options({"generator": f"{GENS}:cond_gen", "kwargs": json.dumps({"onehot": mode == "onehot"}),
                                  "latent": "8", "classes": 4, "class_mode": mode, "range": "[-1,1]"})
        g = load_generator(spec)
        means = [sample(g, seed=0, n=8, class_id=c).mean() for c in range(4)]
        assert all(a < b for a, b in zip(means, means[1:])), means  # classes have increasing brightness
        mixed_z, mixed_y = latents(spec, 0, range(64))
        ys = mixed_y.argmax(1) if mode == "onehot" else mixed_y
        assert set(ys.tolist()) == {0, 1, 2, 3}


def test_seeded_sampling_is_batch_and_offset_independent(tiny_ckpt):
    g = load_generator(tiny_spec(tiny_ckpt))
    ref = sample(g, seed=7, n=40, batch=40)
    for batch in (1, 3, 7, 16, 64):
        assert np.array_equal(sample(g, seed=7, n=40, batch=batch), ref), batch
    # shards / offsets: samples 13..39 are the same wherever they start
    assert np.array_equal(sample(g, seed=7, start=13, n=27, batch=5), ref[13:])
    assert np.array_equal(np.concatenate([sample(g, seed=7, start=s, n=10, batch=4) for s in (0, 10, 20, 30)]), ref)
    assert not np.array_equal(sample(g, seed=8, n=40), ref)


def test_truncation_bounds_latents():
    spec = GeneratorSpec(generator="x:y", latent=(64,), truncation=0.5)
    z, _ = latents(spec, 0, range(50))
    assert z.abs().max() <= 0.5
    z2, _ = latents(spec, 0, range(20, 30))
    assert torch.equal(z[20:30], z2)


def test_output_range_zero_one():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert to_uint8(x, "[0,1]")[0, :, :, 0].flatten().tolist() == [0, 128, 255, 255]
    assert to_uint8(x * 2 - 1, "[-1,1]")[0, :, :, 0].flatten().tolist() == [0, 128, 255, 255]


def test_ablation_zeroes_the_unit_and_changes_the_image(tiny_ckpt):
    g = load_generator(tiny_spec(tiny_ckpt))
    z, _ = latents(g.spec, 0, range(8))
    with Trace(g.module, "main.4") as t:
        base = forward(g, z)
    acts = t["main.4"]
    u = int(acts.clamp(min=0).flatten(2).sum(2).mean(0).argmax())  # a unit that survives the ReLU
    assert acts[:, u].abs().sum() > 0
    with Trace(g.module, "main.4", edit={"main.4": ablation([u])}) as t:
        out = forward(g, z)
    assert torch.count_nonzero(t["main.4"][:, u]) == 0
    others = [c for c in range(acts.shape[1]) if c != u]
    assert torch.equal(t["main.4"][:, others], acts[:, others])
    assert not torch.equal(out, base)
    with Trace(g.module, "main.4", edit={"main.4": ablation([u], alpha=0.0)}):
        same = forward(g, z)
    assert torch.equal(same, base)
    # per-pixel mask: only the masked half changes; unit-mean replacement
    mask = torch.zeros(acts.shape[-2:])
    mask[:, : mask.shape[1] // 2] = 1
    with Trace(g.module, "main.4", edit={"main.4": ablation([u], mask=mask, replacement=torch.tensor([0.5]))}) as t:
        forward(g, z)
    half = acts.shape[-1] // 2
    assert torch.all(t["main.4"][:, u, :, :half] == 0.5)
    assert torch.equal(t["main.4"][:, u, :, half:], acts[:, u, :, half:])


def test_hooks_removed_after_block_and_after_exception(tiny_ckpt):
    g = load_generator(tiny_spec(tiny_ckpt))
    layer = get_layer(g.module, "main.3")
    with Trace(g.module, ["main.3", "main.6"], edit={"main.3": ablation([0])}):
        assert len(layer._forward_hooks) == 1
    assert len(layer._forward_hooks) == 0
    with pytest.raises(ZeroDivisionError):
        with Trace(g.module, "main.3", edit={"main.3": lambda x: x / 0 if False else 1 / 0}):
            forward(g, torch.randn(2, 16, 1, 1))
    assert all(len(m._forward_hooks) == 0 for m in g.module.modules())


def test_stop_after_last_traced_layer(tiny_ckpt):
    g = load_generator(tiny_spec(tiny_ckpt))
    seen = []
    last = get_layer(g.module, "main.12")
    h = last.register_forward_hook(lambda *a: seen.append(1))
    try:
        with Trace(g.module, "main.3", stop=True) as t:
            g.module(torch.randn(2, 16, 1, 1))
        assert t["main.3"].shape[1] == 16 and not seen
    finally:
        h.remove()


def test_unknown_layer_suggests_close_names(tiny_ckpt):
    g = load_generator(tiny_spec(tiny_ckpt))
    with pytest.raises(UserError, match="Did you mean 'main.3'"):
        get_layer(g.module, "main.33")


# ------------------------------------------------------------------------------- CLI and bad inputs


def cli_tiny(ckpt, *args):
    return run_cli(*args, "--generator", f"{GENS}:tiny_dcgan", "--checkpoint", str(ckpt), "--latent", "16,1,1")


def test_cli_sample_writes_grid_and_images(tmp_path, tiny_ckpt):
    code, out, err = cli_tiny(tiny_ckpt, "sample", "--n", "10", "--seed", "0", "--grid", str(tmp_path / "g.png"),
                              "--images", str(tmp_path / "imgs"), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 10 and (tmp_path / "g.png").is_file()
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 10


def test_cli_layers_json(tiny_ckpt):
    code, out, _ = cli_tiny(tiny_ckpt, "layers", "--json")
    assert code == 0
    rows = {r["layer"]: r for r in json.loads(out)["layers"]}
    assert rows["main.3"]["shape"] == [2, 16, 8, 8] and rows["main.12"]["type"] == "ConvTranspose2d"


def _one_line_error(code, out, err, pattern):
    assert code == 2, (code, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and out == ""
    assert pattern in lines[0], lines[0]


def test_bad_inputs_exit_2_with_one_line(tmp_path, tiny_ckpt):
    _one_line_error(*cli_tiny(tmp_path / "missing.pt", "sample", "--grid", str(tmp_path / "x.png")), "does not exist")
    _one_line_error(*cli_tiny(tiny_ckpt, "sample", "--key", "nope", "--grid", str(tmp_path / "x.png")), "key 'nope' is not in")
    _one_line_error(*cli_tiny(tiny_ckpt, "sample", "--layer", "main.33", "--ablate", "1", "--grid", str(tmp_path / "x.png")),
                    "Did you mean 'main.3'")
    _one_line_error(*cli_tiny(tiny_ckpt, "sample", "--layer", "main.3", "--ablate", "99", "--grid", str(tmp_path / "x.png")),
                    "out of range")
    # weights that do not fit the model
    code, out, err = run_cli("sample", "--generator", f"{GENS}:tiny_dcgan", "--kwargs", '{"ngf": 8}', "--checkpoint",
                             str(tiny_ckpt), "--latent", "16,1,1", "--grid", str(tmp_path / "x.png"))
    _one_line_error(code, out, err, "do not fit the model")
    # wrong latent size
    code, out, err = run_cli("sample", "--generator", f"{GENS}:tiny_dcgan", "--checkpoint", str(tiny_ckpt),
                             "--latent", "100,1,1", "--grid", str(tmp_path / "x.png"))
    _one_line_error(code, out, err, "rejected latents of shape (100, 1, 1)")
    # corrupt checkpoint
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    _one_line_error(*cli_tiny(bad, "sample", "--grid", str(tmp_path / "x.png")), "corrupt or not a PyTorch file")
    # NaN output, wrong output shape
    for name, pattern in (("NaNGen", "NaN or Inf"), ("FlatGen", "needs images shaped")):
        code, out, err = run_cli("sample", "--generator", f"{GENS}:{name}", "--latent", "4", "--grid", str(tmp_path / "x.png"))
        _one_line_error(code, out, err, pattern)
    assert not (tmp_path / "x.png").exists()  # nothing half-written


class Evil:
    """Unpickling this would create a file (the proof that code ran)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, tiny_ckpt):
    marker = tmp_path / "pwned"
    sd = torch.load(tiny_ckpt, weights_only=True)["netG_state_dict"]
    path = tmp_path / "evil.pt"
    torch.save({"netG_state_dict": sd, "payload": Evil(str(marker))}, path)
    code, out, err = cli_tiny(path, "sample", "--grid", str(tmp_path / "x.png"))
    _one_line_error(code, out, err, "--trust-pickle")
    assert not marker.exists()
    with pytest.raises(UserError, match="refused to unpickle"):
        read_checkpoint(path)
    assert not marker.exists()
    # with explicit trust the file loads (and, being a pickle, runs its payload)
    code, _, err = cli_tiny(path, "sample", "--trust-pickle", "--grid", str(tmp_path / "x.png"))
    assert code == 0, err and marker.exists()


def test_bad_config_exits_2(tmp_path, tiny_ckpt):
    (tmp_path / "artifix.toml").write_text("[generator\nlatent = 3")
    _one_line_error(*run_cli("layers", cwd=tmp_path), "not valid TOML")
    (tmp_path / "artifix.toml").write_text('[generator]\nlatnt = "16"\n')
    _one_line_error(*run_cli("layers", cwd=tmp_path), "unknown key 'latnt'")
    (tmp_path / "artifix.toml").write_text(f'[generator]\ngenerator = "{GENS}:tiny_dcgan"\ncheckpoint = "{tiny_ckpt}"\nlatent = "16,1,1"\n')
    code, out, err = run_cli("layers", "--json", cwd=tmp_path)
    assert code == 0, err and json.loads(out)["layers"]


def test_usage_error_exits_2():
    code, _, _ = run_cli("sample", "--no-such-flag")
    assert code == 2


def test_written_files_get_normal_permissions(tmp_path):
    import os

    from artifix.io import write_text_atomic

    write_text_atomic(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "artifix", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("artifix ")
