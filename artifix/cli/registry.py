"""The command registry: what a command handler receives (`Context`) and how handlers register (`command`).

The modules of `artifix/cli/commands/` register their handlers here; `artifix/cli/main.py` builds the parser from
`COMMANDS`. Neither imports the other back, so there is no import cycle.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import log


@dataclass
class Context:
    """What a command handler receives: merged settings, the parsed args and output helpers."""

    opts: dict[str, Any]
    args: argparse.Namespace
    config: dict[str, Any]
    json: bool = False

    def say(self, text: str) -> None:
        """Human text, on stderr (through the "artifix" logger; nothing with --quiet)."""
        log.say(text)


Handler = Callable[[Context], Any]


@dataclass
class Command:
    """A subcommand: its option sections (names from the defaults table), extra arguments and handler."""

    name: str
    help: str
    handler: Handler
    options: dict[str, list[str] | None] = field(default_factory=dict)  # section -> names (None = all)
    extra: Callable[[argparse.ArgumentParser], None] | None = None


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, options: dict[str, list[str] | None] | None = None,
            extra: Callable[[argparse.ArgumentParser], None] | None = None) -> Callable[[Handler], Handler]:
    """Register a handler as `artifix <name>`."""

    def deco(fn: Handler) -> Handler:
        COMMANDS[name] = Command(name, help, fn, with_device(options or {}), extra)
        return fn

    return deco


def with_device(sections: dict[str, list[str] | None]) -> dict[str, list[str] | None]:
    """The option sections of a command plus `[run] device`, which every command takes."""
    out = dict(sections)
    run_names = out.get("run", [])
    if run_names is not None and "device" not in run_names:
        out["run"] = [*run_names, "device"]
    return out
