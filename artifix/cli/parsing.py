"""Argument parsing shared by the full CLI and the dashboard's fast start: a command's subparser, and its settings.

Light on purpose (no torch, no command modules): `artifix dashboard` parses and validates its options with these
functions before the heavy imports, so its server listens within about a second (see `artifix/cli/entry.py`).
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import config, defaults
from . import help as cli_help
from . import validate


def add_options(p: argparse.ArgumentParser, sections: dict[str, list[str] | None]) -> None:
    """The flags of `sections` (names from the defaults table), one argument group per section."""
    for sec, names in sections.items():
        group = p.add_argument_group(f"[{sec}] options (also settable in artifix.toml)")
        for opt in defaults.OPTIONS:
            if opt.section != sec or (names is not None and opt.name not in names):
                continue
            dflt = "" if opt.default is None else f" (default: {opt.default})"
            if opt.flag:
                group.add_argument(opt.cli, dest=opt.name, action="store_true", default=None, help=opt.help)
            elif opt.choices:
                group.add_argument(opt.cli, dest=opt.name, default=None, choices=opt.choices, help=opt.help + dflt)
            else:
                group.add_argument(opt.cli, dest=opt.name, default=None, metavar=opt.name.upper(), help=opt.help + dflt)


def short_usage(name: str, p: argparse.ArgumentParser) -> str:
    """'artifix NAME [options] POSITIONALS': the options are listed below it, grouped, instead of a 20-line usage."""
    pos = []
    for a in p._get_positional_actions():
        word = "{" + ",".join(a.choices) + "}" if a.choices else (a.metavar or a.dest)
        pos.append(f"[{word}]" if a.nargs == "?" else word)
    return " ".join([f"artifix {name} [options]", *pos])


def add_command(sub: Any, name: str, help: str, sections: dict[str, list[str] | None], extra: Any = None) -> argparse.ArgumentParser:
    """The subparser of `artifix NAME`: --config, --json, --quiet, the sections' flags and the command's extra arguments."""
    p = sub.add_parser(name, help=help, description=help, epilog=cli_help.epilog(name),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="settings file (default: ./artifix.toml when present)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress or human text on stderr")
    add_options(p, sections)
    if extra:
        extra(p)
    p.usage = short_usage(name, p)
    return p


def resolve_settings(sections: dict[str, list[str] | None], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the command's settings: flags over artifix.toml over defaults, range-checked; the loaded config)."""
    cfg = config.load_config(args.config)
    opts: dict[str, Any] = {}
    for sec, names in sections.items():
        opts.update(config.resolve(sec, vars(args), cfg, names))
    validate.check_options(opts)  # every option's range, before any command loads or computes anything
    return opts, cfg
