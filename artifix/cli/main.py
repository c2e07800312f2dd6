"""The `artifix` command line: one registry of commands, flags generated from the defaults table.

Conventions for every command: `--help`; progress and human text on stderr; `--json` prints the result
object on stdout; exit 0 ok, 1 gate failed, 2 usage/config/input error, 3 runtime error.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Sequence

import torch

from .. import __version__, dist, jsonout, log, progress
from . import commands, parsing  # noqa: F401  (commands registers the handlers)
from ..model import devices
from . import help as cli_help
from .registry import COMMANDS, Command, Context, Handler, command  # noqa: F401  (re-exported: the public names of the CLI)
from ..errors import EXIT_OK, EXIT_RUNTIME, EXIT_USER, ArtifixError


def _use_device(opts: dict[str, Any]) -> None:
    """Make the `device` option the current device (UserError when this machine lacks it)."""
    dev = devices.use(opts.get("device"))
    if opts.get("device"):  # child processes (the dashboard's Streamlit server) follow an explicit choice
        os.environ[devices.DEVICE_ENV] = str(dev)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by main and by the docs test)."""
    parser = cli_help.Parser(prog="artifix", description="Find, remove and prove away the generator units that cause GAN artifacts.",
                             epilog="examples:\n  artifix demo\n  artifix repair --help\n  eval \"$(artifix completion bash)\"",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"artifix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        parsing.add_command(sub, cmd.name, cmd.help, cmd.options, cmd.extra)
    cli_help.add_completion(sub, parser)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse argv, run the command, print the result; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USER
    if args.command == "completion":
        sys.stdout.write(cli_help.completion_script(parser, args.shell))
        return EXIT_OK
    cmd = COMMANDS[args.command]
    progress.QUIET = bool(args.quiet)
    progress.BARS = not bool(getattr(args, "json", False))
    log.to_stderr()
    try:
        if dist.init() and not dist.is_main():
            progress.QUIET = True  # under torchrun only rank 0 prints
        opts, cfg = parsing.resolve_settings(cmd.options, args)
        ctx = Context(opts, args, cfg, bool(args.json))
        _use_device(opts)
        threads = opts.get("threads") or 0
        if threads:
            torch.set_num_threads(int(threads))
        result = cmd.handler(ctx)
        if ctx.json and result is not None and dist.is_main():
            sys.stdout.write(jsonout.dumps(result, indent=2, sort_keys=True) + "\n")
            sys.stdout.flush()
        code = result.get("exit_code", EXIT_OK) if isinstance(result, dict) else EXIT_OK
        return int(code)
    except ArtifixError as e:
        print(f"artifix {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"artifix {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"artifix {args.command}: error: out of memory; lower --batch or --n.", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as e:  # a bug or an environment failure, not a user mistake
        if os.environ.get("ARTIFIX_DEBUG"):
            traceback.print_exc()
        print(f"artifix {args.command}: runtime error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(set ARTIFIX_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        dist.shutdown()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
