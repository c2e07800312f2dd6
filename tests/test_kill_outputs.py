"""SIGKILL every folder-writing command at 20 seeded random moments: its output folder is never half-written.

The parent imports torch and artifix once and warms every cache; each run is an os.fork() child that runs the
command in-process (no interpreter start-up), killed after a delay drawn uniformly within the command's measured
duration. After every kill the target is absent or a complete output (its `.artifix-complete.json` lists exactly
its files with matching SHA-256: `artifix.io.folder_is_complete`); the recovery the next run starts with brings
back the earlier output if the kill fell between the two renames of the swap, and leaves no temporary behind.
Sizes are tiny (8-64 samples) so the whole file stays within about a minute on two shared cores.
"""

from __future__ import annotations

import faulthandler
import io
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from artifix.cli.main import run
from artifix.io import COMPLETE_MARKER, folder_is_complete, output_folder, recover_output_folder

KILLS = 20
HANG_S = 300  # a child still running after this long is hung, not slow (warm runs take well under 10 s): the test
# fails with the child's stacks instead of waiting forever


def quiet_run(argv: list[str]) -> int:
    """artifix <argv> in-process with its output swallowed; the exit code."""
    with redirect_stderr(io.StringIO()), redirect_stdout(io.StringIO()):
        return run(argv)


def forked(fn, delay: float | None = None) -> tuple[str, float]:
    """Run fn() in a forked child; SIGKILL it after `delay` s unless it ended. ('killed' | 'exit <code>', seconds).

    A child still running after HANG_S s (with no delay) is hung: it is made to write every thread's stack (SIGUSR1,
    faulthandler) and killed, and the status carries the stacks."""
    t0 = time.monotonic()
    stacks = Path(tempfile.gettempdir()) / f"artifix-kill-child-{os.getpid()}.txt"
    stacks.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, no atexit handlers, no output
        code = 3
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        try:  # a signal handler, not dump_traceback_later: pytest's own watchdog holds that lock in the parent
            faulthandler.register(signal.SIGUSR1, file=open(stacks, "w"), all_threads=True)
            code = int(fn() or 0)
        finally:
            os._exit(code)
    limit = HANG_S if delay is None else delay
    status = None
    while status is None and time.monotonic() - t0 < limit:  # poll: a child ending early reports its own duration
        done, st = os.waitpid(pid, os.WNOHANG)
        status = st if done else None
        time.sleep(0 if status is not None else 0.002)
    hung = status is None and delay is None
    if hung:
        os.kill(pid, signal.SIGUSR1)
        time.sleep(2)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    took = time.monotonic() - t0
    if hung:
        return f"hung for {HANG_S} s; its threads:\n{stacks.read_text() if stacks.exists() else '(none written)'}", took
    if os.WIFSIGNALED(status):
        return "killed", took
    return f"exit {os.WEXITSTATUS(status)}", took


