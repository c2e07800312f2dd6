"""NVIDIA StyleGAN2-ADA / StyleGAN3 network pickles (`G_ema` in the pickle's dict).

These pickles hold `torch_utils.persistence` objects: the network's source code travels inside the file
and runs when it is unpickled, importing `dnnlib` and `torch_utils` from the user's checkout. So loading
needs `--trust-pickle` and `--code-path DIR` (the checkout), and detection only scans the pickle's opcodes.

Sampling is `G.mapping(z, c, truncation_psi=psi)` (W-space truncation towards `G.mapping.w_avg`, as
G.forward does) then `G.synthesis(ws, noise_mode='const', force_fp32=True)`: constant noise buffers and
fp32 make sample i a pure function of (seed, i) and let the export check hold to 1e-5.

Exact baking (out[:, u] *= s_u at a layer, s_u = 1 - alpha_u >= 0):
- a fully connected layer (mapping.fc*, mapping.embed, any *.affine): weight row u and bias u times s_u
  (its activation, linear or leaky ReLU, is positively homogeneous, and it has no clamp);
- a synthesis layer whose only consumers are non-demodulated ToRGB layers (the last block's conv1 in the
  'skip' and 'orig' architectures): ToRGB's style channel u is affine row u, and ToRGB is linear in
  style_u * x_u, so scaling that row scales the channel exactly as the hook does.
A synthesis layer that feeds a demodulated convolution cannot be baked: demodulation renormalises each
output by the norm of the modulated weights, so no weight change reproduces x_u * s_u for every w. Those
edits are written as a verified TorchScript module instead, and the export note says why.
"""

from __future__ import annotations

import importlib
import math
import pickle
import pickletools
import re
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RuntimeFailure, UserError
from ..io import atomic_path, sha256_file, write_json_atomic
from ..model.generator import GeneratorSpec, LoadedGenerator, fingerprint, latents
from ..repair.export import ExportResult
from ..repair.verification import TOLERANCE, save_hooked_torchscript, verify
from .base import Adapter, Edits, add_code_path, bake_with_rules, finish, named, scale_rows

PERSISTENCE = "torch_utils.persistence"
SCAN_OPS = 5000  # opcodes scanned for the persistence import before giving up (it comes within the first object)
NOT_TRUSTED = ("refused to unpickle {path}: StyleGAN network pickles carry Python code that runs when loaded; pass --trust-pickle "
               "(and --code-path to your stylegan2-ada-pytorch or stylegan3 checkout) only if you trust where this file came from.")


def network_file(spec: GeneratorSpec) -> Path | None:
    """The network pickle a spec names (--checkpoint, or a --generator path without ':')."""
    for cand in (spec.checkpoint, spec.generator if spec.generator and ":" not in spec.generator else None):
        if cand:
            return Path(cand)
    return None


def looks_like_network_pickle(path: Path) -> bool:
    """True for a plain pickle that imports torch_utils.persistence (scanned, never executed)."""
    if not path.is_file() or zipfile.is_zipfile(path):
        return False
    try:
        with open(path, "rb") as fh:
            if fh.read(1) != b"\x80":
                return False
            fh.seek(0)
            for i, (op, arg, _) in enumerate(pickletools.genops(fh)):
                if isinstance(arg, str) and (arg == PERSISTENCE or arg.startswith(PERSISTENCE + " ")):
                    return True
                if i > SCAN_OPS:
                    break
    except (ValueError, EOFError, OSError, pickle.UnpicklingError):
        return False
    return path.suffix == ".pkl"


def read_network_pickle(path: Path, code_path: str | None, *, trusted: bool) -> dict[str, Any]:
    """Unpickle a network pickle with the user's checkout on sys.path (through its legacy.py when it has one)."""
    if not trusted:  # a network pickle runs code when read: only with the user's explicit --trust-pickle
        raise UserError(f"{path} is a network pickle, which runs code when it is read; pass --trust-pickle if you trust it.")
    add_code_path(code_path)
    try:
        with open(path, "rb") as fh:
            if code_path and (Path(code_path).expanduser() / "legacy.py").is_file():
                data = importlib.import_module("legacy").load_network_pkl(fh)
            else:
                data = pickle.load(fh)
    except ModuleNotFoundError as e:
        raise UserError(f"unpickling {path} needs the module {e.name!r}: pass --code-path with the stylegan2-ada-pytorch or "
                        "stylegan3 checkout (the folder holding dnnlib/ and torch_utils/) that wrote it.") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise UserError(f"{path} is not a readable network pickle ({type(e).__name__}: {str(e)[:160]}); check --checkpoint and --code-path.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a {type(data).__name__}, not the dict of a StyleGAN network pickle (G, D, G_ema).")
    return data


