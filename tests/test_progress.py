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


def test_a_child_killed_while_drawing_a_bar_does_not_block_the_parent():
    """tqdm's default lock includes a multiprocessing semaphore that forked processes share: a child SIGKILLed while it
    held it (drawing a bar) left every later bar of the parent waiting forever. Ours is a lock of one process."""
    code = """
import os, signal, sys, threading, time
from artifix import progress
progress.DELAY = 0
progress.Progress(1, 'warm').close()  # the parent has drawn a bar before the fork, as the kill test's parent has
pid = os.fork()
if pid == 0:
    progress.tqdm.get_lock().acquire()  # a child killed in the middle of drawing a bar
    time.sleep(60)
    os._exit(0)
time.sleep(1.0)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
done = threading.Event()
def bar():
    p = progress.Progress(2, 'after'); p.update(2); p.close(); done.set()
threading.Thread(target=bar, daemon=True).start()
sys.exit(0 if done.wait(60) else 1)  # a hang guard: a blocked bar never sets it
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