def leftovers(target: Path) -> list[str]:
    """Hidden temporaries and set-aside folders of `target` in its parent folder."""
    return sorted(n for n in os.listdir(target.parent) if n.startswith(f".{target.name}."))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with a label store holding the bundled review of the example (flags and approved units)."""
    from artifix.example.model import LAYER, seed_bundled_review
    from artifix.model.generator import load_generator
    from artifix.labels import LabelStore

    torch.set_num_threads(1)  # fork-safe: no intra-op worker threads in the parent
    d = tmp_path_factory.mktemp("kill")
    g = load_generator()
    with LabelStore(str(d / "s.sqlite")) as store:
        run_id = store.register_run(g.fingerprint, [LAYER], 0, 64, image_size=(64, 64))
        seed_bundled_review(store, run_id, g.fingerprint, LAYER)
    return d


def _library_repair(d: Path, out: Path, seed: int) -> int:
    """The repair stage as `artifix repair` calls it, with cheap metrics (KID only, n = 8, no classifier)."""
    from artifix.example.model import LAYER
    from artifix.model.generator import load_generator
    from artifix.labels import LabelStore
    from artifix.repair import plan_from_store, repair
    from artifix.session import flagged_and_clean

    g = load_generator()
    with LabelStore(str(d / "s.sqlite")) as store:
        run_id = store.find_run(g.fingerprint, [LAYER], 0).id
        plan = plan_from_store(store, run_id, LAYER)
        flagged, clean = flagged_and_clean(store, run_id)
    repair(g, plan, out, seed=seed, n=8, flagged=flagged, clean=clean, channels=64, metrics="kid", high_pool=0,
           cache=str(d / "cache"), say=lambda m: None)
    return 0


def _demo(out: Path, seed: int) -> int:
    from artifix.example.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=out, seed=seed, scan=60, n_flag=6, n_clean=6, stats_n=64, metrics_n=8, metrics="swd",
                        high_pool=0, collateral_n=0, planted_units=(5, 50, 55)), say=lambda m: None)
    return 0


def commands(d: Path) -> dict[str, callable]:
    """name -> fn(out, seed) running that command into `out` (the CLI in-process, or the library stage it calls)."""
    cache = ["--cache", str(d / "cache")]
    cli = {
        "score": lambda out, s: ["score", "--store", str(d / "s.sqlite"), "--stats-n", "64", "--exact-top", "2", "--top", "2",
                                 "--seed", "0", "--out", str(out), *cache],
        "gate": lambda out, s: ["gate", "--measure-only", "--criteria", '[{"metric": "swd"}]', "--n", "8", "--swd-n", "8",
                                "--swd-bootstrap", "2", "--bootstrap", "2", "--seed", str(s), "--out", str(out), *cache],
        "dissect": lambda out, s: ["dissect", "--layers", "main.8", "--dissect-n", "8", "--ace-n", "0", "--seed", str(s % 2),
                                   "--out", str(out), *cache],
        "paint": lambda out, s: ["paint", "--units", "1,2", "--index", str(s % 3), "--out", str(out), *cache],
        "stats": lambda out, s: ["stats", "--stats-n", "16", "--seed", str(s), "--out", str(out)],
    }
    fns = {name: (lambda argv: (lambda out, s: quiet_run(argv(out, s))))(argv) for name, argv in cli.items()}
    fns["repair"] = lambda out, s: _library_repair(d, out, s)
    fns["demo"] = lambda out, s: _demo(out, s)
    return fns


@pytest.mark.parametrize("name", ["repair", "gate", "score", "dissect", "paint", "stats", "demo"])
def test_sigkill_never_leaves_a_half_written_folder(project, name):
    fn = commands(project)[name]
    target = project / f"out_{name}"
    assert fn(target, 0) == 0  # in the parent: warms every in-memory and on-disk cache the children inherit
    assert folder_is_complete(target)
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in target.rglob("*") if p.is_file()}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes  # the safetensors copy too (it used to be 0600)
    took = float("inf")
    for seed in (1, 2):  # the command's measured duration, warm (the second run finds the first one's caches)
        status, seconds = forked(lambda: fn(target, seed))
        assert status == "exit 0" and folder_is_complete(target), status
        took = min(took, seconds)
    pristine = project / f"pristine_{name}"  # a complete output to start from when a kill left none
    shutil.rmtree(pristine, ignore_errors=True)
    shutil.copytree(target, pristine)
    rng = random.Random(f"kill-{name}")
    outcomes = {"killed": 0, "finished": 0, "absent": 0, "restored": 0}
    for i in range(KILLS):
        if i % 5 == 0:  # sometimes there is no earlier output
            shutil.rmtree(target, ignore_errors=True)
        elif not target.exists():
            shutil.copytree(pristine, target)
        had_output = target.exists()
        before = (target / COMPLETE_MARKER).read_bytes() if had_output else None
        status, seconds = forked(lambda: fn(target, 2 + i), delay=rng.uniform(0, 0.9 * took))
        assert status in ("killed", "exit 0"), (i, status)
        if status == "exit 0":  # a run that beat the warm time: later delays are drawn within the faster runs
            took = min(took, seconds)
        outcomes["killed" if status == "killed" else "finished"] += 1
        # right after the kill: absent, or a complete output (the earlier one or the new one)
        assert not target.exists() or folder_is_complete(target), (i, sorted(os.listdir(target)))
        if status == "exit 0":
            assert folder_is_complete(target) and not leftovers(target)
        outcomes["absent"] += not target.exists()
        recover_output_folder(target)  # what the next run does first
        assert not leftovers(target), (i, leftovers(target))
        if had_output:  # an earlier complete output is never lost: it is there, or the new one replaced it
            assert folder_is_complete(target), i
            outcomes["restored"] += before == (target / COMPLETE_MARKER).read_bytes()
        else:
            assert not target.exists() or folder_is_complete(target)
    status, _ = forked(lambda: fn(target, 99))  # the next complete run leaves only its output
    assert status == "exit 0" and folder_is_complete(target) and not leftovers(target), status
    print(f"\n{name}: run {took:.2f}s warm; {KILLS} kills: {outcomes}")
    assert outcomes["killed"] >= KILLS // 2  # the delays really fall inside the runs


def test_a_hung_child_reports_its_stacks_instead_of_waiting_forever(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "HANG_S", 1)
    status, _ = forked(lambda: time.sleep(30))
    assert status.startswith("hung for 1 s") and "in <lambda>" in status, status


def test_a_kill_between_the_two_renames_puts_the_earlier_output_back(tmp_path):
    """The swap renames the old output aside, then the new one into place: a kill between the two is undone."""
    target = tmp_path / "out"
    with output_folder(target, command="test") as f:
        (f.path / "a.txt").write_text("old")
    old = (target / COMPLETE_MARKER).read_bytes()
    pid = os.fork()
    if pid == 0:  # a writer that sets the old output aside, has its new one sealed, and dies before the second rename
        try:
            with output_folder(target, command="test") as f:
                (f.path / "a.txt").write_text("new")
                from artifix import io as aio

                aio._swap_in = lambda folder: (os.rename(folder.target, folder.target.parent / (
                    f"{aio._tmp_prefix(folder.target)}dead.trash")), os._exit(0))
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    assert not target.exists() and len(leftovers(target)) == 2  # the set-aside old output and the sealed new one
    recover_output_folder(target)
    assert folder_is_complete(target) and (target / COMPLETE_MARKER).read_bytes() == old and not leftovers(target)
    assert (target / "a.txt").read_text() == "old"


def test_an_earlier_output_survives_a_failed_run_and_foreign_folders_are_refused(tmp_path):
    from artifix.errors import UserError
    from artifix.io import check_output_folder

    target = tmp_path / "out"
    with output_folder(target, command="test") as f:
        (f.path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with output_folder(target, command="test") as f:
            (f.path / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "old" and folder_is_complete(target) and not leftovers(target)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="artifix did not write it"):
        check_output_folder(mine)
    with pytest.raises(UserError, match="is a file"):
        check_output_folder(mine / "notes.txt")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_shared_folder_keeps_the_other_commands_files(tmp_path):
    """score and paint share artifix-out: each replaces only the entries it writes."""
    target = tmp_path / "artifix-out"
    with output_folder(target, owns=["paint_a.png"], command="paint") as f:
        (f.path / "paint_a.png").write_bytes(b"a")
    with output_folder(target, owns=["unit_scores.csv", "cards"], command="score") as f:
        (f.path / "cards").mkdir()
        (f.path / "cards" / "u1.png").write_bytes(b"1")
        (f.path / "unit_scores.csv").write_text("unit\n1\n")
    with output_folder(target, owns=["unit_scores.csv", "cards"], command="score") as f:
        (f.path / "unit_scores.csv").write_text("unit\n2\n")
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.name != COMPLETE_MARKER) == [
        "paint_a.png", "unit_scores.csv"]
    assert (target / "paint_a.png").read_bytes() == b"a" and folder_is_complete(target)


def test_recorded_paths_point_at_the_final_folder_and_files_get_the_usual_mode(tmp_path):
    import json

    target = tmp_path / "out"
    with output_folder(target, command="test") as f:
        (f.path / "m.json").write_text(json.dumps({"file": str(f.path / "x.bin")}))
        from artifix.io import write_bytes_atomic

        write_bytes_atomic(f.path / "x.bin", b"x")
        result = f.final({"file": f.path / "x.bin"})
    assert json.loads((target / "m.json").read_text())["file"] == str(target / "x.bin") == str(result["file"])
    umask = os.umask(0)
    os.umask(umask)
    assert (target / "x.bin").stat().st_mode & 0o777 == 0o666 & ~umask
