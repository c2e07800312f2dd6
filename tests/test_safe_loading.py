"""Safe loading: no file artifix reads can run code unless the user passes --trust-pickle for a checkpoint.

Two parts: a source audit (every torch.load in artifix/ passes weights_only=True, or `not trust_pickle` in the
one checkpoint reader; every np.load passes allow_pickle=False; no pickle/joblib/dill loads at all), and, for
every loader, a malicious pickle whose payload would create a file: refused with a UserError, payload not run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from artifix.errors import UserError
from tests.conftest import GENS

SRC = Path(__file__).resolve().parent.parent / "artifix"


class Evil:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _calls(tree: ast.AST, dotted: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = []
            while isinstance(f, ast.Attribute):
                name.append(f.attr)
                f = f.value
            if not isinstance(f, ast.Name):
                continue  # a method of a computed value, e.g. model.eval()
            name.append(f.id)
            if ".".join(reversed(name)) == dotted:
                yield node


def _kw(call: ast.Call, name: str) -> str | None:
    for k in call.keywords:
        if k.arg == name:
            return ast.unparse(k.value)
    return None


def test_source_audit_every_load_is_safe():
    loads = {"torch.load": 0, "np.load": 0}
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        rel = path.relative_to(SRC).as_posix()
        for call in _calls(tree, "torch.load"):
            loads["torch.load"] += 1
            wo = _kw(call, "weights_only")
            allowed = {"True"} | ({"not trust_pickle"} if rel == "model/generator.py" else set())
            assert wo in allowed, f"{rel}:{call.lineno}: torch.load without weights_only=True ({wo})"
        for call in _calls(tree, "np.load"):
            loads["np.load"] += 1
            assert _kw(call, "allow_pickle") == "False", f"{rel}:{call.lineno}: np.load without allow_pickle=False"
        for bad in ("pickle.load", "pickle.loads", "pickle.Unpickler", "joblib.load", "dill.load", "torch.serialization.load",
                    "pd.read_pickle", "eval", "exec"):
            found = list(_calls(tree, bad))
            if rel == "adapters/stylegan.py" and bad == "pickle.load":  # network pickles: only behind --trust-pickle
                guarded = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "read_network_pickle"]
                assert guarded and "if not trusted:" in ast.unparse(guarded[0]), "read_network_pickle must refuse untrusted files"
                inside = {id(c) for c in _calls(guarded[0], bad)}
                found = [c for c in found if id(c) not in inside]
            assert not found, f"{rel}:{found[0].lineno}: {bad} can run code from a file"
    assert loads["torch.load"] >= 6 and loads["np.load"] >= 3, loads  # the audit saw the loaders it is about


def test_checkpoint_pickle_refused_unless_trusted(tmp_path, tiny_ckpt):
    from artifix.model.generator import read_checkpoint

    marker = tmp_path / "pwned"
    sd = torch.load(tiny_ckpt, weights_only=True)["netG_state_dict"]
    torch.save({"netG_state_dict": sd, "x": Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused to unpickle .*--trust-pickle"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    read_checkpoint(tmp_path / "evil.pt", trust_pickle=True)  # the escape hatch does what it says
    assert marker.exists()


def test_export_reads_the_source_checkpoint_safely(tmp_path, tiny_ckpt):
    """export_cleaned re-reads the input checkpoint for its layout: the same refusal applies there."""
    from artifix.repair.export import export_cleaned
    from artifix.model.generator import load_generator, spec_from_options

    g = load_generator(spec_from_options({"generator": f"{GENS}:tiny_dcgan", "checkpoint": str(tiny_ckpt), "latent": "16,1,1"}))
    marker = tmp_path / "pwned"
    sd = torch.load(tiny_ckpt, weights_only=True)["netG_state_dict"]
    torch.save({"netG_state_dict": sd, "x": Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused to unpickle"):
        export_cleaned(g, {"main.3": [1]}, tmp_path / "out", checkpoint_layout_from=tmp_path / "evil.pt", n=4)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_unit_stats_file_pickle_refused(tmp_path):
    from artifix.units.stats import UnitStats

    marker = tmp_path / "pwned"
    torch.save({"format": "artifix.unit_stats", "x": Evil(marker)}, tmp_path / "stats.pt")
    with pytest.raises(UserError, match="not a readable unit-stats file"):
        UnitStats.load(tmp_path / "stats.pt")
    assert not marker.exists()


def test_poisoned_stats_cache_is_refused_and_recomputed(tmp_path, tiny_ckpt):
    from artifix.model.generator import load_generator, spec_from_options
    from artifix.units.scoring import cached_stats

    g = load_generator(spec_from_options({"generator": f"{GENS}:tiny_dcgan", "checkpoint": str(tiny_ckpt), "latent": "16,1,1"}))
    good = cached_stats(g, "main.3", 0, 8, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    marker = tmp_path / "pwned"
    torch.save({"x": Evil(marker)}, entry)  # someone plants a pickle where the cache entry was
    again = cached_stats(g, "main.3", 0, 8, tmp_path / "cache")
    assert not marker.exists()
    assert torch.equal(again.max, good.max)
    from artifix.units.stats import UnitStats

    assert torch.equal(UnitStats.load(entry).max, good.max)  # the entry was replaced by a good one


def test_classifier_file_pickle_refused(tmp_path):
    from artifix.review.classifier import ArtifactClassifier

    marker = tmp_path / "pwned"
    torch.save({"format": "artifix.artifact_classifier", "x": Evil(marker)}, tmp_path / "clf.pt")
    with pytest.raises(UserError, match="not a readable artifix classifier file"):
        ArtifactClassifier.load(tmp_path / "clf.pt")
    assert not marker.exists()


def test_inception_weights_pickle_refused(tmp_path):
    from artifix.metrics.inception import _inception_module

    marker = tmp_path / "pwned"
    torch.save({"x": Evil(marker)}, tmp_path / "pt_inception.pth")
    with pytest.raises(UserError, match="Cannot read the FID Inception weights"):
        _inception_module(str(tmp_path / "pt_inception.pth"), False)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_reference_array_with_objects_refused(tmp_path, suffix):
    from artifix.metrics import reference as R

    marker = tmp_path / "pwned"
    arr = np.empty((1, 1, 1, 1), dtype=object)
    arr[0, 0, 0, 0] = Evil(marker)
    path = tmp_path / f"real{suffix}"
    if suffix == ".npz":
        np.savez(path, images=arr)
    else:
        np.save(path, arr, allow_pickle=True)
    with pytest.raises(UserError):
        R.check_real(path)
    with pytest.raises(UserError):
        R._array_source(path, None)
    assert not marker.exists()


def test_reference_statistics_file_with_objects_refused(tmp_path):
    from artifix.metrics import reference as R

    marker = tmp_path / "pwned"
    bad = np.empty(1, dtype=object)
    bad[0] = Evil(marker)
    np.savez(tmp_path / "stats.npz", artifix_stats=np.array(R.STATS_VERSION), fingerprint=bad)
    with pytest.raises(UserError, match="not a readable artifix statistics file"):
        R.load_stats(tmp_path / "stats.npz")
    assert not marker.exists()
