import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ARTIFIX_CACHE", str(ROOT / ".artifix-cache"))
os.environ.setdefault("ARTIFIX_DEVICE", "cpu")  # the suite runs on the CPU; `cuda`-marked tests pick the GPU themselves
# two intra-op threads; one per worker when pytest-xdist runs the files in parallel (the README's command does)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GENS = FIXTURES / "gens.py"


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A DCGAN-tutorial-style checkpoint {'netG_state_dict', 'netD_state_dict', 'epoch'} of a tiny generator."""
    from tests.fixtures.gens import tiny_dcgan

    torch.manual_seed(0)
    g = tiny_dcgan()
    for p in g.parameters():
        p.data.normal_(0, 0.2)
    path = tmp_path / "ckpt.pt"
    torch.save({"netG_state_dict": g.state_dict(), "netD_state_dict": {"w": torch.zeros(1)}, "epoch": 3}, path)
    return path


def run_cli(*args: str, cwd=None):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from artifix.cli.main import run

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = run(list(args))
            except SystemExit as e:  # argparse usage errors
                code = e.code
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def one_torch_thread():
    """EfficientNet on 1 thread: on shared CPUs, 2 threads were 3-4x slower (see README)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def store(tmp_path):
    """An empty label store in a temporary SQLite file."""
    from artifix.labels import LabelStore

    s = LabelStore(tmp_path / "labels.db")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest leaves sys.modules['__main__'] pointing at the app script; processes started with
    'spawn' later in the session would run that script (and its argument parser) instead of the worker."""
    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped when torch.cuda.is_available() is False)")




# The longest test files first, so that under `-n auto --dist loadfile` (the README's command) no long file starts
# last and runs alone at the end: with them last the final 5 minutes ran on one worker. Order does not change results.
LONG_FILES_FIRST = ("test_dashboard_soak.py", "test_kill_outputs.py", "test_wheel.py", "test_gate.py", "test_distributed.py",
                    "test_repair_methods.py", "test_dashboard_e2e.py", "test_demo.py", "test_bench.py", "test_repair.py")


def pytest_collection_modifyitems(config, items):
    """`cuda` tests skip without a GPU; stable reorder: the files of LONG_FILES_FIRST in that order, then the rest."""
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
