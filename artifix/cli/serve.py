"""Start the Streamlit dashboard (dashboard/app.py) with safe server settings.

The server binds to 127.0.0.1 unless told otherwise, keeps Streamlit's XSRF protection on, and never phones
home. The resolved artifix settings reach the app in one environment variable (not on the command line, where
other users of the machine could read a database URL with a password).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from .. import resources
from ..errors import UserError

SETTINGS_ENV = "ARTIFIX_DASHBOARD_SETTINGS"
APP = resources.dashboard_dir() / "app.py"

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


def is_local(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
