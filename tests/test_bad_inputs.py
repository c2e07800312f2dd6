"""The bad-input catalogue: every kind of bad input, driven through the real CLI (in-process).

Each case must give exit code 2, exactly one line on stderr naming the problem (no traceback), nothing on
stdout, and leave the working folder as it was: no file created or changed, the label store's content the
same (compared as an SQL dump), no temporary files.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import FIXTURES, GENS, run_cli

BAD_GENS = FIXTURES / "bad_gens.py"
LAYER = "main.3"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Shared, read-only inputs: a tiny DCGAN checkpoint (outside every case's working folder)."""
    from tests.fixtures.gens import tiny_dcgan

    d = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    g = tiny_dcgan()
    for p in g.parameters():
        p.data.normal_(0, 0.2)
    torch.save({"netG_state_dict": g.state_dict(), "epoch": 3}, d / "ckpt.pt")
    return d


def tiny(ckpt, *extra: str) -> list[str]:
    return ["--generator", f"{GENS}:tiny_dcgan", "--checkpoint", str(ckpt), "--latent", "16,1,1", *extra]


def bad_gen(name: str) -> list[str]:
    return ["--generator", f"{BAD_GENS}:{name}", "--latent", "4"]


def make_store(w: Path, ckpt: Path, flags: list[tuple[int, str]] = (), approve: list[int] = ()) -> Path:
    """A label store in the working folder with the tiny generator's run registered (and some flags)."""
    from artifix.model.generator import load_generator, spec_from_options
    from artifix.labels import LabelStore

    g = load_generator(spec_from_options({"generator": f"{GENS}:tiny_dcgan", "checkpoint": str(ckpt), "latent": "16,1,1"}))
    path = w / "labels.sqlite"
    with LabelStore(path) as s:
        run = s.register_run(g.fingerprint, [LAYER], 0, 2000, image_size=(64, 64))
        for sample, label in flags:
            s.set_flag(run, sample, label, "alice")
        for u in approve:
            s.decide_unit(run, LAYER, u, "approved", "alice")
    return path


