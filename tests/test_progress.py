"""Progress: tqdm bars on stderr, nested; silent under --quiet and --json; listeners see the same stages."""

import subprocess
import sys
from pathlib import Path

import pytest

from artifix import progress
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def eager(monkeypatch):
    """Bars drawn at once (no one-second delay) and the CLI's flags restored afterwards."""
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "QUIET", False)
    monkeypatch.setattr(progress, "BARS", True)


def test_bars_nest_and_reach_listeners(eager, capsys):
    events = []
    with progress.listening(events.append):
        with progress.stage("outer", 2) as outer:
            for _ in progress.track(range(3), 3, "inner"):
                pass
            outer.update(2)
    err = capsys.readouterr().err
    assert "outer" in err and "inner" in err
    inner = [e for e in events if e.stage == "inner"]
    assert inner[0].depth == 1 and inner[-1].finished and inner[-1].done == 3
    assert [e for e in events if e.stage == "outer"][-1].done == 2


def test_quiet_and_no_bars_are_silent_but_still_tell_listeners(eager, capsys, monkeypatch):
    for flag, value in (("QUIET", True), ("BARS", False)):
        monkeypatch.setattr(progress, flag, value)
        events = []
        with progress.listening(events.append):
            for _ in progress.track(range(4), 4, "work"):
                pass
        assert capsys.readouterr().err == ""
        assert events[-1].finished and events[-1].done == 4
        monkeypatch.setattr(progress, flag, not value)


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_cli_draws_no_bars_under_quiet_and_json(eager, tmp_path, flag):
    code, out, err = run_cli("sample", "--n", "4", "--grid", str(tmp_path / "s.png"), flag)
    assert code == 0
    assert "sampling" not in err and "it/s" not in err and "%|" not in err
    code, out, err = run_cli("sample", "--n", "4", "--grid", str(tmp_path / "t.png"))
    assert code == 0 and "sampling" in err  # the same command without the flag does draw its bar


def test_bars_start_no_monitor_thread_so_a_fork_cannot_inherit_a_held_lock():
    """tqdm's monitor thread takes its write lock every few seconds; a process forked meanwhile hung forever in the
    child's first bar (seen in the kill test). A bar of ours starts no such thread."""
    code = ("import threading, sys; from artifix import progress; progress.DELAY = 0; "
            "p = progress.Progress(3, 'x'); p.update(3); p.close(); "
            "from tqdm._monitor import TMonitor; "
            "sys.exit(any(isinstance(t, TMonitor) for t in threading.enumerate()))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).returncode == 0
