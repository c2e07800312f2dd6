"""Property-based tests (hypothesis): settings resolution, flag import, and the statistics merge.

Modest example counts and no deadlines, so the file runs in well under a minute on shared cores.
"""

from __future__ import annotations

import csv
import io
import json
import tomllib

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from artifix.cli import main as cli
from artifix import config, defaults
from artifix.errors import UserError
from artifix.labels import LABELS, LabelStore
from artifix.units.stats import UnitStats, merge_all

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------------------------------------ settings

SAMPLE_NAMES = ["seed", "n", "start", "batch", "class_id", "grid", "images", "layer", "ablate", "alpha"]
SAMPLE_OPTS = [defaults.option("sample", n) for n in SAMPLE_NAMES]
text = st.text(alphabet="abcXYZ019._-/ ", min_size=1, max_size=12).filter(lambda s: s.strip() == s and not s.startswith("-"))


def value_for(opt: defaults.Option):
    """A valid value of the option's type: (python value it must resolve to, TOML literal, CLI string)."""
    if opt.flag:
        return st.just((True, "true", None))
    if opt.parse is int:
        return st.integers(-(2**40), 2**40).map(lambda i: (i, str(i), str(i)))
    if opt.parse is float:
        return st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: (f, repr(f), repr(f)))
    return text.map(lambda s: (s, json.dumps(s), s))


