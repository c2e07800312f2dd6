"""The README's first screen and every command in it, the docs site, packaging metadata, strict JSON, logging,
help, completion, report pictures and the Python API's doctests (issue 19)."""

from __future__ import annotations

import doctest
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SCREEN = 60


def _strict(text: str):
    def bad(c: str):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


def first_screen() -> list[str]:
    return README.read_text(encoding="utf-8").splitlines()[:SCREEN]


def screen_commands() -> list[str]:
    """Every command line inside the fenced code blocks of the README's first screen (comments stripped)."""
    cmds, inside = [], False
    for line in first_screen():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside and line.strip() and not line.lstrip().startswith("#"):
            cmds.append(re.sub(r"\s+#\s.*$", "", line).strip())
    return cmds


# -------------------------------------------------------------------------------------------------- README

def test_readme_first_screen_has_pitch_picture_install_and_three_commands():
    screen = first_screen()
    text = "\n".join(screen)
    assert screen[3].startswith("bash scripts/setup.sh && .venv/bin/artifix demo")
    assert screen[4].startswith("bash scripts/setup.sh dev && .venv/bin/python -m pytest -q")
    assert "bash scripts/setup.sh dev && .venv/bin/python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    assert "**artifix finds the internal units" in text and "![" in text and "samples.png" in text
    cmds = screen_commands()
    assert any(c.startswith("pip install") for c in cmds)
    assert "artifix demo" in cmds
    assert any(c.startswith("artifix repair --generator") for c in cmds)
    assert any(c.startswith("artifix gate") for c in cmds)
    assert "## How it works" in README.read_text()


# What runs each first-screen command (the dev setup line is what .ci/run itself runs; the wheel test installs
# artifix with pip; test_demo runs the demo's code at a small size; the rest run below, as written, with size
# flags appended so they fit the test budget).
ELSEWHERE = {
    "bash scripts/setup.sh && .venv/bin/artifix demo": "tests/test_demo.py (the demo at a small size)",
    "bash scripts/setup.sh dev && .venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile": ".ci/run",
    'pip install "artifix[dashboard]"': "tests/test_wheel.py",
    "artifix demo": "tests/test_demo.py",
}
SMALL = {
    "layers": [],
    "score": ["--stats-n", "128"],
    "repair": ["--stats-n", "128", "--repair-n", "16", "--high-pool", "0", "--collateral-n", "0"],
    "gate": ["--n", "16", "--bootstrap", "10", "--swd-bootstrap", "4"],
}

MODELS = '''
import torch
from torch import nn

from artifix.example.model import Generator as DCGAN


class Generator(nn.Module):
    """A small DCGAN taking flat 512-d latents."""

    def __init__(self, nz: int = 512, ngf: int = 4) -> None:
        super().__init__()
        self.main = DCGAN(nz=nz, ngf=ngf).main

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(len(z), -1, 1, 1))
'''


@pytest.fixture(scope="module")
def user_project(tmp_path_factory):
    """my_gan/models.py:Generator, G.pt, refs/ (reference images) and candidate.pt, as the README names them."""
    d = tmp_path_factory.mktemp("readme")
    (d / "my_gan").mkdir()
    (d / "my_gan" / "models.py").write_text(MODELS)
    sys.path.insert(0, str(d))
    try:
        from my_gan.models import Generator
    finally:
        sys.path.remove(str(d))
        sys.modules.pop("my_gan.models", None), sys.modules.pop("my_gan", None)
    torch.manual_seed(0)
    g = Generator()
    for p in g.parameters():
        p.data.normal_(0, 0.2)
    torch.save(g.state_dict(), d / "G.pt")
    rng = np.random.default_rng(0)
    (d / "refs").mkdir()
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "refs" / f"{i}.png")
    shutil.copy(ROOT / "data" / "example" / "dcgan_scenes.pt", d / "candidate.pt")
    return d


