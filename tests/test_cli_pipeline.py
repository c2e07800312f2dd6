"""The labelling -> scoring path driven through the CLI, as a user would: import flags, score, classify."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from artifix.example.model import CHECKPOINT
from artifix.model.generator import GeneratorSpec, load_generator
from artifix.example.planted import plant_defects, simulate_reviewer
from artifix.units.scoring import collect_stats
from artifix.report.unitviz import top_card
from tests.conftest import run_cli

TRUTH = [5, 17, 40]


@pytest.fixture(scope="module")
def planted_project(tmp_path_factory):
    """A planted-defect checkpoint in the DCGAN layout plus a reviewer's flags.csv and painted masks."""
    d = tmp_path_factory.mktemp("proj")
    g = load_generator()
    bad = plant_defects(g, TRUTH)
    ck = torch.load(CHECKPOINT, weights_only=True)
    ck["netG_state_dict"] = bad.module.state_dict()
    torch.save(ck, d / "planted.pt")
    review = simulate_reviewer(g, bad, seed=0, n_scan=300, n_flag=30, n_clean=30)
    rows = ["sample,label,reviewer"] + [f"{i},artifact,alice" for i in review.artifact] + [f"{i},clean,alice" for i in review.clean]
    (d / "labels").mkdir()
    (d / "labels" / "flags.csv").write_text("\n".join(rows) + "\n")
    (d / "labels" / "masks").mkdir()
    for i, m in review.masks.items():
        Image.fromarray(m.astype(np.uint8) * 255).save(d / "labels" / "masks" / f"{i}_alice.png")
    return d, review


def cli(d, *args):
    return run_cli(*args, "--generator", "artifix.example:make_generator", "--checkpoint", str(d / "planted.pt"),
                   "--store", str(d / "labels.sqlite"), cwd=d)


def test_import_score_and_classify(planted_project):
    d, review = planted_project
    code, out, err = cli(d, "flags", "import", str(d / "labels"), "--json")
    assert code == 0, err
    counts = json.loads(out)["counts"]
    assert counts["artifact"] == len(review.artifact) and counts["clean"] == 30 and counts["masked"] == len(review.masks)

    code, out, err = cli(d, "score", "--stats-n", "400", "--exact-top", "10", "--top", "5", "--out", str(d / "out"), "--json")
    assert code == 0, err
    res = json.loads(out)
    top3 = [r["unit"] for r in res["top"][:3]]
    assert len(set(top3) & set(TRUTH)) >= 3 * 0.9, res["top"][:3]
    assert (d / "out" / "unit_scores.csv").is_file() and len(res["cards"]) == 5
    assert all((d / "out" / "cards" / f"unit_main.8_{u}.png").is_file() for u in top3)
    # the dashboard's Units page draws the same card (same function, same statistics): pixel for pixel
    g = load_generator(GeneratorSpec(generator="artifix.example:make_generator", checkpoint=str(d / "planted.pt")))
    stats = collect_stats(g, "main.8", 0, 400)
    for u in top3[:2]:
        written = np.asarray(Image.open(d / "out" / "cards" / f"unit_main.8_{u}.png").convert("RGB"))
        assert np.array_equal(written, top_card(g, stats, u, 0)), u

    code, out, err = cli(d, "classify", "train", "--classifier", str(d / "clf.pt"), "--json")
    assert code == 0, err
    rep = json.loads(out)["report"]
    assert rep["auc"] > 0.8 and rep["n_pos"] == len(review.artifact)
    code, out, err = cli(d, "classify", "predict", "--classifier", str(d / "clf.pt"), "--n", "16", "--json")
    assert code == 0, err
    assert len(json.loads(out)["probability"]) == 16


