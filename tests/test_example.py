"""The bundled example: committed weights load safely, and the training script is deterministic."""

import subprocess
import sys
from pathlib import Path

import torch

from artifix.example.model import CHECKPOINT, make_generator

ROOT = Path(__file__).resolve().parent.parent


def test_committed_checkpoint_loads_safely_and_records_its_recipe():
    ck = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert set(ck) >= {"netG_state_dict", "netD_state_dict", "meta"}
    assert ck["meta"]["steps"] == 2500 and ck["meta"]["seed"] == 0
    make_generator().load_state_dict(ck["netG_state_dict"])
    assert CHECKPOINT.stat().st_size < 20 * 2**20


def test_training_script_is_deterministic(tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.pt"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "train_example.py"), "--steps", "3", "--pool", "64", "--batch", "8",
                        "--save-every", "3", "--threads", "1", "--out", str(out)], check=True, capture_output=True, cwd=tmp_path)
        outs.append(torch.load(out, weights_only=True))
    a, b = outs
    assert a["meta"]["steps"] == 3
    for k in a["netG_state_dict"]:
        assert torch.equal(a["netG_state_dict"][k], b["netG_state_dict"][k]), k


def test_bundled_review_notes_give_the_ranks_artifix_score_finds(tmp_path):
    """The approvals' notes say which rank each unit has with and without the review's classifier: re-scored here."""
    import json
    import re

    from artifix.example.model import REVIEW_DIR, bundled_review
    from tests.conftest import run_cli

    store = str(tmp_path / "labels.sqlite")
    code, _, err = run_cli("flags", "import", str(REVIEW_DIR / "flags.csv"), "--store", store)
    assert code == 0, err
    ranks = {}
    for name, extra in (("with", ["--classifier", str(REVIEW_DIR / "classifier.pt")]), ("without", [])):
        code, out, err = run_cli("score", "--store", store, "--top", "8", "--json", "--out", str(tmp_path / name), *extra)
        assert code == 0, err
        ranks[name] = {int(r["unit"]): int(r["rank"]) for r in json.loads(out)["top"]}
    for a in bundled_review()["approved"]:
        with_, without = map(int, re.match(r"rank (\d+) with the review's classifier \(rank (\d+) without it\)", a["note"]).groups())
        assert ranks["with"][a["unit"]] == with_ and ranks["without"][a["unit"]] == without, (a, ranks)