def test_every_first_screen_command_is_run(user_project):
    for cmd in screen_commands():
        if cmd in ELSEWHERE:
            assert (ROOT / ELSEWHERE[cmd].split()[0]).exists(), cmd
            continue
        argv = shlex.split(cmd)
        assert argv[0] == "artifix", f"a first-screen command with no test: {cmd}"
        name = argv[1]
        if name == "gate":  # the README's gate runs from the checkout (its config names data/example/...)
            argv = [a if a != "candidate.pt" else str(user_project / "candidate.pt") for a in argv]
            argv = [a if a != "gate/" else str(user_project / "gate") for a in argv]
            code, out, err = run_cli(*argv[1:], *SMALL[name], "--json", cwd=ROOT)
        else:
            code, out, err = run_cli(*argv[1:], *SMALL[name], "--json", cwd=user_project)
        assert code in ((0, 1) if name == "gate" else (0,)), (cmd, code, err[-2000:])
        result = _strict(out)
        if name == "layers":
            assert any(r["layer"] == "main.8" for r in result["layers"])
        if name == "repair":
            assert len(result["units"]) == 3 and result["export"]["exact"]
            assert (user_project / "cleaned" / "forest_random.png").is_file()
            assert "forest_random.png" in (user_project / "cleaned" / "report.md").read_text()
            assert "forest_random.png" in (user_project / "cleaned" / "MODEL_CARD.md").read_text()
        if name == "gate":
            assert result["status"] in ("pass", "fail")
            assert (user_project / "gate" / "forest.png").is_file()
            assert "forest.png" in (user_project / "gate" / "summary.md").read_text()


# ------------------------------------------------------------------------------------------------- packaging

def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=~! ;]", r.strip(), maxsplit=1)[0].lower() for r in reqs if r.strip()}


