"""`artifix dashboard` starts its server before the heavy imports, with the settings the full CLI would resolve."""

from __future__ import annotations

import subprocess
import sys

import pytest

from artifix.cli import entry
from artifix.cli.main import COMMANDS, build_parser
from artifix.cli.parsing import resolve_settings


@pytest.mark.parametrize("argv", [[], ["--pool", "64", "--seed", "3"], ["--port", "8600", "--host", "0.0.0.0", "--reviewer", "ann"]])
def test_the_fast_path_resolves_the_same_settings_as_the_full_cli(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "artifix.toml").write_text("[labels]\nstore = 'from-config.sqlite'\n[dashboard]\nport = 8700\n")
    full = resolve_settings(COMMANDS["dashboard"].options, build_parser().parse_args(["dashboard", *argv]))[0]
    assert entry.dashboard_settings(argv) == full
    assert full["store"] == "from-config.sqlite"


def test_the_fast_path_checks_options_before_serving_and_does_not_import_torch():
    code = ("import sys; from artifix.cli import entry; entry.dashboard_settings(['--pool', '8']); print('torch' in sys.modules)\n"
            "entry.serve.serve_here = lambda o: print('served')\n"
            "print(entry.fast_dashboard(['--port', '0']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "2"], out
    assert "--port must be a TCP port" in out.stderr and "served" not in out.stdout


@pytest.mark.parametrize("argv", [["--help"], ["--json"], ["--device", "cpu"]])
def test_help_json_and_an_explicit_device_take_the_full_cli(argv):
    assert entry.fast_dashboard(argv) is None
