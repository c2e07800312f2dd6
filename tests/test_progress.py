"""Progress: tqdm bars on stderr, nested; silent under --quiet and --json; listeners see the same stages."""

import pytest

from artifix import progress
from tests.conftest import run_cli


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
