"""Generator specs, safe checkpoint loading, seeded latents and sampling to uint8 images.

A `GeneratorSpec` says how to build G (a factory or a TorchScript file), where its weights are, what its
latent looks like and what range its output has. `load_generator` turns a spec into a `LoadedGenerator`
(module in eval mode + spec + content fingerprint). Latent i of a run is a pure function of (seed, i),
so samples do not depend on batch size, start offset or sharding.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import pickle
import sys
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .. import defaults
from ..errors import UserError
from ..example.model import CHECKPOINT
from . import devices

# Keys under which training scripts commonly store the generator's state dict, in lookup order.
COMMON_KEYS: tuple[str, ...] = (
    "g_ema", "G_ema", "netG_state_dict", "generator", "netG", "G", "state_dict", "model", "model_state_dict", "gen",
)
EXAMPLE_FACTORY = "artifix.example:make_generator"


@dataclass(frozen=True)
class GeneratorSpec:
    """How to build and sample a generator; field names match the `[generator]` options."""

    generator: str | None = None
    checkpoint: str | None = None
    key: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    latent: tuple[int, ...] = (100, 1, 1)
    truncation: float | None = None
    classes: int = 0
    class_mode: str = "index"
    range: str = "[-1,1]"
    trust_pickle: bool = False
    adapter: str | None = None  # generator family (artifix.adapters); None = detect from the files
    code_path: str | None = None  # the user's checkout put on sys.path (StyleGAN pickles, rosinality)
    truncation_space: str = "z"  # 'z': resample |z| > T; 'w': the adapter truncates in W (psi)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the spec (used in fingerprints and manifests)."""
        d = asdict(self)
        d["kwargs"] = dict(self.kwargs)
        d["latent"] = list(self.latent)
        return d


def example_spec() -> GeneratorSpec:
    """The bundled example generator's spec."""
    return GeneratorSpec(generator=EXAMPLE_FACTORY, checkpoint=str(CHECKPOINT))