def test_package_metadata_accepts_the_users_torch_and_matches_requirements():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"]
    assert "torch>=2.1" in deps and not any(d.startswith("torch==") for d in deps)
    assert meta["requires-python"] == ">=3.11"
    assert {"dashboard", "postgres", "dev"} <= set(meta["optional-dependencies"])
    pinned = [ln.split("#")[0] for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert "torch==2.13.0" in [p.strip() for p in pinned]
    extras = {n for k in ("dashboard", "postgres") for n in _names(meta["optional-dependencies"][k])}
    assert _names(pinned) - {"psycopg"} == _names(deps) | (extras - {"psycopg"})
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    gha = (ROOT / "docs" / "ci" / "github-actions-gate.yml").read_text()
    assert "pip install artifix" in gha and "scripts/setup.sh" not in gha


# -------------------------------------------------------------------------------------------- strict JSON

def test_strict_json_turns_nan_and_inf_into_null_with_a_reason(tmp_path):
    from artifix import jsonout
    from artifix.io import write_json_atomic

    obj = {"fd": float("nan"), "ci": [float("-inf"), 2.0], "n": np.int64(3), "se": np.float32(np.inf),
           "nested": [{"kid": float("inf")}], "ok": 1.5}
    d = _strict(jsonout.dumps(obj))
    assert d["fd"] is None and d["fd_reason"].startswith("NaN")
    assert d["ci"] == [None, 2.0] and "item 0" in d["ci_reason"] and d["n"] == 3
    assert d["se"] is None and "Infinity" in d["se_reason"] and d["nested"][0]["kid"] is None and d["ok"] == 1.5
    write_json_atomic(tmp_path / "m.json", obj)
    assert _strict((tmp_path / "m.json").read_text())["fd"] is None
    code, out, _ = run_cli("layers", "--json")
    assert code == 0 and _strict(out)["layers"]


# ------------------------------------------------------------------------------ logging, help, completion

def test_library_messages_go_through_logging_and_the_cli_prints_them(caplog, tmp_path):
    from artifix import log, repair

    assert repair.repair_into.__kwdefaults__["say"] is log.say  # repair() is its transaction wrapper
    with caplog.at_level(logging.INFO, logger="artifix"):
        log.say("hello from the library")
    assert [r.getMessage() for r in caplog.records if r.name == "artifix"] == ["hello from the library"]
    code, _, err = run_cli("sample", "--n", "2", "--grid", str(tmp_path / "s.png"))
    assert code == 0 and "wrote a grid of 2 samples" in err
    code, _, err = run_cli("sample", "--n", "2", "--grid", str(tmp_path / "s.png"), "--quiet")
    assert code == 0 and err == ""


def test_help_has_examples_and_closed_sets_are_choices(capsys):
    from artifix.cli import main as cli, help as cli_help

    parser = cli.build_parser()
    for name in cli.COMMANDS:
        assert name in cli_help.EXAMPLES, f"artifix {name} --help has no examples"
    with pytest.raises(SystemExit):
        parser.parse_args(["repair", "--help"])
    assert "examples:\n  artifix repair" in capsys.readouterr().out
    code, _, err = run_cli("sample", "--range", "0..1")
    assert code == 2 and err.count("\n") == 1 and "--range must be '[-1,1]' or '[0,1]', got '0..1'" in err


def test_shell_completion_scripts():
    for shell in ("bash", "zsh"):
        code, out, _ = run_cli("completion", shell)
        assert code == 0 and "repair" in out and "--optimise-alpha" in out
    code, _, err = run_cli("completion", "fish")
    assert code == 2 and "must be 'bash', 'zsh' or 'tcsh'" in err


# ------------------------------------------------------------------------------------------ report pictures

def test_forest_plot_draws_repair_beside_control_and_gate_thresholds():
    from artifix.report import plots

    sub = {"repair": {"fd_x": {"a": 10.0, "b": 8.0, "diff": -2.0, "ci": [-3.0, -1.0]}},
           "control": {"fd_x": {"a": 10.0, "b": 10.1, "diff": 0.1, "ci": [-0.5, 0.7]}},
           "artifact_rate": {"before": {"value": 0.5}, "after": {"value": 0.3}, "control": {"value": 0.5}, "repair_diff": {"diff": -0.2, "ci": [-0.3, -0.1]},
                             "control_diff": {"diff": float("nan"), "ci": None}}}
    rows = plots.repair_rows(sub)
    assert rows[0].first.value == pytest.approx(-20.0) and rows[0].second.hi == pytest.approx(7.0)
    assert rows[1].label == "artifact rate" and not rows[1].second.finite()
    px = np.asarray(plots.forest_plot(rows, "t", "x"))
    assert (px == plots.BLUE).all(-1).sum() > 50 and (px == plots.GREY).all(-1).sum() > 50
    g = plots.gate_rows([{"name": "fd", "status": "fail", "against": "baseline", "baseline": 200.0, "change": 4.0,
                          "ci": [3.0, 5.0], "allowed_worsening": 4.0, "direction": "lower"},
                         {"name": "kid", "against": "absolute", "baseline": None}])
    assert len(g) == 1 and g[0].first.value == pytest.approx(2.0) and g[0].marker == pytest.approx(2.0)
    px = np.asarray(plots.forest_plot(g, "t", "x", ("change", None)))
    assert (px == plots.RED).all(-1).sum() > 10


# ------------------------------------------------------------------------------------- docs and the API

def test_cli_reference_is_generated_from_the_defaults_table():
    from artifix import defaults
    from artifix.cli.reference import markdown

    md = markdown()
    used = {o for o in defaults.OPTIONS if f"`[{o.section}] {o.name}`" in md}
    assert len(used) == len(defaults.OPTIONS), sorted({o.cli for o in defaults.OPTIONS} - {o.cli for o in used})
    assert "## artifix repair" in md and "one of `[-1,1]`, `[0,1]`" in md


def test_mkdocs_build_strict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = tmp_path / "site"
    assert "repair" in (site / "cli" / "index.html").read_text()
    assert "from_module" in (site / "api" / "index.html").read_text()
    assert (site / "example" / "samples.png").is_file()


def test_import_artifix_is_light_and_the_api_doctests_pass():
    code = "import sys, artifix; assert 'torch' not in sys.modules; print(artifix.__version__)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    import artifix
    from artifix import api, jsonout

    for name in api.__all__:
        obj = getattr(api, name)
        assert getattr(artifix, name) is obj
        assert obj.__doc__ and (">>>" in obj.__doc__ or isinstance(obj, type)), f"{name} has no runnable example"
        if isinstance(obj, type):
            methods = [m for k, m in vars(obj).items() if callable(m) and not k.startswith("_")]
            assert all(m.__doc__ for m in methods), name
    for mod in (api, jsonout):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert res.failed == 0 and res.attempted > 0, (mod.__name__, res)
