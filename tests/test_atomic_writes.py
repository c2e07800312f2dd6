"""Every kind of file artifix writes is written atomically: an interrupted write leaves the old file or none.

Faults are injected two ways: (1) in-process, the serializer behind each writer (bytes, torch.save, np.savez,
safetensors, torch.jit.save) is made to leave half of its output in the file and then fail, as a full disk
or a crash would; (2) real writer processes are killed with SIGKILL at random moments mid-write. Afterwards
the target must hold exactly the old bytes (or not exist if it did not before) and no temporary file may remain.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from artifix import io as aio
from tests.conftest import GENS


class Torn(OSError):
    """The injected failure (a full disk, a crash) after half of the bytes were written."""


def _tear(path_or_fh) -> None:
    if hasattr(path_or_fh, "truncate"):
        path_or_fh.flush()
        size = path_or_fh.tell()
        path_or_fh.truncate(size // 2)
    else:
        p = Path(path_or_fh)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    raise Torn("injected failure half-way through the write")


def inject(monkeypatch, kind: str) -> None:
    """Make the serializer behind `kind` write half of its output and fail."""
    if kind == "bytes":
        real = pathlib.Path.write_bytes

        def torn(self, data):
            real(self, data[: len(data) // 2])
            raise Torn("injected failure half-way through the write")

        monkeypatch.setattr(pathlib.Path, "write_bytes", torn)
    elif kind == "torch.save":
        real_save = torch.save
        monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (real_save(obj, f, *a, **k), _tear(f)))
    elif kind == "np.savez":
        real_savez = np.savez
        monkeypatch.setattr(np, "savez", lambda f, *a, **k: (real_savez(f, *a, **k), _tear(f)))
    elif kind == "safetensors":
        import safetensors.torch as sft

        real_sf = sft.save_file
        monkeypatch.setattr(sft, "save_file", lambda t, f, *a, **k: (real_sf(t, f, *a, **k), _tear(f)))
    elif kind == "torch.jit.save":
        real_js = torch.jit.save
        monkeypatch.setattr(torch.jit, "save", lambda m, f, *a, **k: (real_js(m, f, *a, **k), _tear(f)))
    else:  # pragma: no cover
        raise AssertionError(kind)


# ------------------------------------------------------------------------------------------- the writers
# name -> (serializer kind, write(path, version)): every writer artifix uses for its output files.


def _w_text(path, v):
    aio.write_text_atomic(path, f"report version {v}\n" * 200)


def _w_json(path, v):
    aio.write_json_atomic(path, {"version": v, "values": list(range(300))})


def _w_png(path, v):
    from artifix.model.images import save_png

    save_png(path, np.full((32, 32, 3), 40 * v, np.uint8))


def _w_csv_export(path, v):
    import pandas as pd

    aio.write_text_atomic(path, pd.DataFrame({"unit": range(50), "score": [v] * 50}).to_csv(index=False))


def _w_unit_stats(path, v):
    from artifix.units.stats import UnitStats

    s = UnitStats("main.3", 4, 8)
    s.update(torch.full((8, 4, 3, 3), float(v)), range(8))
    s.save(path)


def _w_classifier(path, v):
    from artifix.review.classifier import ArtifactClassifier

    fake = SimpleNamespace(to_dict=lambda: {"format": "test", "coef": torch.full((100,), float(v))})
    ArtifactClassifier.save(fake, path)


def _w_reference_stats(path, v):
    from artifix.metrics import reference as R
    from artifix.metrics.fd import Moments

    m = Moments(4)
    m.update(np.random.default_rng(v).normal(size=(50, 4)))
    R.save_stats(path, R.RealStats(m, np.zeros((50, 4), np.float32) + v, None, {"tag": "t", "v": v}))


def _w_safetensors(path, v):
    from artifix.repair.export import _save_safetensors

    _save_safetensors({"w": torch.full((1000,), float(v))}, Path(path))


def _w_torchscript(path, v):
    mod = torch.jit.script(torch.nn.Linear(4, 4 + v))
    with aio.atomic_path(path) as tmp:
        torch.jit.save(mod, str(tmp))


WRITERS = {
    "report text (Markdown, model card)": ("bytes", _w_text),
    "JSON (manifest, scores, export.json)": ("bytes", _w_json),
    "PNG (grids, unit cards, masks)": ("bytes", _w_png),
    "CSV (unit_scores.csv)": ("bytes", _w_csv_export),
    "unit-stats cache (torch.save)": ("torch.save", _w_unit_stats),
    "artifact classifier (torch.save)": ("torch.save", _w_classifier),
    "reference statistics cache (np.savez)": ("np.savez", _w_reference_stats),
    "cleaned weights (safetensors)": ("safetensors", _w_safetensors),
    "TorchScript fallback (torch.jit.save)": ("torch.jit.save", _w_torchscript),
}


def _ls(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("name", list(WRITERS))
def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(name, tmp_path, monkeypatch):
    kind, write = WRITERS[name]
    out = tmp_path / "out"
    target = out / "file.bin"
    write(target, 1)
    old = target.read_bytes()
    assert _ls(out) == ["file.bin"]
    with monkeypatch.context() as mp:
        inject(mp, kind)
        with pytest.raises(Torn):
            write(target, 2)
    assert target.read_bytes() == old, "the old file was torn"
    assert _ls(out) == ["file.bin"], "a temporary file was left behind"
    fresh = out / "new.bin"  # no old file: an interrupted first write leaves nothing at all
    with monkeypatch.context() as mp:
        inject(mp, kind)
        with pytest.raises(Torn):
            write(fresh, 2)
    assert _ls(out) == ["file.bin"]
    write(target, 2)  # and without the fault the new version replaces the old one
    assert target.read_bytes() != old and _ls(out) == ["file.bin"]


def test_cleaned_generator_export_interrupted_keeps_the_previous_export(tmp_path, monkeypatch, tiny_ckpt):
    """The cleaned checkpoint (torch.save in the input's layout) and its safetensors copy, through export_cleaned."""
    from artifix.repair.export import export_cleaned
    from artifix.model.generator import load_generator, spec_from_options

    g = load_generator(spec_from_options({"generator": f"{GENS}:tiny_dcgan", "checkpoint": str(tiny_ckpt), "latent": "16,1,1"}))
    out = tmp_path / "cleaned"
    export_cleaned(g, {"main.3": [1]}, out, n=8)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for kind in ("torch.save", "safetensors", "bytes"):
        with monkeypatch.context() as mp:
            inject(mp, kind)
            with pytest.raises(Torn):
                export_cleaned(g, {"main.3": [2, 5]}, out, n=8)
        after = {p.name: p.read_bytes() for p in out.iterdir()}
        # each file is the old one or a complete new one (they are replaced one by one), never torn or temporary
        assert set(after) == set(before), kind
        for name, data in after.items():
            if data != before[name]:
                if name.endswith(".safetensors"):
                    from safetensors.torch import load_file

                    load_file(str(out / name))
                elif name.endswith(".pt"):
                    torch.load(out / name, weights_only=True)
                else:
                    json.loads(data)


def test_label_export_interrupted_keeps_the_previous_export(tmp_path, monkeypatch, store):
    run = store.register_run("fp", ["l"], 0, 20, image_size=(8, 8))
    for i in range(10):
        store.set_flag(run, i, "artifact" if i % 2 else "clean", "alice")
        store.set_mask(run, i, "alice", np.eye(8, dtype=bool))
    folder = tmp_path / "export"
    store.export_labels(run, folder)
    before = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    store.set_flag(run, 11, "artifact", "bob")
    with monkeypatch.context() as mp:
        inject(mp, "bytes")
        with pytest.raises(Torn):
            store.export_labels(run, folder)
    after = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary export folder was left behind"


# ----------------------------------------------------------------------------------- real processes, SIGKILL

CHILD = textwrap.dedent("""
    import sys, time
    from artifix.io import atomic_path

    target, size = sys.argv[1], int(sys.argv[2])
    chunk = size // 64
    print("ready", flush=True)
    i = 0
    while True:  # each write streams 64 chunks, as torch.save / np.savez of a large object do
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                for _ in range(64):
                    fh.write(bytes([65 + i % 4]) * chunk)
                    fh.flush()
                    time.sleep(0.001)
        i += 1
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_writer_killed_mid_write_leaves_a_whole_file_and_the_next_write_cleans_up(tmp_path):
    size = 4 << 20  # 4 MiB per write, streamed: most kills land inside one
    target = tmp_path / "out" / "stats.pt"
    whole = {bytes([65 + k]) * size for k in range(4)}
    rng = np.random.default_rng(0)
    leftovers = 0
    kills = 8
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(target), str(size)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
        assert child.stdout.readline().strip() == b"ready", child.stderr.read().decode()
        deadline = time.monotonic() + 60
        while not target.exists():
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read().decode()
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.01, 0.5)))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        assert target.read_bytes() in whole, "a reader saw a torn file"
        leftovers += len([p for p in target.parent.iterdir() if p.name != target.name])
    assert leftovers > 0, "no kill landed inside a write; the test did not test anything"
    aio.write_bytes_atomic(target, b"final")  # the next write removes what the killed writers left
    assert _ls(target.parent) == ["stats.pt"] and target.read_bytes() == b"final"
    print(f"\nkill -9 mid-write: {kills} kills, {leftovers} interrupted temporary files, 0 torn targets")


def test_a_live_writers_temporary_file_is_never_swept(tmp_path):
    target = tmp_path / "f.bin"
    with aio.atomic_path(target) as tmp:  # this process is alive and writing
        tmp.write_bytes(b"new")
        child = subprocess.run([sys.executable, "-c", f"from artifix.io import write_bytes_atomic; write_bytes_atomic({str(tmp_path / 'f.bin')!r}, b'other')"],
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}, capture_output=True)
        assert child.returncode == 0, child.stderr.decode()
        assert tmp.exists()
    assert target.read_bytes() == b"new" and _ls(tmp_path) == ["f.bin"]
