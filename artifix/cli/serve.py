"""Start the Streamlit dashboard (dashboard/app.py) with safe server settings.

The server binds to 127.0.0.1 unless told otherwise, keeps Streamlit's XSRF protection on, and never phones
home. The resolved artifix settings reach the app in one environment variable (not on the command line, where
other users of the machine could read a database URL with a password).

Light on purpose (no torch): `artifix dashboard` starts the server from here before the heavy imports, which a
background thread does while the browser loads the page (`start_warm_imports`; the app waits for it).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import resources
from ..errors import UserError

SETTINGS_ENV = "ARTIFIX_DASHBOARD_SETTINGS"
APP = resources.dashboard_dir() / "app.py"

DASHBOARD_HELP = "start the review dashboard (Streamlit) on the bundled example or your run; localhost only by default"
DASHBOARD_OPTIONS: dict[str, list[str] | None] = {
    "generator": None, "sample": ["seed", "start", "layer"], "labels": None, "score": None,
    "classify": ["classifier", "review_k"], "repair": ["repair_n", "sweep", "sweep_n", "high_pool"],
    "metrics": ["real", "inception_weights"], "dissect": ["segmenter", "segmenter_classes", "dissect_n", "ace_units"],
    "run": ["out", "cache", "threads"], "dashboard": None, "ab": ["study", "ab_key"]}
# What the app's first run imports (torch, pandas, SQLAlchemy and every artifix module it uses: about 4 s on 2 cores)
# The label store first: the Review page's kept first page (dashboard/first_page.py) needs only it, not torch.
WARM_MODULES = ("artifix.labels", "artifix.cli.main", "artifix.session", "artifix.report.unitviz", "artifix.review.ab")
_warm: threading.Thread | None = None

# Server flags that are always set (the security-relevant ones cannot be switched off from artifix).
SAFE_FLAGS: dict[str, str] = {
    "server.headless": "true",
    "server.enableXsrfProtection": "true",
    "server.enableCORS": "true",
    "browser.gatherUsageStats": "false",
    "server.fileWatcherType": "none",
    "client.toolbarMode": "minimal",
}


def launch_command(opts: Mapping[str, Any], app: str | Path = APP) -> list[str]:
    """The `streamlit run` command line for the dashboard with `opts` (host and port from the [dashboard] options)."""
    host = str(opts.get("host") or "127.0.0.1")
    port = int(opts.get("port") or 8501)
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}.")
    if importlib.util.find_spec("streamlit") is None:
        raise UserError('the dashboard needs Streamlit, which is not installed; run pip install "artifix[dashboard]".')
    if not Path(app).is_file():
        raise UserError(f"the dashboard app {app} is missing; reinstall artifix (pip install 'artifix[dashboard]').")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", host, "--server.port", str(port)]
    for k, v in SAFE_FLAGS.items():
        cmd += [f"--{k}", v]
    return cmd


def launch_env(opts: Mapping[str, Any], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the dashboard process: `base` (default os.environ) plus the settings as JSON."""
    env = dict(os.environ if base is None else base)
    env[SETTINGS_ENV] = json.dumps(dict(opts), default=str)
    return env


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The settings `artifix dashboard` passed to the app, or None when started with plain `streamlit run`."""
    text = (os.environ if environ is None else environ).get(SETTINGS_ENV)
    return None if not text else json.loads(text)


def serve_here(opts: Mapping[str, Any], app: str | Path = APP) -> None:
    """Run the dashboard's Streamlit server in this process until it stops (Ctrl+C or SIGTERM stops it).

    In-process rather than `exec streamlit run`: torch and the artifix modules this process has already imported are
    not imported a second time by the app's first run (about 4 s of a warm start's first load).
    """
    cmd = launch_command(opts, app)
    os.environ[SETTINGS_ENV] = launch_env(opts, {})[SETTINGS_ENV]
    sys.stdout.flush()
    sys.stderr.flush()
    from streamlit.web import cli  # optional dependency: launch_command checked that it is installed

    sys.argv = ["streamlit", *cmd[3:]]
    cli.main(args=cmd[3:], prog_name="streamlit", standalone_mode=False)


def start_dashboard(opts: Mapping[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """Check the launch settings, say where the dashboard listens, and serve it in this process until it stops."""
    launch_command(opts)  # a bad port or a missing Streamlit: exit 2 before anything is said
    if not is_local(str(opts["host"])):
        say(f"warning: the dashboard listens on {opts['host']}: anyone who can reach this address can label and approve "
            "as any reviewer name; put it behind an authenticating proxy.")
    say(f"artifix dashboard on http://{opts['host']}:{opts['port']}/ (store {opts['store']}); Ctrl+C stops it")
    start_warm_imports()
    serve_here(opts)  # this process becomes the server: Ctrl+C or a kill reaches Streamlit itself
    return {"exit_code": 0, "url": f"http://{opts['host']}:{opts['port']}/"}


def _dashboard_modules() -> list[str]:
    """The dashboard package's modules (`dashboard.*` in a checkout, `artifix.dashboard.*` in a wheel), app.py apart."""
    folder = resources.dashboard_dir()
    package = "artifix.dashboard" if resources.CHECKOUT is None else "dashboard"
    if resources.CHECKOUT is not None and str(resources.CHECKOUT) not in sys.path:
        sys.path.insert(0, str(resources.CHECKOUT))  # as app.py does: `dashboard` is a top-level package of the checkout
    return [f"{package}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem not in ("app", "__init__")]


def _import_all(names: list[str], then: list[str]) -> None:
    """Import `names`, then (once Streamlit's runtime exists, so its caches bind without a warning) `then`."""
    try:
        for name in names:
            importlib.import_module(name)
        from streamlit import runtime  # optional dependency: launch_command checked that it is installed

        for _ in range(600):  # the server creates its runtime within a second or two; give up after 30 s
            if runtime.exists():
                break
            time.sleep(0.05)
        for name in then:
            importlib.import_module(name)
    except Exception:  # noqa: BLE001  (the app's own import of the same module then reports it, on the page)
        return


def start_warm_imports() -> None:
    """Import what the app's first run needs in a background thread, while the server starts and the browser loads."""
    global _warm
    if _warm is None:
        _warm = threading.Thread(target=_import_all, args=(list(WARM_MODULES), _dashboard_modules()),
                                 name="artifix-warm-imports", daemon=True)
        _warm.start()


def warm_pending() -> bool:
    """Whether the background imports of `artifix dashboard` are still running."""
    return _warm is not None and _warm.is_alive()


def await_warm_imports() -> None:
    """Wait for the background imports (called by the app before its own imports, so no module is imported twice at
    once from two threads); returns at once when there are none (`streamlit run dashboard/app.py`)."""
    if _warm is not None:
        _warm.join()


def is_local(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
