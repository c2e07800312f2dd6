"""The built wheel works on its own: installed into a fresh venv outside the checkout, it samples, repairs the
bundled example and serves the dashboard.

How it stays cheap: the fresh venv is made with `python -m venv --without-pip`, and a `.pth` file in its
site-packages names the test interpreter's site-packages, so torch, Streamlit, pip and the rest are reused, not
installed again. A directory named in a `.pth` file is added to `sys.path`, but the `.pth` files inside it are not
run, so the checkout's editable install (an import hook started from such a file) stays off. The wheel is then
installed with `pip install --no-deps --ignore-installed`. Every command runs with its working directory in a
temporary folder and without PYTHONPATH, and the test checks that `artifix` imports from the fresh venv.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("artifix", "dashboard", "data", "pyproject.toml", "README.md", "LICENSE", "requirements.txt")


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "ARTIFIX_CACHE")}
    env["ARTIFIX_CACHE"] = str(cache)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, work folder, env): the wheel built from a copy of the checkout, installed in a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, src / name)
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", str(src), "-w", str(dist)], check=True, cwd=tmp)
    wheel = next(dist.glob("artifix-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "_artifix_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "work"
    work.mkdir()
    env = _env(tmp / "cache")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--disable-pip-version-check",
          str(wheel)], work, env)
    return py, work, env, wheel, Path(site)


def test_wheel_holds_the_example_and_the_dashboard(installed):
    _, _, _, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("artifix/example_data/dcgan_scenes.pt", "artifix/example_data/review/flags.csv",
              "artifix/example_data/review/classifier.pt", "artifix/example_data/segmenter.pt",
              "artifix/dashboard/app.py", "artifix/dashboard/page_review.py"):
        assert f in names, f
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: torch>=2.1" in meta and "Requires-Dist: torch==" not in meta
    assert "Requires-Python: >=3.11" in meta and "Provides-Extra: dashboard" in meta


def test_installed_wheel_runs_outside_the_checkout(installed):
    py, work, env, _, site = installed
    probe = _run([str(py), "-c", "import artifix, artifix.example.model as e; print(artifix.__file__); print(e.DATA_DIR)"],
                 work, env).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in probe), probe  # not the checkout
    artifix = str(py.parent / "artifix")
    _run([artifix, "sample", "--n", "8", "--grid", "s.png"], work, env)
    assert (work / "s.png").stat().st_size > 1000
    out = _run([artifix, "repair", "--out", "rep", "--repair-n", "16", "--high-pool", "0", "--collateral-n", "8",
                "--json"], work, env).stdout
    m = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert m["units"] == [13, 19, 63] and m["export"]["exact"]
    assert Path(m["source"]["path"]).is_relative_to(site)
    assert (work / "rep" / "report.md").is_file() and (work / "rep" / "dcgan_scenes.pt").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_installed_dashboard_serves_its_page(installed):
    py, work, env, _, site = installed
    # the installed app renders (its pages import from the installed package) ...
    check = ("from streamlit.testing.v1 import AppTest; import artifix.cli.serve as s; "
             "at = AppTest.from_file(str(s.APP), default_timeout=240).run(); "
             "print(s.APP); print('exceptions', len(at.exception)); print('radio', list(at.radio[0].options))")
    out = _run([str(py), "-c", check], work, env).stdout
    assert Path(out.splitlines()[0]).is_relative_to(site) and "exceptions 0" in out and "Review" in out, out
    # ... and `artifix dashboard` serves it
    port = _free_port()
    proc = subprocess.Popen([str(py.parent / "artifix"), "dashboard", "--port", str(port)], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page = health = None
        for _ in range(240):
            if proc.poll() is not None:
                break
            try:
                health = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read().decode()
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        assert health == "ok" and "<title>" in page and "streamlit" in page.lower(), (health, page and page[:300])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