def parse_latent(text: str | int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Parse '100' or '100,1,1' (or a list) into a shape tuple of positive ints."""
    if isinstance(text, int):
        parts: list[Any] = [text]
    elif isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        parts = [p for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise UserError(f"--latent must be a shape like '100' or '100,1,1', got {text!r}.") from None
    if not shape or any(s <= 0 for s in shape):
        raise UserError(f"--latent must be a shape of positive sizes like '100' or '100,1,1', got {text!r}.")
    return shape


def spec_from_options(opts: Mapping[str, Any]) -> GeneratorSpec:
    """Build a spec from resolved `[generator]` options (CLI/TOML/defaults already merged); every option is checked."""
    gen = opts.get("generator")
    ckpt = opts.get("checkpoint")
    kwargs = opts.get("kwargs") or {}
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as e:
            raise UserError(f"--kwargs must be a JSON object like '{{\"ngf\": 32}}': {e.msg} at column {e.colno}.") from None
    if not isinstance(kwargs, Mapping):
        raise UserError("--kwargs must be a JSON object (a table in artifix.toml), e.g. '{\"ngf\": 32}'.")
    rng = str(opts.get("range") or "[-1,1]").replace(" ", "")
    if rng not in ("[-1,1]", "[0,1]"):
        raise UserError(f"--range must be '[-1,1]' or '[0,1]', got {opts.get('range')!r}.")
    mode = str(opts.get("class_mode") or "index")
    if mode not in ("index", "onehot"):
        raise UserError(f"--class-mode must be 'index' or 'onehot', got {mode!r}.")
    classes = int(opts.get("classes") or 0)
    if classes < 0:
        raise UserError(f"--classes must be 0 (unconditional) or a positive number of classes, got {classes}.")
    trunc = opts.get("truncation")
    if trunc is not None and float(trunc) <= 0:
        raise UserError(f"--truncation must be a positive number, got {trunc}.")
    latent = parse_latent(opts.get("latent") or defaults.get("generator", "latent"))
    if gen is None and ckpt is None:
        return _example_from_options(opts, kwargs, rng, mode, classes, latent, trunc)
    return GeneratorSpec(
        generator=gen, checkpoint=ckpt, key=opts.get("key"), kwargs=dict(kwargs), latent=latent,
        truncation=float(trunc) if trunc is not None else None, classes=classes, class_mode=mode, range=rng,
        trust_pickle=bool(opts.get("trust_pickle")),
        adapter=opts.get("adapter") or None, code_path=opts.get("code_path") or None,
    )


def _example_from_options(opts: Mapping[str, Any], kwargs: Mapping[str, Any], rng: str, mode: str, classes: int,
                          latent: tuple[int, ...], trunc: Any) -> GeneratorSpec:
    """The bundled example's spec; options that only describe another generator are refused, not ignored."""
    base = example_spec()
    foreign = [flag for flag, given in (("--kwargs", bool(kwargs)), ("--key", bool(opts.get("key"))), ("--classes", classes != 0),
                                        ("--class-mode", mode != "index"), ("--range", rng != base.range)) if given]
    if foreign:
        raise UserError(f"{', '.join(foreign)} describe{'s' if len(foreign) == 1 else ''} your own generator, but none was given "
                        "(the bundled example is used): pass --generator 'module:callable' (and --checkpoint), or drop "
                        f"{'it' if len(foreign) == 1 else 'them'}.")
    if latent != base.latent:
        base = replace(base, latent=latent)
    return replace(base, truncation=float(trunc)) if trunc is not None else base


# ----------------------------------------------------------------------------------------- loading


def _is_torchscript(path: Path) -> bool:
    """True when `path` is a TorchScript archive (a zip holding code/ and constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def resolve_factory(target: str) -> Callable[..., nn.Module]:
    """Import 'package.module:callable' or 'path/to/file.py:callable' without evaluating any string."""
    if ":" not in target:
        raise UserError(f"--generator must be 'package.module:callable', 'path/file.py:callable' or a TorchScript file, got {target!r}.")
    mod_name, _, attr = target.rpartition(":")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise UserError(f"generator file {mod_name} does not exist; check the path in --generator.")
        name = "artifix_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.resolve().parent))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            raise UserError(f"cannot import module {mod_name!r} for --generator ({e}); is it installed or on PYTHONPATH?") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{mod_name} has no attribute {attr!r}; check the name after ':' in --generator.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{target} is not callable; --generator must name a class or function that builds the model.")
    return obj


def _first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def read_checkpoint(path: str | Path, trust_pickle: bool = False, allow: Sequence[Any] = ()) -> Any:
    """Load a checkpoint on CPU: safetensors, or torch.load with weights_only (plus the `allow`ed classes) unless trust_pickle."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check --checkpoint.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"checkpoint {path} is not a readable safetensors file ({_first_line(e)}); check --checkpoint.") from None
    try:
        if allow and not trust_pickle:
            with torch.serialization.safe_globals(list(allow)):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if not trust_pickle and ("Unsupported global" in str(e) or "Unsupported class" in str(e)):
            raise UserError(
                f"refused to unpickle {path}: it holds Python objects beyond tensors, and loading them could run code; "
                "pass --trust-pickle only if you trust where this file came from."
            ) from None
        detail = "not a pickle of tensors" if str(e).startswith("Weights only load failed") else _first_line(e)
        raise UserError(f"checkpoint {path} is corrupt or not a PyTorch file ({detail}); check --checkpoint or save it "
                        "again with torch.save.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"checkpoint {path} is corrupt or not a PyTorch file ({_first_line(e)}); check --checkpoint or save it "
                        "again with torch.save.") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any, key: str | None = None, path: str = "checkpoint") -> dict[str, torch.Tensor] | nn.Module:
    """Find G's state dict in a loaded checkpoint: at `key` (dotted for nesting), at a common key, or the object itself."""
    if key:
        cur = obj
        for part in key.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                keys = ", ".join(map(str, list(cur.keys())[:12])) if isinstance(cur, Mapping) else type(cur).__name__
                raise UserError(f"key {key!r} is not in {path}; its top-level keys are: {keys}.")
            cur = cur[part]
        obj = cur
    if isinstance(obj, nn.Module):
        return obj
    if _is_state_dict(obj):
        return _strip_prefix(dict(obj))
    if isinstance(obj, Mapping):
        for k in COMMON_KEYS:
            if k in obj and (_is_state_dict(obj[k]) or isinstance(obj[k], nn.Module)):
                return extract_state_dict(obj[k], None, path)
        keys = ", ".join(map(str, list(obj.keys())[:12]))
        raise UserError(f"found no generator state dict in {path} (keys: {keys}); name it with --key.")
    raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict or a dict holding one.")


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a 'module.' prefix left by DataParallel / DistributedDataParallel."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str = "checkpoint") -> None:
    """load_state_dict(strict) with one readable sentence when the weights do not fit the model."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
        raise UserError(f"the weights in {path} do not fit the model: {', '.join(parts)}; check --generator, --kwargs and --key.")
    model.load_state_dict(sd, strict=True)


@dataclass
class LoadedGenerator:
    """A generator ready to sample: module in eval mode, its spec and a content fingerprint."""

    module: nn.Module
    spec: GeneratorSpec
    fingerprint: str
    scripted: bool = False
    adapter: Any = None  # the artifix.adapters.Adapter that loaded it (None: a plain module called as G(z[, y]))

    @property
    def device(self) -> torch.device:
        """Where G's weights are (its latents are moved there)."""
        return devices.of(self.module)

    def __call__(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Run G on latents (and class inputs for a conditional G), moved to G's device, returning images NCHW."""
        dev = self.device
        z = z.to(dev)
        y = None if y is None else y.to(dev)
        if self.adapter is not None:
            return self.adapter.forward(self.module, self.spec, z, y)
        return self.module(z) if y is None else self.module(z, y)


def weights_hash(module: nn.Module) -> str:
    """SHA-256 over parameter and buffer names and bytes, in state-dict order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def fingerprint(module: nn.Module, spec: GeneratorSpec) -> str:
    """Hash of G's weights + the sampling-relevant spec fields (not file paths)."""
    s = spec.to_json()
    relevant = {k: s[k] for k in ("latent", "truncation", "classes", "class_mode", "range")}
    if spec.adapter not in (None, "module", "torchscript"):  # fingerprints of plain modules stay as they were
        relevant.update(adapter=spec.adapter, truncation_space=spec.truncation_space)
    return hashlib.sha256((weights_hash(module) + json.dumps(relevant, sort_keys=True)).encode()).hexdigest()[:16]


def load_generator(spec: GeneratorSpec | None = None, validate: bool = True,
                   device: str | torch.device | None = None) -> LoadedGenerator:
    """Build G from a spec (default: the bundled example), load weights, put it in eval mode on `device`
    (default: the current device, see artifix.model.devices), and probe it."""
    from .. import adapters  # cycle: artifix.adapters imports generator (GeneratorSpec, LoadedGenerator, read_checkpoint)

    dev = devices.resolve(device) if device is not None else devices.current()
    spec = spec or example_spec()
    adapter = adapters.for_spec(spec)
    spec = replace(spec, adapter=adapter.name)
    if adapter.name not in ("module", "torchscript"):
        loaded = adapter.load(spec)
        loaded.module.to(dev)
        if validate:
            probe(loaded)
        return loaded
    scripted = False
    gen = spec.generator
    if gen is not None and ":" not in gen and Path(gen).suffix in (".pt", ".pth", ".ts", ".jit", ".zip", ".torchscript") or (
        gen is None and spec.checkpoint and Path(spec.checkpoint).is_file() and _is_torchscript(Path(spec.checkpoint))
    ):
        path = Path(gen or spec.checkpoint)  # type: ignore[arg-type]
        if not path.is_file():
            raise UserError(f"generator file {path} does not exist; check --generator.")
        if not _is_torchscript(path):
            raise UserError(f"{path} is not a TorchScript file; for a checkpoint pass --checkpoint with a factory --generator 'module:callable'.")
        try:
            module: nn.Module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as e:
            raise UserError(f"cannot load TorchScript file {path} ({_first_line(e)}).") from None
        scripted = True
    elif gen is None:
        if not spec.checkpoint:
            raise UserError("no generator given: pass --generator 'module:callable' (with --checkpoint) or a TorchScript file.")
        obj = read_checkpoint(spec.checkpoint, spec.trust_pickle)
        found = extract_state_dict(obj, spec.key, spec.checkpoint)
        if not isinstance(found, nn.Module):
            raise UserError(f"{spec.checkpoint} holds only weights; also pass --generator 'module:callable' to build the model.")
        module = found
    else:
        factory = resolve_factory(gen)
        try:
            module = factory(**dict(spec.kwargs))
        except TypeError as e:
            raise UserError(f"calling {gen} with kwargs {dict(spec.kwargs)} failed: {e}; check --kwargs.") from None
        if not isinstance(module, nn.Module):
            raise UserError(f"{gen} returned a {type(module).__name__}, not a torch.nn.Module; point --generator at the "
                            "class or function that builds the model.")
        if spec.checkpoint:
            obj = read_checkpoint(spec.checkpoint, spec.trust_pickle)
            found = extract_state_dict(obj, spec.key, spec.checkpoint)
            if isinstance(found, nn.Module):
                found = found.state_dict()
            load_into(module, found, spec.checkpoint)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if adapter.name == "torchscript" and not scripted:
        raise UserError("--adapter torchscript needs a TorchScript file (torch.jit.save) as --generator; drop --adapter for a checkpoint.")
    if scripted != (adapter.name == "torchscript"):
        adapter = adapters.get("torchscript" if scripted else "module")
        spec = replace(spec, adapter=adapter.name)
    fp = fingerprint(module, spec)  # from the weights' bytes: the same on every device
    module.to(dev)
    loaded = LoadedGenerator(module, spec, fp, scripted, adapter)
    if validate:
        probe(loaded)
    return loaded


# ---------------------------------------------------------------------------------------- latents


def _sample_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of sample `index` in run `seed` (PCG64: identical on every platform)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)]))


