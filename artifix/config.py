"""Resolve settings: command-line flag > `artifix.toml` table > the defaults table."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from . import defaults
from .errors import UserError

CONFIG_NAME = "artifix.toml"


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read `path` (or ./artifix.toml when present) into a dict of tables; {} when there is none."""
    explicit = path is not None
    p = Path(path) if path is not None else Path(CONFIG_NAME)
    if not p.exists():
        if explicit:
            raise UserError(f"config file {p} does not exist; check --config.")
        return {}
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"config file {p} is not UTF-8 text; save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {p} is not valid TOML: {e}.") from None
    for table, body in data.items():
        if not isinstance(body, dict):
            raise UserError(f"config file {p}: '{table}' must be a table like [{table}], not a plain value.")
    return data


def _coerce(opt: defaults.Option, value: Any, where: str) -> Any:
    """Convert a TOML or CLI value to the option's type, with one clear sentence on failure."""
    if value is None:
        return None
    if opt.name == "kwargs" and isinstance(value, dict):
        return value
    if opt.parse is str and not opt.flag and not isinstance(value, str):
        # TOML numbers and lists of plain values are text for text options: layer = 3, latent = [100, 1, 1]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, list) and value and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
            return ",".join(str(v) for v in value)
        raise UserError(f"{where}: invalid value {value!r} for '{opt.name}' (expected text like {str(opt.default or 'a name')!r}).")
    if opt.parse is int and isinstance(value, float) and not value.is_integer():
        raise UserError(f"{where}: invalid value {value!r} for '{opt.name}' (expected a whole number).")
    if isinstance(value, str) or opt.parse is not str:
        try:
            if isinstance(value, bool) and opt.parse in (int, float):
                raise ValueError("a boolean is not a number")
            if opt.parse in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
                return opt.parse(value)
            return opt.parse(value) if not isinstance(value, bool) or opt.flag else value
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: invalid value {value!r} for '{opt.name}' ({e}).") from None
    return value


def resolve(section: str, cli_values: Mapping[str, Any], config: Mapping[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    """Merge one section's settings: CLI values that are not None, then the config table, then an option's
    environment variable, then defaults."""
    table = config.get(section, {})
    known = {o.name for o in defaults.OPTIONS if o.section == section}
    unknown = sorted(set(table) - known)
    if unknown and section in {o.section for o in defaults.OPTIONS}:
        raise UserError(f"{CONFIG_NAME} [{section}] has unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}.")
    out: dict[str, Any] = {}
    for opt in defaults.OPTIONS:
        if opt.section != section or (names is not None and opt.name not in names):
            continue
        if cli_values.get(opt.name) is not None:
            out[opt.name] = _coerce(opt, cli_values[opt.name], opt.cli)
        elif opt.name in table:
            out[opt.name] = _coerce(opt, table[opt.name], f"{CONFIG_NAME} [{section}]")
        elif opt.env and os.environ.get(opt.env):
            out[opt.name] = _coerce(opt, os.environ[opt.env], f"${opt.env}")
        else:
            out[opt.name] = opt.default
    return out
