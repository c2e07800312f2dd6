"""The bundled example: committed weights load safely, and the training script is deterministic."""

import subprocess
import sys
from pathlib import Path

import torch

from artifix.example import CHECKPOINT, make_generator

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