def _network_key(data: dict[str, Any], key: str | None, path: Path) -> str:
    """The pickle dict's key of the generator to use: --key, else G_ema, else G."""
    for k in ([key] if key else ["G_ema", "G"]):
        if k in data:
            g = data[k]
            if not (isinstance(g, nn.Module) and hasattr(g, "mapping") and hasattr(g, "synthesis") and hasattr(g, "z_dim")):
                raise UserError(f"{path}[{k!r}] is not a StyleGAN generator (no mapping / synthesis / z_dim); name another with --key.")
            return k
    raise UserError(f"found no generator in {path} (keys: {', '.join(map(str, data))}); name it with --key.")


class StyleGANAdapter(Adapter):
    """StyleGAN2-ADA / StyleGAN3 `G_ema` from an NVIDIA network pickle."""

    name = "stylegan"
    own_format = True

    def detect(self, spec: GeneratorSpec) -> bool:
        """A network pickle: a plain pickle importing torch_utils.persistence (or a .pkl that is not a zip)."""
        path = network_file(spec)
        return path is not None and looks_like_network_pickle(path)

    def load(self, spec: GeneratorSpec) -> LoadedGenerator:
        """Unpickle G_ema (needs --trust-pickle and, for the pickle's imports, --code-path)."""
        path = network_file(spec)
        if path is None or not path.is_file():
            raise UserError(f"network pickle {path} does not exist; pass it with --checkpoint.")
        if not spec.trust_pickle:
            raise UserError(NOT_TRUSTED.format(path=path))
        data = read_network_pickle(path, spec.code_path, trusted=spec.trust_pickle)
        g = data[_network_key(data, spec.key, path)]
        spec = replace(spec, latent=(int(g.z_dim),), classes=int(getattr(g, "c_dim", 0) or 0), class_mode="onehot",
                       truncation_space="w")
        return finish(g, spec, self)

    def forward(self, module: nn.Module, spec: GeneratorSpec, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """G.synthesis(G.mapping(z, c, truncation_psi), noise_mode='const', force_fp32=True)."""
        c = y.to(z.dtype) if y is not None else z.new_zeros(z.shape[0], int(getattr(module, "c_dim", 0) or 0))
        psi = 1.0 if spec.truncation is None else float(spec.truncation)
        ws = module.mapping(z.reshape(z.shape[0], -1), c, truncation_psi=psi)
        return module.synthesis(ws, noise_mode="const", force_fp32=True)

    def default_layers(self, module: nn.Module) -> list[str]:
        """StyleGAN2: conv1 of the 32-px block (or of the last block when smaller), then every conv; StyleGAN3: the middle layer."""
        names = [n for n, _ in module.named_modules()]
        blocks = sorted({int(m.group(1)) for n in names if (m := re.fullmatch(r"synthesis\.b(\d+)\.conv1", n))})
        if blocks:
            best = max(r for r in blocks if r <= 32) if min(blocks) <= 32 else blocks[0]
            convs = [n for n in names if re.fullmatch(r"synthesis\.b\d+\.conv[01]", n)]
            return [f"synthesis.b{best}.conv1"] + [n for n in convs if n != f"synthesis.b{best}.conv1"]
        layers = [n for n in names if re.fullmatch(r"synthesis\.L\d+_\d+_\d+", n)]
        return [layers[len(layers) // 2]] + [n for n in layers if n != layers[len(layers) // 2]] if layers else []

    def bake(self, module: nn.Module, edits: Edits, example: Any = None) -> Any:
        """Bake FC layers and last-block synthesis layers exactly (see the module docstring); refuse the rest."""
        return bake_with_rules(module, edits, _rule)

    def export(self, g: LoadedGenerator, edits: Edits, out_dir: Path, *, seed: int, n: int, tolerance: float = TOLERANCE) -> ExportResult:
        """The cleaned G_ema pickled back into a copy of the input pickle (G, D and the rest unchanged), verified."""
        return export_pickle(self, g, edits, out_dir, seed=seed, n=n, tolerance=tolerance)


def _is_fc(m: nn.Module) -> bool:
    """A StyleGAN FullyConnectedLayer: 2-D weight, per-feature bias, linear or leaky-ReLU activation."""
    w = getattr(m, "weight", None)
    return (isinstance(w, torch.Tensor) and w.dim() == 2 and getattr(m, "activation", None) in ("linear", "lrelu", "relu")
            and hasattr(m, "weight_gain"))


def _rule(work: nn.Module, layer: str, s: torch.Tensor) -> tuple[str, list[str]] | str:
    """How to bake out[:, u] *= s[u] at `layer` of a StyleGAN G, or why it cannot be done."""
    m = named(work, layer)
    if _is_fc(m):
        return "scale-output", [f"{layer}.{p}" for p in scale_rows(m, s)]
    hit = re.fullmatch(r"synthesis\.b(\d+)\.conv1", layer)
    if hit:
        blocks = [int(r) for r in getattr(work.synthesis, "block_resolutions", [])]
        block = named(work, f"synthesis.b{hit.group(1)}")
        torgb = named(work, f"synthesis.b{hit.group(1)}.torgb")
        if blocks and int(hit.group(1)) == blocks[-1] and getattr(block, "architecture", "") in ("skip", "orig") and torgb is not None \
                and _is_fc(getattr(torgb, "affine", None)):
            return "scale-consumer-style", [f"{layer[:-len('conv1')]}torgb.affine.{p}" for p in scale_rows(torgb.affine, s)]
    return (f"{layer} feeds a demodulated convolution, whose normalisation by the modulated weights' norm no weight change can "
            "reproduce; only fully connected layers (mapping, affine) and the last block's conv1 bake exactly")


def export_pickle(adapter: Adapter, g: LoadedGenerator, edits: Edits, out_dir: Path, *, seed: int, n: int, tolerance: float) -> ExportResult:
    """Write the baked G_ema into a copy of the input network pickle, check the reloaded file, else a TorchScript fallback."""
    src = network_file(g.spec)
    assert src is not None
    out = out_dir / src.name
    if out.resolve() == src.resolve():
        raise UserError(f"exporting into {out_dir} would overwrite the original network pickle {src}; choose another folder.")
    call = lambda m, a: adapter.forward(m, g.spec, *a)  # noqa: E731
    lat = lambda idx: latents(g.spec, seed, idx)  # noqa: E731
    baked = adapter.bake(g.module, edits)
    layers = {lb.layer: lb.to_json() for lb in baked.layers}
    result = ExportResult(str(out_dir), False, math.inf, tolerance, n, seed, "", layers, fingerprint_before=g.fingerprint,
                          input={"path": str(src), "sha256": sha256_file(src)})
    note = f"the edits cannot be baked into weights exactly ({baked.reason}), so "
    if baked.exact:
        data = read_network_pickle(src, g.spec.code_path, trusted=g.spec.trust_pickle)  # a fresh copy: G, D, augment_pipe stay as they were
        key = _network_key(data, g.spec.key, src)
        data[key] = baked.model
        try:
            with atomic_path(out) as tmp:
                with open(tmp, "wb") as fh:
                    pickle.dump(data, fh)
                reread = read_network_pickle(tmp, g.spec.code_path, trusted=g.spec.trust_pickle)[key].eval()
                diff = verify(g.module, reread, edits, inputs=lat, n=n, call=call)
                if diff > tolerance:
                    raise _Mismatch(diff)
        except _Mismatch as e:
            note = f"the baked pickle differs from the hooked generator by up to {e.diff:.3g} (> {tolerance:g}), so "
        else:
            result.exact, result.max_abs_diff, result.layout = True, diff, f"network pickle ({key})"
            result.fingerprint_after = fingerprint(reread, g.spec)
            result.files["network_pickle"] = {"path": str(out), "sha256": sha256_file(out)}
            methods = ", ".join(f"{k}: {v['method']}" for k, v in layers.items())
            result.note = (f"all edits are baked into {key}'s weights ({methods}) and pickled back like the input; "
                           f"max |cleaned - hooked| = {diff:.3g} over {n} latents (seed {seed}).")
    if not result.exact:
        _torchscript_fallback(adapter, g, edits, out_dir, src.stem, result, note, call, lat)
    write_json_atomic(out_dir / "export.json", result.to_json())
    return result


class _Mismatch(Exception):
    def __init__(self, diff: float) -> None:
        super().__init__(diff)
        self.diff = diff


def _torchscript_fallback(adapter: Adapter, g: LoadedGenerator, edits: Edits, out_dir: Path, stem: str, result: ExportResult,
                          note: str, call: Any, lat: Any) -> None:
    """A verified TorchScript module running the hooks inside its forward, when the weights cannot hold the edit."""
    ts_path = out_dir / f"{stem}.torchscript.pt"
    example = tuple(a for a in lat(range(1)) if a is not None)  # batch 1: a traced grouped modconv fixes the batch size
    loaded = save_hooked_torchscript(g.module, edits, example, call, ts_path)
    diff = verify(g.module, loaded, edits, inputs=lat, n=result.verify_n, batch=1, call=lambda m, a: m(*a) if m is loaded else call(m, a))
    if diff > result.tolerance:
        raise RuntimeFailure(f"the TorchScript export differs from the hooked generator by {diff:.3g}; {ts_path} should not be used.")
    result.max_abs_diff, result.layout = diff, "torchscript"
    result.files["torchscript"] = {"path": str(ts_path), "sha256": sha256_file(ts_path)}
    result.note = (note + f"no network pickle was written: {ts_path.name} is a TorchScript module G(z[, c]) for one latent at a "
                   f"time (batch 1) that applies the ablation inside its forward; max |torchscript - hooked| = {diff:.3g} over "
                   f"{result.verify_n} latents.")