def latents(spec: GeneratorSpec, seed: int, indices: Iterator[int] | range | list[int] | np.ndarray, class_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latents (and class inputs) for the given sample indices: row i depends only on (seed, indices[i])."""
    idx = [int(i) for i in indices]
    d = int(np.prod(spec.latent))
    z = np.empty((len(idx), d), np.float32)
    cls = np.empty(len(idx), np.int64)
    for row, i in enumerate(idx):
        g = _sample_rng(seed, i)
        v = g.standard_normal(d)
        if spec.truncation is not None and spec.truncation_space == "z":
            bad = np.abs(v) > spec.truncation
            while bad.any():  # resample outside the band, from the same per-sample stream
                v[bad] = g.standard_normal(int(bad.sum()))
                bad = np.abs(v) > spec.truncation
        z[row] = v
        cls[row] = g.integers(spec.classes) if spec.classes else 0
    zt = torch.from_numpy(z).reshape(len(idx), *spec.latent)
    if not spec.classes:
        return zt, None
    if class_id is not None:
        if not 0 <= class_id < spec.classes:
            raise UserError(f"--class-id {class_id} is out of range for a generator with {spec.classes} classes.")
        cls[:] = class_id
    y = torch.from_numpy(cls)
    if spec.class_mode == "onehot":
        y = torch.nn.functional.one_hot(y, spec.classes).float()
    return zt, y


def to_uint8(x: torch.Tensor, value_range: str = "[-1,1]") -> torch.Tensor:
    """Map G's output (N, C, H, W) in its declared range to uint8 NHWC (rounded, clamped), on the CPU."""
    if value_range == "[-1,1]":
        x = (x + 1) * 127.5
    else:
        x = x * 255.0
    return devices.to_cpu_uint8(x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous())


def check_output(out: Any, n: int, indices: Sequence[int] | None = None) -> torch.Tensor:
    """Raise UserError unless G's output is a finite (n, 1|3, H, W) float tensor (naming the bad sample indices)."""
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the generator returned a {type(out).__name__}; artifix needs a tensor of images (N, C, H, W), "
                        "so point --generator at a module (or wrapper) whose forward returns one.")
    if out.dim() != 4 or out.shape[0] != n or out.shape[1] not in (1, 3):
        raise UserError(f"the generator returned shape {tuple(out.shape)} for {n} latents; artifix needs images shaped "
                        f"({n}, 1 or 3, H, W), so check --latent or wrap the generator to return those.")
    if indices is not None:
        devices.check_finite(out, indices)
    elif not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).flatten(1).any(1).sum())
        raise UserError(f"the generator produced NaN or Inf values in {bad} of {n} samples; check the checkpoint and --range.")
    return out


