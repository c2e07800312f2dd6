"""`artifix repair` on the planted example: approvals only, verified cleaned checkpoint, paired metrics with a control."""

import json

import torch

from artifix.example.model import make_generator
from artifix.labels import LabelStore
from tests.test_cli_pipeline import TRUTH, cli, planted_project  # noqa: F401  (module fixture reused)


def test_repair_removes_only_approved_units(planted_project, tmp_path):
    d, review = planted_project
    assert cli(d, "flags", "import", str(d / "labels"))[0] == 0
    out = tmp_path / "rep"
    # nothing approved yet: refused, nothing written
    code, _, err = cli(d, "repair", "--out", str(out), "--repair-n", "64")
    assert code == 2 and "no approved units" in err and not out.exists()
    store = LabelStore(str(d / "labels.sqlite"))
    run_id = store.runs()[-1].id
    for u in TRUTH[:2]:
        store.decide_unit(run_id, "main.8", u, "approved", "alice", note="blotches")
    store.close()
    code, stdout, err = cli(d, "repair", "--out", str(out), "--repair-n", "64", "--json")
    assert code == 0, err
    m = json.loads(stdout)
    assert m["units"] == sorted(TRUTH[:2]) and m["selection"] == "approved"
    assert [a["reviewer"] for a in m["approvals"]] == ["alice", "alice"]
    assert not set(m["random_control_units"]) & set(m["units"]) and len(m["random_control_units"]) == 2
    assert m["export"]["exact"] and m["export"]["max_abs_diff"] <= 1e-5
    for name in ("repair", "control"):
        fd = next(k for k in m["metrics"][name] if k.startswith("fd_"))
        assert m["metrics"][name][fd]["ci"] is not None
    # the cleaned checkpoint keeps the DCGAN layout and loads into a fresh instance of the original class
    ck = torch.load(out / "planted.pt", weights_only=True)
    assert set(ck) == {"netG_state_dict", "netD_state_dict", "meta"}
    g = make_generator()
    g.load_state_dict(ck["netG_state_dict"], strict=True)
    orig = torch.load(d / "planted.pt", weights_only=True)
    assert torch.equal(ck["netD_state_dict"]["main.0.weight"], orig["netD_state_dict"]["main.0.weight"])
    for f in ("manifest.json", "MODEL_CARD.md", "report.md", "before_after_flagged.png", "before_after_clean.png"):
        assert (out / f).is_file(), f
