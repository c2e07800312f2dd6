"""The console entry point (`artifix`, `python -m artifix`, `python cli.py`).

`artifix dashboard` takes a fast start: its options are parsed and checked with the light modules
(`cli.parsing`, `cli.serve`; no torch), the Streamlit server starts listening at once, and the heavy imports run
in a background thread while the browser loads the page. Every other command, `artifix dashboard --help`, and a
dashboard given an explicit `--device` (checking it needs torch) go through the full CLI (`cli.main`).
"""

from __future__ import annotations

import sys
from typing import Sequence

from .. import log, progress
from ..errors import EXIT_OK, ArtifixError
from . import help as cli_help
from . import parsing, registry, serve

SLOW_PATH_FLAGS = ("-h", "--help", "--json", "--device")


def dashboard_settings(argv: Sequence[str]) -> dict:
    """The dashboard's settings from its arguments (flags over artifix.toml over defaults), as `artifix dashboard`
    resolves them in the full CLI; UserError or exit 2 for a bad one."""
    parser = cli_help.Parser(prog="artifix")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parsing.add_command(sub, "dashboard", serve.DASHBOARD_HELP, registry.with_device(serve.DASHBOARD_OPTIONS))
    args = parser.parse_args(["dashboard", *argv])
    progress.QUIET = bool(args.quiet)
    return parsing.resolve_settings(registry.with_device(serve.DASHBOARD_OPTIONS), args)[0]


def fast_dashboard(argv: Sequence[str]) -> int | None:
    """Serve the dashboard without importing torch first; None when the full CLI must handle this command line."""
    if any(a.split("=")[0] in SLOW_PATH_FLAGS for a in argv):
        return None
    log.to_stderr()
    try:
        opts = dashboard_settings(argv)
        if opts.get("device"):  # from artifix.toml: checking it needs torch, so the full CLI does it
            return None
        serve.start_dashboard(opts, log.say)
        return EXIT_OK
    except ArtifixError as e:
        print(f"artifix dashboard: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("artifix dashboard: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dashboard"] and (code := fast_dashboard(argv[1:])) is not None:
        sys.exit(code)
    from .main import main as full_cli  # startup cost: torch and every command, which the dashboard's fast start avoids

    full_cli(argv)
