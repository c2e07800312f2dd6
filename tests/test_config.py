"""Settings resolution: flag > artifix.toml > $ARTIFIX_CACHE (the cache option's variable) > defaults (property-based)."""

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifix import config, defaults
from artifix.errors import UserError

INT_OPTS = [o for o in defaults.OPTIONS if o.parse is int]
ints = st.integers(min_value=-(2**40), max_value=2**40)


def toml_value(v):
    return str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, str) else str(v)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(INT_OPTS), ints, st.one_of(st.none(), ints))
def test_flag_beats_file_beats_default(opt, file_value, flag_value):
    cfg = tomllib.loads(f"[{opt.section}]\n{opt.name} = {file_value}\n")
    got = config.resolve(opt.section, {opt.name: None if flag_value is None else str(flag_value)}, cfg)[opt.name]
    assert got == (file_value if flag_value is None else flag_value)
    assert config.resolve(opt.section, {}, {})[opt.name] == opt.default


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(INT_OPTS), st.one_of(st.text(min_size=1, max_size=8).filter(lambda s: not s.strip().lstrip("-+").isdigit()),
                                           st.booleans(), st.lists(st.integers(), max_size=2)))
def test_wrong_types_are_one_clear_user_error(opt, bad):
    body = f"[{opt.section}]\n{opt.name} = " + (toml_value(bad) if not isinstance(bad, list) else str(bad)) + "\n"
    try:
        cfg = tomllib.loads(body)
    except tomllib.TOMLDecodeError:
        return  # not TOML at all: load_config reports that (tested below)
    with pytest.raises(UserError) as e:
        config.resolve(opt.section, {}, cfg)
    assert opt.name in str(e.value) and "\n" not in str(e.value)


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=40))
def test_any_file_text_is_config_or_one_user_error(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("cfg") / "artifix.toml"
    p.write_text(text, encoding="utf-8")
    try:
        cfg = config.load_config(p)
    except UserError as e:
        assert "\n" not in str(e).strip() or "TOML" in str(e)
        return
    for section in {o.section for o in defaults.OPTIONS}:
        try:
            config.resolve(section, {}, cfg)
        except UserError:
            pass


def test_unknown_key_and_missing_file():
    with pytest.raises(UserError, match="unknown key 'sede'"):
        config.resolve("sample", {}, {"sample": {"sede": 1}})
    with pytest.raises(UserError, match="does not exist"):
        config.load_config("/nonexistent/artifix.toml")


def test_artifix_cache_comes_after_the_flag_and_the_file_before_the_default(monkeypatch):
    cfg = tomllib.loads('[run]\ncache = "from-toml"\n')
    monkeypatch.delenv("ARTIFIX_CACHE", raising=False)
    assert config.resolve("run", {}, {}, ["cache"])["cache"] == ".artifix-cache"
    assert config.resolve("run", {}, cfg, ["cache"])["cache"] == "from-toml"
    monkeypatch.setenv("ARTIFIX_CACHE", "/tmp/from-env")
    assert config.resolve("run", {}, {}, ["cache"])["cache"] == "/tmp/from-env"
    assert config.resolve("run", {}, cfg, ["cache"])["cache"] == "from-toml"
    assert config.resolve("run", {"cache": "from-flag"}, cfg, ["cache"])["cache"] == "from-flag"
    monkeypatch.setenv("ARTIFIX_CACHE", "")  # set but empty: as if unset
    assert config.resolve("run", {}, {}, ["cache"])["cache"] == ".artifix-cache"


def test_the_cli_settings_read_artifix_cache(tmp_path, monkeypatch):
    """The CLI used to resolve `cache` to its default before $ARTIFIX_CACHE was read, so every command ignored it."""
    from artifix.cli.parsing import resolve_settings
    import argparse

    monkeypatch.setenv("ARTIFIX_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.chdir(tmp_path)
    opts, _ = resolve_settings({"run": ["cache"]}, argparse.Namespace(config=None, cache=None))
    assert opts["cache"] == str(tmp_path / "env-cache")