def toml_for(section: str, entries: dict[str, str]) -> dict:
    return tomllib.loads(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


@SETTINGS
@given(st.data())
def test_every_option_resolves_flag_over_file_over_default(data):
    """For any option of any section: the CLI value wins, else the file's, else the table's default."""
    opt = data.draw(st.sampled_from(defaults.OPTIONS))
    assume(opt.name not in ("kwargs", "criteria"))  # JSON-valued: their own tests below and in test_gate.py
    (want_file, lit, _) = data.draw(value_for(opt))
    (want_cli, _, cli_s) = data.draw(value_for(opt))
    cfg = toml_for(opt.section, {opt.name: lit})
    where = data.draw(st.sampled_from(["cli", "file", "default"]))
    cli_vals = {opt.name: (True if opt.flag else cli_s)} if where == "cli" else {}
    got = config.resolve(opt.section, cli_vals, cfg if where != "default" else {})[opt.name]
    want = {"cli": want_cli, "file": want_file, "default": opt.default}[where]
    assert got == want and type(got) is type(want), (opt.name, where, got, want)


@SETTINGS
@given(st.data())
def test_cli_parser_and_file_combine_per_key(data):
    """Through the real argparse parser: each `sample` key comes from its flag if given, else the file, else the default."""
    chosen = data.draw(st.lists(st.sampled_from(SAMPLE_OPTS), unique_by=lambda o: o.name, max_size=len(SAMPLE_OPTS)))
    in_file = data.draw(st.lists(st.sampled_from(SAMPLE_OPTS), unique_by=lambda o: o.name, max_size=len(SAMPLE_OPTS)))
    argv, file_entries, want = ["sample"], {}, {o.name: o.default for o in SAMPLE_OPTS}
    for o in in_file:
        v, lit, _ = data.draw(value_for(o))
        file_entries[o.name] = lit
        want[o.name] = v
    for o in chosen:
        v, _, s = data.draw(value_for(o))
        argv.append(f"{o.cli}={s}")
        want[o.name] = v
    args = cli.build_parser().parse_args(argv)
    got = config.resolve("sample", vars(args), toml_for("sample", file_entries) if file_entries else {}, SAMPLE_NAMES)
    assert got == want


@SETTINGS
@given(st.data())
def test_numbers_coerce_exactly_or_fail_with_one_sentence(data):
    opt = data.draw(st.sampled_from([o for o in defaults.OPTIONS if o.parse in (int, float)]))
    kind = data.draw(st.sampled_from(["int", "integral float", "fraction", "bool", "text", "list"]))
    lit = {"int": str(data.draw(st.integers(-1000, 1000))),
           "integral float": f"{data.draw(st.integers(-1000, 1000))}.0",
           "fraction": repr(data.draw(st.floats(-1e3, 1e3, allow_nan=False).filter(lambda f: not float(f).is_integer()))),
           "bool": data.draw(st.sampled_from(["true", "false"])),
           "text": json.dumps(data.draw(st.text(alphabet="abc xyz!", min_size=1, max_size=6))),
           "list": "[1, 2]"}[kind]
    cfg = toml_for(opt.section, {opt.name: lit})
    raw = cfg[opt.section][opt.name]
    ok = kind in ("int", "integral float") or (kind == "fraction" and opt.parse is float)
    if ok:
        got = config.resolve(opt.section, {}, cfg)[opt.name]
        assert type(got) is opt.parse and got == raw
    else:
        with pytest.raises(UserError) as e:
            config.resolve(opt.section, {}, cfg)
        msg = str(e.value)
        assert f"'{opt.name}'" in msg and "\n" not in msg and msg.endswith(".")


@SETTINGS
@given(st.sampled_from([o for o in defaults.OPTIONS if o.parse is str and o.name != "kwargs"]),
       st.one_of(st.integers(-99, 99), st.lists(st.integers(0, 99), min_size=1, max_size=4), st.booleans(),
                 st.dictionaries(st.sampled_from("ab"), st.integers(0, 3), min_size=1)))
def test_text_options_take_numbers_and_lists_as_text_and_refuse_the_rest(opt, value):
    cfg = {opt.section: {opt.name: value}}
    if isinstance(value, (bool, dict)):
        with pytest.raises(UserError, match=f"'{opt.name}'"):
            config.resolve(opt.section, {}, cfg)
    else:
        want = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        assert config.resolve(opt.section, {}, cfg)[opt.name] == want


# ------------------------------------------------------------------------------------------------ flag import

N = 12
TABLES = ("runs", "flags", "masks", "unit_decisions", "audit")
reviewers = st.text(alphabet="abcxyzABC019._@+-", min_size=1, max_size=8).filter(lambda s: s[0].isalnum())
flag = st.fixed_dictionaries({"sample": st.integers(0, N - 1), "label": st.sampled_from(LABELS), "reviewer": reviewers,
                              "time": st.integers(946684800, 4102444800).map(lambda s: f"{s}.5")})
BAD_ROWS = {  # an invalid row and the text its one-sentence error must contain
    "unknown label": ({"sample": "1", "label": "artefact"}, "is not one of"),
    "sample too large": ({"sample": str(N), "label": "clean"}, f"sample index {N}"),
    "negative sample": ({"sample": "-3", "label": "clean"}, "sample index -3"),
    "sample not an integer": ({"sample": "2.5", "label": "clean"}, "not an integer"),
    "empty label": ({"sample": "1", "label": ""}, "label is missing"),
    "bad reviewer": ({"sample": "1", "label": "clean", "reviewer": "a b"}, "reviewer name"),
    "bad time": ({"sample": "1", "label": "clean", "time": "noon"}, "time 'noon'"),
}


def counts(store: LabelStore) -> dict[str, int]:
    with store.engine.connect() as c:
        return {t: c.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in TABLES}


def write_flags(path, rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        path.write_text(json.dumps(rows))
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["sample", "label", "reviewer", "time"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in ("sample", "label", "reviewer", "time")})
    path.write_text(buf.getvalue())


@pytest.fixture(scope="module")
def prop_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("props")
    s = LabelStore(d / "labels.db")
    yield s, d
    s.close()


def test_json_import_export_round_trip(prop_store):
    store, d = prop_store
    counter = iter(range(10**6))

    @SETTINGS
    @given(st.lists(flag, max_size=20))
    def check(rows):
        k = next(counter)
        run = store.register_run(f"json{k}", ["l"], 0, N)
        src = d / f"j{k}.json"
        write_flags(src, rows, "json")
        store.import_labels(run, src)
        out = store.export_labels(run, d / f"jout{k}")
        doc = json.loads((out / "flags.json").read_text())
        assert len(doc["flags"]) == len(rows)
        assert sorted((f["sample"], f["label"], f["reviewer"]) for f in doc["flags"]) == \
            sorted((r["sample"], r["label"], r["reviewer"]) for r in rows)
        run2 = store.register_run(f"json{k}b", ["l"], 0, N)  # the export imports back to the same labels
        store.import_labels(run2, out / "flags.json")
        assert store.flags(run2).drop(columns="id", errors="ignore").equals(store.flags(run).drop(columns="id", errors="ignore"))
        again = store.export_labels(run2, d / f"jagain{k}")
        assert json.loads((again / "flags.json").read_text())["flags"] == doc["flags"]

    check()


def test_one_invalid_row_anywhere_rejects_the_file_and_writes_nothing(prop_store):
    store, d = prop_store
    run = store.register_run("invalid", ["l"], 0, N)
    store.set_flag(run, 0, "clean", "alice")
    counter = iter(range(10**6))

    @SETTINGS
    @given(st.lists(flag, max_size=15), st.sampled_from(sorted(BAD_ROWS)), st.integers(0, 15), st.sampled_from(["csv", "json"]))
    def check(rows, bad, pos, fmt):
        pos = min(pos, len(rows))
        row, expect = BAD_ROWS[bad]
        rows = rows[:pos] + [row] + rows[pos:]
        src = d / f"bad{next(counter)}.{fmt}"
        write_flags(src, rows, fmt)
        before = counts(store)
        with pytest.raises(UserError) as e:
            store.import_labels(run, src)
        msg = str(e.value)
        assert expect in msg and "\n" not in msg
        assert (f"line {pos + 2}:" if fmt == "csv" else f"entry {pos}:") in msg  # names the offending row
        assert counts(store) == before

    check()


# ------------------------------------------------------------------------------------------------ statistics merge

C, HW = 3, (2, 3)
values = st.one_of(st.floats(-1024, 1024, allow_nan=False, width=32), st.just(0.0),  # any, incl. tiny and subnormal
                   st.floats(2.0**-10, 1024, width=32), st.floats(-1024, -(2.0**-10), width=32))


@st.composite
def sharded_run(draw):
    n = draw(st.integers(1, 12))
    acts = draw(hnp.arrays(np.float32, (n, C, *HW), elements=values))
    order = draw(st.permutations(list(range(n))))
    k = draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=k - 1, max_size=k - 1)))
    shards = [order[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
    batches = [draw(st.integers(1, 5)) for _ in shards]
    return torch.from_numpy(acts), shards, batches


def record(acts: torch.Tensor, idx, batch: int) -> UnitStats:
    s = UnitStats("l", C, acts.shape[0])
    idx = list(idx)
    for k in range(0, len(idx), batch):
        part = idx[k:k + batch]
        s.update(acts[part], part)
    return s


def same(a: UnitStats, b: UnitStats) -> None:
    assert torch.equal(a.sketch.bins, b.sketch.bins)  # the sketch merge is exact
    assert torch.equal(a.count, b.count)
    torch.testing.assert_close(a.min, b.min, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(a.max, b.max, rtol=0, atol=0, equal_nan=True)
    ta, tb = a.samples(), b.samples()
    assert torch.equal(ta.index, tb.index) and torch.equal(ta.max, tb.max)
    torch.testing.assert_close(ta.mean, tb.mean, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(a.sum, b.sum, rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(a.var, b.var, rtol=1e-7, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(a.quantile([0.0, 0.1, 0.5, 0.9, 1.0]), b.quantile([0.0, 0.1, 0.5, 0.9, 1.0]), rtol=0, atol=0,
                               equal_nan=True)


@SETTINGS
@given(sharded_run(), st.randoms(use_true_random=False))
def test_merge_of_any_sharding_equals_one_pass(run, rnd):
    acts, shards, batches = run
    n = acts.shape[0]
    one = record(acts, range(n), n)
    parts = [record(acts, s, b) for s, b in zip(shards, batches)]
    same(one, merge_all(parts))  # left fold
    shuffled = parts[:]
    rnd.shuffle(shuffled)
    same(one, merge_all(shuffled))  # commutative
    while len(shuffled) > 1:  # any bracketing: merge a random adjacent pair until one is left (associative)
        i = rnd.randrange(len(shuffled) - 1)
        shuffled[i:i + 2] = [shuffled[i].merge(shuffled[i + 1])]
    same(one, shuffled[0])


@SETTINGS
@given(hnp.arrays(np.float32, (6, C, *HW), elements=values), st.lists(st.floats(0, 1), min_size=1, max_size=6))
def test_quantiles_within_the_sketch_accuracy_bound(acts, qs):
    s = record(torch.from_numpy(acts), range(6), 4)
    flat = torch.from_numpy(acts).transpose(0, 1).reshape(C, -1).to(torch.float64)
    q = torch.tensor(qs, dtype=torch.float64)
    exact = torch.quantile(flat, q, dim=1, interpolation="lower").t()
    est = s.quantile(qs)
    alpha, floor = s.relative_accuracy, s.sketch.min_abs
    # relative alpha for |x| >= min_abs; magnitudes below min_abs read as 0 (absolute error < min_abs)
    assert bool(((est - exact).abs() <= alpha * exact.abs() * (1 + 1e-12) + floor).all()), (est, exact)
    assert bool(((est >= flat.min(1).values[:, None]) & (est <= flat.max(1).values[:, None])).all())


@pytest.mark.parametrize("text, ok", [('[{"metric": "fd"}]', True), ('{"metric": "swd"}', True), ("0", False), ('"fd"', False),
                                      ("[1, 2]", False), ("{bad", False)])
def test_criteria_on_the_command_line_must_be_a_json_list_of_objects(text, ok):
    if ok:
        got = config.resolve("gate", {"criteria": text}, {})["criteria"]
        assert isinstance(got, list) and all(isinstance(c, dict) for c in got)
    else:
        with pytest.raises(UserError) as e:
            config.resolve("gate", {"criteria": text}, {})
        msg = str(e.value)
        assert "'criteria'" in msg and "\n" not in msg and msg.endswith(".")
