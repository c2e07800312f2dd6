"""Write the cleaned generator in the user's checkpoint layout (weights baked, verified), else a TorchScript module.

The cleaned checkpoint keeps the input's layout (state dict, safetensors, pickled module, the dict key G sits
under); a safetensors copy goes beside it. Both are read back and checked; `export.json` records the files.
"""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import safetensors
import safetensors.torch  # called as safetensors.torch.save_file: a test replaces it to tear writes
import torch
from torch import nn

from ..errors import RuntimeFailure, UserError
from ..model.generator import (COMMON_KEYS, LoadedGenerator, extract_state_dict, fingerprint, latents, load_into, read_checkpoint)
from ..io import atomic_path, save_torch_atomic, sha256_file, write_json_atomic
from .bake import bake_edits
from .edits import Call, _as_args, _normalize_edits
from .verification import TOLERANCE, VERIFY_N, save_hooked_torchscript, verify


@dataclass
class ExportResult:
    """What `export_cleaned` wrote and how well it reproduces the hooked generator."""

    out_dir: str
    exact: bool
    max_abs_diff: float
    tolerance: float
    verify_n: int
    verify_seed: int
    layout: str
    layers: dict[str, dict[str, Any]]
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> {path, sha256}
    input: dict[str, str] | None = None  # the layout source: {path, sha256}
    fingerprint_before: str = ""
    fingerprint_after: str | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return json.loads(json.dumps(asdict(self)))



def _locate(obj: Any, key: str | None) -> tuple[str, ...]:
    """Where G's weights sit inside a loaded checkpoint, as a path of keys (() = the object itself)."""
    if key:
        return tuple(key.split("."))
    if isinstance(obj, nn.Module) or _is_sd(obj):
        return ()
    if isinstance(obj, Mapping):
        for k in COMMON_KEYS:
            if k in obj and (_is_sd(obj[k]) or isinstance(obj[k], nn.Module)):
                return (k,)
    return ()


