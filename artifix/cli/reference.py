"""The CLI reference page, generated from the command registry and the defaults table (never written by hand).

`python -m artifix.cli.reference > cli.md` prints it; the docs build (scripts/mkdocs_hooks.py) adds it as cli.md.
"""

from __future__ import annotations

import argparse

from .. import defaults
from . import main as cli, help as cli_help


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _extras(cmd: cli.Command) -> list[argparse.Action]:
    """Arguments a command adds itself (positional actions and the like), outside the defaults table."""
    if cmd.extra is None:
        return []
    p = argparse.ArgumentParser(add_help=False)
    cmd.extra(p)
    return list(p._actions)


def section_table(section: str, names: list[str] | None) -> list[str]:
    """A Markdown table of one `[section]`'s options: flag, TOML key, default, allowed values, meaning."""
    rows = ["| flag | `artifix.toml` key | default | meaning |", "|---|---|---|---|"]
    for o in defaults.OPTIONS:
        if o.section != section or (names is not None and o.name not in names):
            continue
        dflt = "off" if o.flag else "—" if o.default is None else f"`{o.default}`"
        allowed = f" (one of {', '.join(f'`{c}`' for c in o.choices)})" if o.choices else ""
        rows.append(f"| `{o.cli}` | `[{section}] {o.name}` | {_cell(dflt)} | {_cell(o.help)}{allowed} |")
    return rows


def command_page(cmd: cli.Command) -> list[str]:
    """One command's section: what it does, its examples, its own arguments and its option tables."""
    out = [f"## artifix {cmd.name}", "", cmd.help[0].upper() + cmd.help[1:] + ".", ""]
    ex = cli_help.EXAMPLES.get(cmd.name)
    if ex:
        out += ["```bash"] + [f"{c:<60}  # {why}" for c, why in ex] + ["```", ""]
    own = [a for a in _extras(cmd) if a.dest != "help"]
    if own:
        out += ["| argument | meaning |", "|---|---|"]
        for a in own:
            name = "/".join(a.option_strings) or a.dest
            choices = f" (one of {', '.join(f'`{c}`' for c in a.choices)})" if a.choices else ""
            out.append(f"| `{name}` | {_cell(a.help or '')}{choices} |")
        out.append("")
    for sec, names in cmd.options.items():
        out += [f"**[{sec}] options**", ""] + section_table(sec, names) + [""]
    return out


def markdown() -> str:
    """The whole CLI reference as Markdown."""
    cli.build_parser()  # registers every command
    out = ["# CLI reference", "",
           "Generated from artifix's command registry and its one table of defaults (`artifix/defaults.py`): every "
           "flag is also a key of its table in `artifix.toml`, and flags win over the file. Every command takes "
           "`--config FILE`, `--json` (strict JSON on stdout) and `--quiet`; exit codes: 0 ok, 1 gate failed, "
           "2 a usage, config or input error, 3 a runtime error. `artifix completion bash|zsh|tcsh` prints a shell "
           "completion script.", ""]
    for cmd in cli.COMMANDS.values():
        out += command_page(cmd)
    out += ["## Every `artifix.toml` table", "", "All options of the defaults table, by section (some are read only from "
            "`artifix.toml` or by the library).", ""]
    for sec in dict.fromkeys(o.section for o in defaults.OPTIONS):
        out += [f"### [{sec}]", ""] + section_table(sec, None) + [""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