def png(path: Path, size=(8, 8), value=128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


# --------------------------------------------------------------------------------------------- the catalogue
# name -> (setup(w, ckpt) -> argv, text the one error line must contain). `w` is the working folder (the cwd).

CASES: dict[str, tuple] = {}


def case(name: str, expect: str):
    def deco(fn):
        assert name not in CASES
        CASES[name] = (fn, expect)
        return fn
    return deco


# -- checkpoints

@case("checkpoint missing", "checkpoint in/missing.pt does not exist; check --checkpoint")
def _(w, ck):
    return ["sample", *tiny("in/missing.pt")]


@case("checkpoint corrupt", "is corrupt or not a PyTorch file")
def _(w, ck):
    (w / "in" / "bad.pt").write_bytes(b"not a checkpoint at all")
    return ["sample", *tiny(w / "in" / "bad.pt")]


@case("checkpoint truncated", "is corrupt or not a PyTorch file")
def _(w, ck):
    data = ck.read_bytes()
    (w / "in" / "half.pt").write_bytes(data[: len(data) // 2])
    return ["sample", *tiny(w / "in" / "half.pt")]


@case("checkpoint empty file", "is corrupt or not a PyTorch file")
def _(w, ck):
    (w / "in" / "empty.pt").write_bytes(b"")
    return ["sample", *tiny(w / "in" / "empty.pt")]


class Evil:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@case("checkpoint is a malicious pickle", "refused to unpickle")
def _(w, ck):
    sd = torch.load(ck, weights_only=True)["netG_state_dict"]
    torch.save({"netG_state_dict": sd, "payload": Evil(str(w / "PWNED"))}, w / "in" / "evil.pt")
    return ["sample", *tiny(w / "in" / "evil.pt")]


@case("safetensors corrupt", "is not a readable safetensors file")
def _(w, ck):
    (w / "in" / "g.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    return ["sample", *tiny(w / "in" / "g.safetensors")]


@case("wrong key", "key 'nope' is not in")
def _(w, ck):
    return ["sample", *tiny(ck, "--key", "nope")]


@case("no state dict under a known key", "name it with --key")
def _(w, ck):
    sd = torch.load(ck, weights_only=True)["netG_state_dict"]
    torch.save({"models": {"gen": sd}}, w / "in" / "nested.pt")
    return ["sample", *tiny(w / "in" / "nested.pt")]


@case("weights do not fit the model", "do not fit the model")
def _(w, ck):
    return ["sample", *tiny(ck, "--kwargs", '{"ngf": 8}')]


@case("wrong latent size", "rejected latents of shape (100, 1, 1)")
def _(w, ck):
    return ["sample", "--generator", f"{GENS}:tiny_dcgan", "--checkpoint", str(ck), "--latent", "100,1,1"]


@case("TorchScript file corrupt", "is not a TorchScript file")
def _(w, ck):
    (w / "in" / "g.ts").write_bytes(b"PK\x03\x04 truncated zip")
    return ["sample", "--generator", str(w / "in" / "g.ts"), "--latent", "16"]


@case("generator file missing", "generator file in/nope.py does not exist")
def _(w, ck):
    return ["sample", "--generator", "in/nope.py:G", "--latent", "4"]


@case("generator name missing in module", "has no attribute 'NoSuchGen'")
def _(w, ck):
    return ["sample", *bad_gen("NoSuchGen")]


@case("factory returns no module", "not a torch.nn.Module")
def _(w, ck):
    return ["sample", *bad_gen("not_a_module")]


@case("kwargs not JSON", "--kwargs must be a JSON object")
def _(w, ck):
    return ["sample", *tiny(ck, "--kwargs", "{ngf: 8")]


@case("kwargs the factory does not take", "check --kwargs")
def _(w, ck):
    return ["sample", *tiny(ck, "--kwargs", '{"colour": 1}')]


# -- generator output

@case("output has NaN", "NaN or Inf values in 1 of 2 samples")
def _(w, ck):
    return ["sample", "--generator", f"{GENS}:NaNGen", "--latent", "4"]


@case("output has Inf", "NaN or Inf values in 2 of 2 samples")
def _(w, ck):
    return ["sample", *bad_gen("InfGen")]


@case("output is flat", "needs images shaped (2, 1 or 3, H, W)")
def _(w, ck):
    return ["sample", "--generator", f"{GENS}:FlatGen", "--latent", "4"]


@case("output has 5 channels", "returned shape (2, 5, 4, 4)")
def _(w, ck):
    return ["sample", *bad_gen("FiveChannels")]


@case("output has the wrong batch size", "returned shape (1, 3, 4, 4)")
def _(w, ck):
    return ["sample", *bad_gen("WrongBatch")]


@case("output is a tuple", "the generator returned a tuple")
def _(w, ck):
    return ["sample", *bad_gen("TupleGen")]


# -- reference images (checked before any sampling)

@case("reference folder has no images", "No images (.png/.jpg/.jpeg/.bmp/.webp) in the reference folder")
def _(w, ck):
    (w / "in" / "real").mkdir()
    (w / "in" / "real" / "notes.txt").write_text("hello")
    return ["metrics", *tiny(ck, "--real", "in/real", "--n", "4")]


@case("reference folder has a non-image .png", "not a readable image")
def _(w, ck):
    png(w / "in" / "real" / "a.png")
    (w / "in" / "real" / "b.png").write_bytes(b"this is text, not a PNG")
    return ["metrics", *tiny(ck, "--real", "in/real", "--n", "4")]


@case("reference images of mixed sizes", "Reference images differ in size in")
def _(w, ck):
    png(w / "in" / "real" / "a.png", (8, 8))
    png(w / "in" / "real" / "b.png", (8, 6))
    return ["metrics", *tiny(ck, "--real", "in/real", "--n", "4")]


@case("reference .npz truncated", "truncated or corrupt")
def _(w, ck):
    buf = w / "in" / "full.npz"
    np.savez(buf, images=np.zeros((4, 8, 8, 3), np.uint8))
    data = buf.read_bytes()
    buf.unlink()
    (w / "in" / "real.npz").write_bytes(data[: len(data) * 2 // 3])
    return ["metrics", *tiny(ck, "--real", "in/real.npz", "--n", "4")]


@case("reference .npz of floats", "holds float32 values; the reference array must be uint8")
def _(w, ck):
    np.savez(w / "in" / "real.npz", images=np.zeros((4, 8, 8, 3), np.float32))
    return ["metrics", *tiny(ck, "--real", "in/real.npz", "--n", "4")]


@case("reference .npz not 4-D", "must hold images as a 4-D uint8 array")
def _(w, ck):
    np.savez(w / "in" / "real.npz", images=np.zeros((4, 8), np.uint8))
    return ["metrics", *tiny(ck, "--real", "in/real.npz", "--n", "4")]


@case("reference missing", "does not exist")
def _(w, ck):
    return ["metrics", *tiny(ck, "--real", "in/nothing", "--n", "4")]


@case("repair reference truncated", "truncated or corrupt")
def _(w, ck):
    (w / "in" / "real.npz").write_bytes(b"PK\x03\x04")
    return ["repair", *tiny(ck, "--layer", LAYER, "--real", "in/real.npz", "--store", str(make_store(w, ck, approve=[1])))]


# -- flag sets

@case("classifier: no flags, no store", "has 0 flagged and 0 clean")
def _(w, ck):
    return ["classify", "train", *tiny(ck, "--layer", LAYER, "--store", "labels.sqlite")]


@case("classifier: empty flag set", "has 0 flagged and 0 clean")
def _(w, ck):
    return ["classify", "train", *tiny(ck, "--layer", LAYER, "--store", str(make_store(w, ck)))]


@case("classifier: all-positive flag set", "has 5 flagged and 0 clean")
def _(w, ck):
    store = make_store(w, ck, [(i, "artifact") for i in range(5)])
    return ["classify", "train", *tiny(ck, "--layer", LAYER, "--store", str(store))]


@case("classifier: one clean sample", "has 3 flagged and 1 clean")
def _(w, ck):
    store = make_store(w, ck, [(0, "artifact"), (1, "artifact"), (2, "artifact"), (3, "clean")])
    return ["classify", "train", *tiny(ck, "--layer", LAYER, "--store", str(store))]


@case("repair: nothing approved", "no approved units of layer main.3")
def _(w, ck):
    store = make_store(w, ck, [(0, "artifact"), (1, "clean")])
    return ["repair", *tiny(ck, "--layer", LAYER, "--store", str(store))]


@case("classifier file corrupt", "is not a readable artifix classifier file")
def _(w, ck):
    (w / "in" / "clf.pt").write_bytes(b"garbage")
    return ["classify", "predict", *tiny(ck, "--layer", LAYER, "--classifier", "in/clf.pt")]


@case("classifier file is a malicious pickle", "is not a readable artifix classifier file")
def _(w, ck):
    torch.save({"format": "x", "payload": Evil(str(w / "PWNED"))}, w / "in" / "clf.pt")
    return ["classify", "predict", *tiny(ck, "--layer", LAYER, "--classifier", "in/clf.pt")]


# -- units and layers

@case("unit index out of range", "unit 99 is out of range: the layer has 16 units (0..15)")
def _(w, ck):
    return ["sample", *tiny(ck, "--layer", LAYER, "--ablate", "99")]


@case("negative unit index", "unit -1 is out of range")
def _(w, ck):
    return ["sample", *tiny(ck, "--layer", LAYER, "--ablate=-1")]


@case("units not integers", "units must be comma-separated integers")
def _(w, ck):
    return ["sample", *tiny(ck, "--layer", LAYER, "--ablate", "3,x")]


@case("unknown layer (sample)", "layer 'main.33' is not in the generator. Did you mean 'main.3'")
def _(w, ck):
    return ["sample", *tiny(ck, "--layer", "main.33", "--ablate", "1")]


@case("unknown layer (score)", "Did you mean 'main.1'")
def _(w, ck):
    return ["score", *tiny(ck, "--layer", "main.1x")]


@case("--ablate without --layer", "--ablate needs --layer")
def _(w, ck):
    return ["sample", *tiny(ck, "--ablate", "1")]


@case("--alpha outside [0, 1]", "--alpha must be in [0, 1]")
def _(w, ck):
    return ["sample", *tiny(ck, "--layer", LAYER, "--ablate", "1", "--alpha", "2")]


@case("--k not positive", "--k must be a positive number of units")
def _(w, ck):
    return ["repair", *tiny(ck, "--layer", LAYER, "--auto", "--k", "0", "--store", str(make_store(w, ck)))]


# -- option values

@case("--n zero", "--n must be a positive number of samples")
def _(w, ck):
    return ["sample", *tiny(ck, "--n", "0")]


@case("--n not a number", "invalid value 'ten' for 'n'")
def _(w, ck):
    return ["sample", *tiny(ck, "--n", "ten")]


@case("--latent not a shape", "--latent must be a shape like '100' or '100,1,1'")
def _(w, ck):
    return ["sample", "--generator", f"{GENS}:tiny_dcgan", "--latent", "big"]


@case("--range unknown", "--range must be '[-1,1]' or '[0,1]'")
def _(w, ck):
    return ["sample", *tiny(ck, "--range", "[0,255]")]


@case("--truncation negative", "--truncation must be a positive number")
def _(w, ck):
    return ["sample", *tiny(ck, "--truncation=-1")]


# -- config

@case("config not TOML", "is not valid TOML")
def _(w, ck):
    (w / "artifix.toml").write_text("[generator\nlatent = 3")
    return ["layers"]


@case("config unknown key", "unknown key 'latnt'")
def _(w, ck):
    (w / "artifix.toml").write_text('[generator]\nlatnt = "16"\n')
    return ["layers"]


@case("config wrong type", "invalid value 'many' for 'n'")
def _(w, ck):
    (w / "artifix.toml").write_text('[sample]\nn = "many"\n')
    return ["sample"]


@case("config boolean for a number", "invalid value True for 'seed'")
def _(w, ck):
    (w / "artifix.toml").write_text("[sample]\nseed = true\n")
    return ["sample"]


@case("config fraction for a whole number", "invalid value 3.7 for 'seed' (expected a whole number)")
def _(w, ck):
    (w / "artifix.toml").write_text("[sample]\nseed = 3.7\n")
    return ["sample"]


@case("config boolean for text", "invalid value True for 'layer'")
def _(w, ck):
    (w / "artifix.toml").write_text("[sample]\nlayer = true\n")
    return ["sample"]


@case("config table for text", "invalid value {'a': 1} for 'grid'")
def _(w, ck):
    (w / "artifix.toml").write_text("[sample]\ngrid = { a = 1 }\n")
    return ["sample"]


@case("config value instead of a table", "'generator' must be a table")
def _(w, ck):
    (w / "artifix.toml").write_text('generator = "x:y"\n')
    return ["layers"]


@case("config not UTF-8", "is not UTF-8 text")
def _(w, ck):
    (w / "artifix.toml").write_bytes(b'[sample]\nlayer = "\xff"\n')
    return ["layers"]


@case("--config file missing", "config file in/none.toml does not exist; check --config")
def _(w, ck):
    return ["layers", "--config", "in/none.toml"]


# -- label store and imports

@case("store is a folder", "is a folder; give the label store's file name")
def _(w, ck):
    (w / "in" / "store").mkdir()
    return ["flags", "show", *tiny(ck, "--layer", LAYER, "--store", "in/store")]


@case("store is not a database", "is not a SQLite database")
def _(w, ck):
    (w / "in" / "store.sqlite").write_bytes(b"x" * 200)
    return ["flags", "show", *tiny(ck, "--layer", LAYER, "--store", "in/store.sqlite")]


@case("import: mask path leaves the folder", "leaves the flags file's folder")
def _(w, ck):
    png(w / "in" / "outside.png", (64, 64))
    (w / "in" / "rev").mkdir()
    (w / "in" / "rev" / "flags.csv").write_text("sample,label,mask\n1,artifact,../outside.png\n")
    return ["flags", "import", "in/rev/flags.csv", *tiny(ck, "--layer", LAYER, "--store", str(make_store(w, ck, [(0, "clean")])))]


@case("import: absolute mask path", "is absolute")
def _(w, ck):
    (w / "in" / "flags.json").write_text(json.dumps([{"sample": 1, "label": "artifact", "mask": "/etc/passwd"}]))
    return ["flags", "import", "in/flags.json", *tiny(ck, "--layer", LAYER, "--store", str(make_store(w, ck, [(0, "clean")])))]


@case("import: mask linked outside the folder", "points outside the flags file's folder")
def _(w, ck):
    png(w / "in" / "secret.png", (64, 64))
    (w / "in" / "rev").mkdir()
    os.symlink(w / "in" / "secret.png", w / "in" / "rev" / "m.png")
    (w / "in" / "rev" / "flags.csv").write_text("sample,label,mask\n1,artifact,m.png\n")
    return ["flags", "import", "in/rev/flags.csv", *tiny(ck, "--layer", LAYER, "--store", str(make_store(w, ck, [(0, "clean")])))]


@case("import into a new store: bad row", "label 'artefact' is not one of")
def _(w, ck):
    (w / "in" / "flags.csv").write_text("sample,label\n1,artifact\n2,artefact\n")
    return ["flags", "import", "in/flags.csv", *tiny(ck, "--layer", LAYER, "--store", "labels.sqlite")]


@case("import: sample out of range", "sample index 5000")
def _(w, ck):
    (w / "in" / "flags.csv").write_text("sample,label\n1,artifact\n5000,clean\n")
    return ["flags", "import", "in/flags.csv", *tiny(ck, "--layer", LAYER, "--store", str(make_store(w, ck, [(0, "clean")])))]


@case("import: mask of the wrong size", "but the run's images are 64x64")
def _(w, ck):
    (w / "in" / "masks").mkdir()
    Image.new("L", (32, 32), 255).save(w / "in" / "masks" / "3_bob.png")
    return ["flags", "import", "in/masks", *tiny(ck, "--layer", LAYER, "--store", str(make_store(w, ck, [(0, "clean")])))]


@case("import: file missing", "in/none.csv does not exist")
def _(w, ck):
    return ["flags", "import", "in/none.csv", *tiny(ck, "--layer", LAYER, "--store", "labels.sqlite")]


# ------------------------------------------------------------------------------------------------- the test


def snapshot(root: Path) -> dict[str, object]:
    """Every path under root with its bytes (a label store by its SQL dump; WAL side files ignored)."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.endswith(("-wal", "-shm", "-journal")):
            continue
        if p.is_symlink() or p.is_dir():
            out[rel] = "link" if p.is_symlink() else "dir"
        elif p.suffix == ".sqlite" and p.read_bytes()[:16] == b"SQLite format 3\x00":
            with sqlite3.connect(f"file:{p}?mode=ro", uri=True) as c:
                out[rel] = list(c.iterdump())
        else:
            out[rel] = p.read_bytes()
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(name, tmp_path, assets):
    setup, expect = CASES[name]
    w = tmp_path / "w"
    (w / "in").mkdir(parents=True)
    argv = setup(w, assets / "ckpt.pt")
    before = snapshot(w)
    code, out, err = run_cli(*argv, cwd=w)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and out == ""
    line = lines[0]
    assert line.startswith(f"artifix {argv[0]}: error: "), line
    assert expect in line, line
    assert line.rstrip().endswith((".", "?")), line  # one finished sentence
    assert snapshot(w) == before, "a bad input changed the working folder"
    assert not (w / "PWNED").exists()