def _is_sd(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _set(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    """Put `value` at `path` inside `obj` (in place); returns the new root."""
    if not path:
        return value
    _get(obj, path[:-1])[path[-1]] = value
    return obj


def _replace_sd(old: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> OrderedDict:
    """`old` (same key names, prefix and dtypes) filled with `model`'s weights; refuses weights of another G."""
    prefix = "module." if all(k.startswith("module.") for k in old) else ""
    new_vals = model.state_dict()
    names = {k: k[len(prefix):] for k in old}
    if set(names.values()) != set(new_vals):
        raise UserError(f"the generator weights in {source} do not have the loaded generator's parameter names; "
                        "pass the checkpoint the generator was loaded from.")
    out: OrderedDict = OrderedDict()
    for k, v in old.items():
        out[k] = new_vals[names[k]].detach().to(device="cpu", dtype=v.dtype).clone().contiguous()
    meta = getattr(old, "_metadata", None)
    if meta is not None:
        out._metadata = copy.deepcopy(meta)  # type: ignore[attr-defined]
    return out


def _same_weights(old: Mapping[str, torch.Tensor], model: nn.Module) -> bool:
    """True when the state dict `old` holds exactly `model`'s current weights (after a 'module.' prefix)."""
    prefix = "module." if all(k.startswith("module.") for k in old) else ""
    cur = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    names = {k: k[len(prefix):] for k in old}
    return all(n in cur and torch.equal(old[k].to(cur[n].dtype), cur[n]) for k, n in names.items())


def _save_safetensors(sd: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a flat tensor dict as safetensors, atomically."""
    with atomic_path(path) as tmp:
        safetensors.torch.save_file({k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}, str(tmp), metadata=metadata)


@dataclass
class _Job:
    """One export: the generator, its normalised edits, where the files go, and how the check calls G."""

    g: LoadedGenerator
    norm: Mapping[str, tuple[tuple[int, ...], tuple[float, ...]]]
    out_dir: Path
    src_path: Path | None  # the checkpoint whose layout the cleaned one keeps
    seed: int
    n: int
    tolerance: float
    call: Call | None
    allow: tuple[Any, ...]  # the adapter's safe globals for reading pickled checkpoints

    @property
    def stem(self) -> str:
        """The file stem of what is written."""
        return self.src_path.stem if self.src_path else "generator"

    @property
    def ckpt_path(self) -> Path:
        """Where the cleaned checkpoint goes (the input's file name)."""
        return self.out_dir / (self.src_path.name if self.src_path else "generator.pt")

    def lat(self, idx: range) -> tuple[Any, ...]:
        """The seeded latents of samples `idx`."""
        return latents(self.g.spec, self.seed, idx)


def export_cleaned(g: LoadedGenerator, edits: Mapping[str, Any], out_dir: str | Path,
                   checkpoint_layout_from: str | Path | None = None, *, seed: int = 0, n: int = VERIFY_N,
                   tolerance: float = TOLERANCE) -> ExportResult:
    """Bake the edits into G, verify against the hooked original, and write the cleaned generator to `out_dir`."""
    if g.scripted:
        raise UserError("the generator is a TorchScript file; artifix can only export cleaned weights of a Python "
                        "module (--generator 'module:callable').")
    if n < 1:
        raise UserError(f"verification needs at least one sample, got n={n}.")
    norm = _normalize_edits(edits)
    out_dir = Path(out_dir)
    adapter = g.adapter
    if adapter is not None and adapter.own_format:  # e.g. StyleGAN network pickles: the adapter writes its format
        return adapter.export(g, norm, out_dir, seed=seed, n=n, tolerance=tolerance)
    bake = adapter.bake if adapter is not None else bake_edits
    call: Call | None = None if adapter is None else (lambda m, a: adapter.forward(m, g.spec, *a))
    allow = tuple(getattr(adapter, "safe_globals", ()))
    src = checkpoint_layout_from if checkpoint_layout_from is not None else g.spec.checkpoint
    src_path = Path(src) if src else None
    if src_path is not None and not src_path.is_file():
        raise UserError(f"checkpoint {src_path} does not exist; pass the checkpoint the generator was loaded from.")
    job = _Job(g, norm, out_dir, src_path, seed, n, tolerance, call, allow)
    example = _as_args(job.lat(range(8)))
    baked = bake(g.module, norm, example)
    layers = {lb.layer: lb.to_json() for lb in baked.layers}
    result = ExportResult(str(out_dir), False, math.inf, tolerance, n, seed, "", layers,
                          fingerprint_before=g.fingerprint)
    if src_path is not None:
        result.input = {"path": str(src_path), "sha256": sha256_file(src_path)}
    if src_path is not None and job.ckpt_path.resolve() == src_path.resolve():
        raise UserError(f"exporting into {out_dir} would overwrite the original checkpoint {src_path}; choose another folder.")
    if baked.exact:
        assert baked.model is not None
        note = _write_baked(job, baked.model, result)
    else:
        note = f"the edits cannot be baked into weights exactly ({baked.reason}), so "
    if not result.exact:
        _write_torchscript(job, example, result, note)
    write_json_atomic(out_dir / "export.json", result.to_json())
    return result


def _in_layout(job: _Job, model: nn.Module, result: ExportResult) -> tuple[Any, tuple[str, ...], dict[str, str] | None]:
    """The cleaned checkpoint in the input's layout, built in memory: (object, where G sits, safetensors metadata)."""
    src_path = job.src_path
    if src_path is None:
        result.layout = "state_dict (no input checkpoint)"
        return OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items()), (), None
    original = read_checkpoint(src_path, job.g.spec.trust_pickle, job.allow)
    extract_state_dict(original, job.g.spec.key, str(src_path))  # same lookup and errors as loading
    where = _locate(original, job.g.spec.key)
    old = _get(original, where)
    meta = None
    if src_path.suffix == ".safetensors":
        with safetensors.safe_open(str(src_path), framework="pt") as fh:
            meta = fh.metadata()
    if not _same_weights(old.state_dict() if isinstance(old, nn.Module) else old, job.g.module):
        raise UserError(f"the generator weights in {src_path} differ from the loaded generator's; pass the "
                        "checkpoint the generator was loaded from as checkpoint_layout_from.")
    at = f" at {'.'.join(where)}" if where else ""
    if isinstance(old, nn.Module):
        obj = _set(original, where, model)
        result.layout = "pickled module" + at
    else:
        obj = _set(original, where, _replace_sd(old, model, str(src_path)))
        result.layout = ("safetensors" if src_path.suffix == ".safetensors" else "state_dict") + at
    return obj, where, meta


def _write_baked(job: _Job, model: nn.Module, result: ExportResult) -> str:
    """Verify exactly what will be stored (dtype included) and write it; returns why not ('' when written)."""
    obj, where, meta = _in_layout(job, model, result)
    stored = _get(obj, where)
    ckpt_path = job.ckpt_path
    if isinstance(stored, nn.Module):
        candidate = stored
    else:
        candidate = copy.deepcopy(job.g.module)
        load_into(candidate, extract_state_dict(stored, None, str(ckpt_path)), str(ckpt_path))  # type: ignore[arg-type]
    candidate.eval()
    diff = verify(job.g.module, candidate, job.norm, inputs=job.lat, n=job.n, call=job.call)
    result.max_abs_diff = diff
    if diff > job.tolerance:
        return (f"the edits were baked into the weights, but the stored weights differ from the hooked generator by "
                f"up to {diff:.3g} (> {job.tolerance:g}; e.g. a low-precision checkpoint dtype), so ")
    result.exact = True
    result.fingerprint_after = fingerprint(candidate, job.g.spec)
    if ckpt_path.suffix == ".safetensors":
        _save_safetensors(obj, ckpt_path, meta)
        sft_path = ckpt_path
    else:
        save_torch_atomic(obj, ckpt_path)
        sft_path = job.out_dir / f"{job.stem}.safetensors"
        _save_safetensors(candidate.state_dict(), sft_path)
    _check_written(ckpt_path, sft_path, candidate, job.g.spec.trust_pickle, job.allow)
    result.files["checkpoint"] = {"path": str(ckpt_path), "sha256": sha256_file(ckpt_path)}
    result.files["safetensors"] = {"path": str(sft_path), "sha256": sha256_file(sft_path)}
    methods = ", ".join(f"{k}: {v['method']}" for k, v in result.layers.items())
    result.note = (f"all edits are baked into the weights ({methods}); "
                   f"max |cleaned - hooked| = {diff:.3g} over {job.n} latents (seed {job.seed}).")
    return ""


def _write_torchscript(job: _Job, example: tuple[Any, ...], result: ExportResult, note: str) -> None:
    """The fallback: a verified TorchScript module that runs the hook edit inside its forward."""
    ts_path = job.out_dir / f"{job.stem}.torchscript.pt"
    loaded = save_hooked_torchscript(job.g.module, job.norm, example, job.call, ts_path)
    diff = verify(job.g.module, loaded, job.norm, inputs=job.lat, n=job.n, call=job.call)
    if diff > job.tolerance:
        raise RuntimeFailure(f"the TorchScript export differs from the hooked generator by {diff:.3g} (> {job.tolerance:g}); "
                             f"{ts_path} should not be used.")
    result.max_abs_diff = diff
    result.layout = "torchscript"
    result.files["torchscript"] = {"path": str(ts_path), "sha256": sha256_file(ts_path)}
    result.note = (note + f"no weights checkpoint was written: {ts_path.name} is a TorchScript module that applies "
                   f"the ablation inside its forward (load it with torch.jit.load); max |torchscript - hooked| = "
                   f"{diff:.3g} over {job.n} latents (seed {job.seed}).")


def _check_written(ckpt_path: Path, sft_path: Path, model: nn.Module, trust_pickle: bool, allow: tuple = ()) -> None:
    """Read the written files back: the safetensors copy must hold `model`'s weights bit for bit."""
    read_checkpoint(ckpt_path, trust_pickle, allow)
    sd = safetensors.torch.load_file(str(sft_path))
    cur = model.state_dict()
    prefix = "module." if all(k.startswith("module.") for k in sd) else ""
    if {k[len(prefix):] for k in sd} != set(cur) or any(
            not torch.equal(v, cur[k[len(prefix):]].cpu().to(v.dtype)) for k, v in sd.items()):
        raise RuntimeFailure(f"{sft_path} does not read back as the cleaned weights; the disk may be full or failing.")