def test_bad_flag_import_writes_nothing(planted_project, tmp_path):
    d, _ = planted_project
    before = json.loads(cli(d, "flags", "show", "--json")[1])["counts"]
    bad = tmp_path / "bad.csv"
    bad.write_text("sample,label\n5,artifact\n999999,clean\n")
    code, out, err = cli(d, "flags", "import", str(bad))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "999999" in err
    after = json.loads(cli(d, "flags", "show", "--json")[1])["counts"]
    assert after == before


def test_classify_without_enough_flags_is_a_user_error(tmp_path):
    code, out, err = run_cli("classify", "train", "--store", str(tmp_path / "empty.sqlite"), "--classifier", str(tmp_path / "c.pt"))
    assert code == 2 and "need at least" in err and not (tmp_path / "c.pt").exists()


def test_review_queue_cold_start_and_with_classifier(planted_project):
    d, review = planted_project
    assert cli(d, "flags", "import", str(d / "labels"))[0] == 0  # idempotent when already imported
    code, out, err = cli(d, "classify", "queue", "--classifier", str(d / "none.pt"), "--n", "48", "--review-k", "8", "--json")
    assert code == 0, err
    res = json.loads(out)
    labelled = set(review.artifact) | set(review.clean)
    assert len(res["queue"]) == 8 and not set(res["queue"]) & labelled
    assert res["realism"] is not None and all(v > 0 for v in res["realism"].values())


def test_bad_layer_or_reference_fails_before_writing(tmp_path):
    code, out, err = run_cli("score", "--layer", "main.88", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "o"))
    assert code == 2 and "Did you mean 'main.8'" in err and not (tmp_path / "s.sqlite").exists() and not (tmp_path / "o").exists()
    code, out, err = run_cli("metrics", "--real", str(tmp_path / "missing"), "--n", "8")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not exist" in err


def test_a_factory_without_checkpoint_whose_weights_change_is_named(tmp_path):
    """A factory that initialises its weights at random gives each command another generator (runs are by
    fingerprint): the flags a user imports would silently never reach 'classify train'. Both commands say why."""
    from tests.conftest import GENS

    store = str(tmp_path / "l.sqlite")
    (tmp_path / "flags.csv").write_text("sample,label\n" + "".join(f"{i},{'artifact' if i % 2 else 'clean'}\n" for i in range(8)))
    gen = ["--generator", f"{GENS}:tiny_dcgan", "--latent", "16,1,1", "--layer", "main.5", "--store", store]
    code, _, err = run_cli("flags", "import", str(tmp_path / "flags.csv"), *gen)
    assert code == 0 and "no --checkpoint" not in err, err  # the first run of this spec: nothing to compare with
    code, _, err = run_cli("classify", "train", *gen, "--classifier", str(tmp_path / "c.pt"))
    assert code == 2 and "has no --checkpoint, and its weights differ from run 1's" in err, err
    assert not (tmp_path / "c.pt").exists()
    code, _, err = run_cli("flags", "import", str(tmp_path / "flags.csv"), *gen)
    assert code == 0 and "warning:" in err and "Pass --checkpoint" in err, err


def test_score_says_which_regions_were_painted_and_which_the_classifier_localised(tmp_path, tiny_ckpt):
    from tests.conftest import GENS

    store = str(tmp_path / "l.sqlite")
    (tmp_path / "flags.csv").write_text("sample,label\n" + "".join(f"{i},{'artifact' if i % 3 == 0 else 'clean'}\n" for i in range(18)))
    gen = ["--generator", f"{GENS}:tiny_dcgan", "--checkpoint", str(tiny_ckpt), "--latent", "16,1,1", "--layer", "main.5",
           "--store", store]
    clf = ["--classifier", str(tmp_path / "c.pt")]
    assert run_cli("flags", "import", str(tmp_path / "flags.csv"), *gen)[0] == 0
    assert run_cli("classify", "train", *gen, *clf)[0] == 0
    code, _, err = run_cli("score", *gen, *clf, "--out", str(tmp_path / "out"))
    assert code == 0 and "from 6 flagged / 12 clean samples (0 painted, 6 localised by the classifier)" in err, err