def probe(g: LoadedGenerator) -> torch.Size:
    """Run G on two latents to check the latent size and the output; returns the output shape."""
    z, y = latents(g.spec, 0, [0, 1])
    try:
        with torch.inference_mode():
            out = g(z, y)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        msg = _first_line(e, 240)
        raise UserError(
            f"the generator rejected latents of shape {tuple(z.shape[1:])}"
            + (f" with {g.spec.classes} classes" if g.spec.classes else "")
            + f" ({msg}); check --latent and --classes."
        ) from None
    return check_output(out, 2).shape


PAD_MULTIPLE = 8


def forward(g: LoadedGenerator, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """G(z, y) with the batch padded to a multiple of PAD_MULTIPLE.

    CPU kernels pick different blockings for some batch sizes (odd ones, here), which changes the last
    float bits; padding keeps every sample's arithmetic the same whatever the batch size or offset.
    """
    n = z.shape[0]
    pad = (-n) % PAD_MULTIPLE
    if pad:
        z = torch.cat([z, z[-1:].expand(pad, *z.shape[1:])])
        if y is not None:
            y = torch.cat([y, y[-1:].expand(pad, *y.shape[1:])])
    out = g(z, y)
    return out[:n] if pad and isinstance(out, torch.Tensor) else out


def render(g: LoadedGenerator, seed: int, indices: Sequence[int], class_id: int | None = None) -> torch.Tensor:
    """uint8 NHWC CPU images of the given sample indices in one forward pass (NaN/Inf names the indices)."""
    z, y = latents(g.spec, seed, indices, class_id)
    with torch.inference_mode():
        out = check_output(forward(g, z, y), len(indices), indices)
        return to_uint8(out.float(), g.spec.range)


def sample_batches(g: LoadedGenerator, seed: int, start: int = 0, n: int = 64, batch: int = 64, class_id: int | None = None) -> Iterator[tuple[range, torch.Tensor]]:
    """Yield (indices, uint8 NHWC images) for samples start..start+n-1, `batch` at a time (halved on GPU OOM)."""
    def one(s: int, count: int) -> tuple[range, torch.Tensor]:
        idx = range(start + s, start + s + count)
        return idx, render(g, seed, idx, class_id)

    yield from devices.backoff(one, n, batch, "sampling")


def images_at(g: LoadedGenerator, seed: int, indices: Sequence[int], batch: int = 64) -> np.ndarray:
    """uint8 NHWC images of the given sample indices (any order, any subset), rendered `batch` at a time."""
    idx = [int(i) for i in indices]
    parts = list(devices.backoff(lambda s, count: render(g, seed, idx[s:s + count]).numpy(), len(idx), batch, "sampling"))
    return np.concatenate(parts) if parts else np.zeros((0, 1, 1, 3), np.uint8)


def sample(g: LoadedGenerator, seed: int = 0, start: int = 0, n: int = 64, batch: int = 64, class_id: int | None = None) -> np.ndarray:
    """All images start..start+n-1 as one uint8 NHWC array (for small n; stream with sample_batches otherwise)."""
    parts = [imgs.numpy() for _, imgs in sample_batches(g, seed, start, n, batch, class_id)]
    return np.concatenate(parts) if parts else np.zeros((0, 0, 0, 3), np.uint8)
