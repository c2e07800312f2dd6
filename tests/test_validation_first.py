"""Every option is checked before any heavy work: one sentence, exit 2, nothing written (issue 20)."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


def _one_line_error(code: int, err: str, text: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in err, err


def test_malformed_kwargs_with_the_bundled_example_is_a_user_error(tmp_path):
    code, out, err = run_cli("sample", "--kwargs", "{bad json", "--n", "2", "--grid", str(tmp_path / "g.png"))
    _one_line_error(code, err, "--kwargs must be a JSON object")
    assert not (tmp_path / "g.png").exists()


def test_kwargs_for_another_generator_are_refused_not_ignored_with_the_example(tmp_path):
    code, out, err = run_cli("sample", "--kwargs", '{"ngf": 32}', "--n", "2", "--grid", str(tmp_path / "g.png"))
    _one_line_error(code, err, "--kwargs describes your own generator")
    code, out, err = run_cli("sample", "--range", "[0,1]", "--classes", "3", "--n", "2", "--grid", str(tmp_path / "g.png"))
    _one_line_error(code, err, "--classes, --range describe your own generator")
    assert not (tmp_path / "g.png").exists()


def test_auto_k_larger_than_the_layer_is_refused_before_any_ablation(tmp_path, monkeypatch):
    import artifix.session
    import artifix.units.scoring

    def no_work(*a, **k):
        raise AssertionError("ranked or collected statistics before refusing --k")

    monkeypatch.setattr(artifix.session, "score_run", no_work)
    monkeypatch.setattr(artifix.units.scoring, "collect_stats", no_work)
    monkeypatch.setattr(artifix.units.scoring, "cached_stats", no_work)
    code, out, err = run_cli("repair", "--auto", "--k", "1000", "--store", str(tmp_path / "s.sqlite"),
                             "--out", str(tmp_path / "rep"), "--cache", str(tmp_path / "cache"))
    _one_line_error(code, err, "--k 1000 is too many for layer main.8: it has 64 units")
    assert "at most 32" in err
    assert not (tmp_path / "rep").exists() and not (tmp_path / "s.sqlite").exists()


@pytest.mark.parametrize("argv, text", [
    (["repair", "--repair-n", "0"], "--repair-n must be a positive number of samples, got 0"),
    (["metrics", "--confidence", "1.5"], "--confidence must be between 0 and 1"),
    (["dissect", "--iou-min", "2"], "--iou-min must be in [0, 1)"),
    (["paint", "--units", "1", "--mode", "erase"], "--mode must be 'add' or 'remove'"),
    (["score", "--top", "0"], "--top must be a positive number"),
    (["score", "--rare-rate", "-0.1"], "--rare-rate must be in [0, 1]"),
    (["stats", "--seed", "-1"], "--seed must be 0 or more"),
    (["gate", "--bootstrap", "-5", "--measure-only"], "--bootstrap must be 0 or more"),
    (["dashboard", "--port", "70000"], "--port must be a TCP port"),
    (["classify", "predict", "--review-k", "0"], "--review-k must be a positive number"),
])
def test_out_of_range_options_are_refused_before_the_generator_is_loaded(argv, text, tmp_path, monkeypatch):
    import artifix.model.generator

    def no_load(*a, **k):
        raise AssertionError("loaded the generator before checking the options")

    monkeypatch.setattr(artifix.model.generator, "load_generator", no_load)
    code, out, err = run_cli(*argv, "--out", str(tmp_path / "o"), cwd=tmp_path) if argv[0] in (
        "repair", "dissect", "paint", "score", "stats", "gate") else run_cli(*argv, cwd=tmp_path)
    _one_line_error(code, err, text)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cmd", ["score", "dissect", "paint", "gate", "stats"])
def test_an_output_folder_artifix_did_not_write_is_refused_up_front(cmd, tmp_path, monkeypatch):
    import artifix.model.generator

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    if cmd != "gate":
        monkeypatch.setattr(artifix.model.generator, "load_generator", lambda *a, **k: (_ for _ in ()).throw(
            AssertionError("loaded the generator before checking --out")))
    extra = {"paint": ["--units", "1"], "gate": ["--measure-only", "--criteria", '[{"metric": "swd"}]']}.get(cmd, [])
    code, out, err = run_cli(cmd, *extra, "--out", str(mine), cwd=tmp_path)
    _one_line_error(code, err, "so artifix did not write it")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
