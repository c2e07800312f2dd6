"""Label import/export: round trips, validation before writing, one transaction, property test."""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from artifix.errors import UserError
from artifix.labels import LABELS, LabelStore

H, W = 6, 5
TABLES = ("runs", "flags", "masks", "unit_decisions", "audit")


def table_counts(store: LabelStore) -> dict[str, int]:
    with store.engine.connect() as c:
        return {t: c.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in TABLES}


def write_png(path: Path, mask: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").convert(mode).save(path, format="PNG")


@pytest.fixture
def run(store):
    return store.register_run("f" * 64, ["net.2"], seed=0, n=10, image_size=(H, W))


def test_export_import_round_trip_with_masks(store, run, tmp_path):
    store.set_flag(run, 1, "artifact", "alice")
    store.set_flag(run, 1, "clean", "bob")
    store.set_flag(run, 7, "unsure", "carol.d@example.org")
    ma = np.zeros((H, W), bool); ma[1:3, 1:4] = True
    mb = np.zeros((H, W), bool); mb[5, 0] = True
    store.set_mask(run, 1, "alice", ma)
    store.set_mask(run, 1, "bob", mb)
    exp = store.export_labels(run, tmp_path / "exp")

    other = store.register_run("e" * 64, ["net.2"], seed=0, n=10, image_size=(H, W))
    summary = store.import_labels(other, exp)
    assert (summary["flags"], summary["masks"]) == (3, 2)
    for a, b in [(store.flags(run), store.flags(other)), (store.flag_history(run), store.flag_history(other))]:
        assert a.drop(columns="id", errors="ignore").equals(b.drop(columns="id", errors="ignore"))
    assert np.array_equal(store.mask(other, 1, "alice"), ma)
    assert np.array_equal(store.mask(other, 1), ma | mb)
    assert store.audit(other)["action"].tolist() == ["register_run", "import_labels"]

    # importing the same export again adds nothing (timed events and identical masks are skipped)
    again = store.import_labels(other, exp)
    assert (again["flags"], again["flags_skipped"], again["masks"], again["masks_skipped"]) == (0, 3, 0, 2)
    assert len(store.flag_history(other)) == 3
    exp2 = store.export_labels(other, tmp_path / "exp2")
    assert (exp2 / "flags.csv").read_bytes() == (exp / "flags.csv").read_bytes()
    assert sorted(os.listdir(exp2 / "masks")) == ["1_alice.png", "1_bob.png"]


def test_import_json_with_mask_column_and_defaults(store, run, tmp_path):
    m = np.zeros((H, W), bool); m[0, :] = True
    write_png(tmp_path / "pngs" / "a.png", m, mode="1")
    write_png(tmp_path / "pngs" / "b.png", ~m, mode="RGB")
    doc = {"flags": [
        {"sample": 2, "label": "artifact", "mask": "pngs/a.png"},
        {"sample": "3", "label": " CLEAN ", "reviewer": "dan", "time": 1700000000},
        {"sample": 4, "label": "artifact", "reviewer": "dan", "mask": "pngs/b.png"},
    ]}
    (tmp_path / "f.json").write_text(json.dumps(doc))
    store.import_labels(run, tmp_path / "f.json", reviewer="csvbot")
    cur = store.flags(run)
    assert cur[["sample", "label", "reviewer"]].values.tolist() == [
        [2, "artifact", "csvbot"], [3, "clean", "dan"], [4, "artifact", "dan"]]
    assert cur.iloc[1]["time"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    assert np.array_equal(store.mask(run, 2, "csvbot"), m)
    assert np.array_equal(store.mask(run, 4, "dan"), ~m)


def test_import_masks_folder_only(store, run, tmp_path):
    m = np.eye(H, W, dtype=bool)
    write_png(tmp_path / "masks" / "3.png", m)
    write_png(tmp_path / "masks" / "5_eve.png", m)
    (tmp_path / "masks" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    s = store.import_labels(run, tmp_path / "masks", reviewer="painter")  # a plain folder of PNG masks
    assert (s["flags"], s["masks"]) == (0, 2)
    assert sorted(store.mask_records(run)[["sample", "reviewer"]].values.tolist()) == [[3, "painter"], [5, "eve"]]
    s = store.import_labels(run, tmp_path)  # a folder holding masks/ (like an export)
    assert (s["flags"], s["masks"], s["masks_skipped"]) == (0, 1, 1)  # 3.png is now "import"'s; 5_eve.png is unchanged


def _bad_cases():
    def csv_file(text):
        def make(d: Path):
            (d / "flags.csv").write_text(text)
            return d / "flags.csv"
        return make

    def json_file(obj):
        def make(d: Path):
            (d / "flags.json").write_text(obj if isinstance(obj, str) else json.dumps(obj))
            return d / "flags.json"
        return make

    def masks(files: dict[str, object]):
        def make(d: Path):
            (d / "flags.csv").write_text("sample,label\n1,clean\n")
            for name, content in files.items():
                p = d / "masks" / name
                p.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, np.ndarray):
                    write_png(p, content)
                elif content == "dir":
                    p.mkdir()
                elif content == "jpeg":
                    Image.new("L", (W, H)).save(p, format="JPEG")
                else:
                    p.write_bytes(content)
            return d
        return make

    def outside_link(d: Path):
        write_png(d.parent / "outside.png", np.ones((H, W), bool))
        (d / "masks").mkdir()
        os.symlink(d.parent / "outside.png", d / "masks" / "1.png")
        (d / "flags.csv").write_text("sample,label\n1,clean\n")
        return d

    ok = np.zeros((H, W), bool)
    return {
        "unknown sample": (csv_file("sample,label\n1,clean\n10,artifact\n"), "line 3.*sample index 10"),
        "negative sample": (csv_file("sample,label\n-1,clean\n"), "line 2.*sample index -1"),
        "float sample": (csv_file("sample,label\n1.5,clean\n"), "line 2.*not an integer"),
        "bad label": (csv_file("sample,label\n1,clean\n2,artefact\n"), "line 3.*'artefact' is not one of"),
        "missing label": (csv_file("sample,label\n1,\n"), "line 2.*label is missing"),
        "bad reviewer": (csv_file("sample,label,reviewer\n1,clean,a/b\n"), "line 2.*reviewer name"),
        "bad time": (csv_file("sample,label,time\n1,clean,yesterday\n"), "line 2.*time 'yesterday'"),
        "time out of range": (csv_file("sample,label,time\n1,clean,1e30\n"), "line 2.*time '1e30'"),
        "time before 1970": (csv_file("sample,label,time\n1,clean,1969-12-31T00:00:00Z\n"), "line 2.*time"),
        "too many fields": (csv_file("sample,label\n1,clean\n2,clean,extra\n"), "line 3.*3 fields"),
        "unterminated quote": (csv_file('sample,label\n1,"clean\n'), "malformed CSV"),
        "no header": (csv_file(""), "header is missing"),
        "missing column": (csv_file("sample\n1\n"), "'label' is missing"),
        "unknown column": (csv_file("sample,lable\n1,clean\n"), "unknown column 'lable'"),
        "not utf8": (csv_file("sample,label\n1,clean\n"), None),  # replaced below
        "malformed json": (json_file('[{"sample": 1, "label": "clean"},'), "line 1 column .*malformed JSON"),
        "json not a list": (json_file({"rows": []}), "not a list of flags"),
        "json entry not object": (json_file([[1, "clean"]]), "entry 0.*expected an object"),
        "json bool sample": (json_file([{"sample": True, "label": "clean"}]), "entry 0.*not an integer"),
        "json unknown key": (json_file([{"sample": 1, "label": "clean", "colour": 1}]), "entry 0.*unknown key"),
        "json mask escapes": (json_file([{"sample": 1, "label": "clean", "mask": "../x.png"}]), "entry 0.*leaves"),
        "json mask absolute": (json_file([{"sample": 1, "label": "clean", "mask": "/etc/passwd"}]), "entry 0.*absolute"),
        "json mask windows absolute": (json_file([{"sample": 1, "label": "clean", "mask": "C:\\x.png"}]), "absolute"),
        "json mask missing": (json_file([{"sample": 1, "label": "clean", "mask": "nope.png"}]), "does not exist"),
        "mask wrong size": (masks({"1.png": np.zeros((H + 1, W), bool)}), r"1\.png is 7x5.*6x5"),
        "mask unknown sample": (masks({"12_bob.png": ok}), r"12_bob\.png.*sample index 12"),
        "mask bad name": (masks({"one.png": ok}), r"one\.png is not named"),
        "mask bad reviewer": (masks({"1_a b.png": ok}), "reviewer name"),
        "mask not png": (masks({"notes.txt": b"hello"}), r"notes\.txt is not named"),
        "mask png name but text": (masks({"2.png": b"not an image"}), r"2\.png is not a readable PNG"),
        "mask jpeg": (masks({"2.png": "jpeg"}), "not a PNG"),
        "mask subfolder": (masks({"sub": "dir"}), "is a folder"),
        "mask link outside": (outside_link, "outside"),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_import_raises_one_user_error_and_writes_nothing(store, run, tmp_path, case):
    make, match = BAD[case]
    d = tmp_path / "in"
    d.mkdir()
    target = make(d)
    if case == "not utf8":
        target.write_bytes(b"sample,label\n1,cl\xe9an\n")
        match = "not UTF-8"
    store.set_flag(run, 0, "clean", "alice")
    before = table_counts(store)
    with pytest.raises(UserError, match=match) as err:
        store.import_labels(run, target)
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith(".")
    assert ("flags." in msg) or ("mask" in msg)  # names the file
    assert table_counts(store) == before


def test_bad_import_late_in_file_writes_nothing(store, run, tmp_path):
    # 500 good rows and good masks, then one bad mask: nothing at all is written
    rows = "".join(f"{i % 10},{LABELS[i % 3]}\n" for i in range(500))
    (tmp_path / "flags.csv").write_text("sample,label\n" + rows)
    for i in range(9):
        write_png(tmp_path / "masks" / f"{i}.png", np.ones((H, W), bool))
    write_png(tmp_path / "masks" / "9.png", np.ones((H, W + 2), bool))
    before = table_counts(store)
    with pytest.raises(UserError, match=r"9\.png"):
        store.import_labels(run, tmp_path)
    assert table_counts(store) == before


def test_import_missing_paths(store, run, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        store.import_labels(run, tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no flags.csv"):
        store.import_labels(run, tmp_path / "empty")
    (tmp_path / "f.txt").write_text("sample,label\n")
    with pytest.raises(UserError, match="neither .csv nor .json"):
        store.import_labels(run, tmp_path / "f.txt")


# ----------------------------------------------------------------------------------------- property test

N = 12
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
reviewers = st.text(alphabet="abcxyzABC019._@+-é", min_size=1, max_size=8).filter(lambda s: s[0].isalnum())
times = st.one_of(  # a few shared instants make equal times (ties go by file order) common
    st.sampled_from([datetime(2024, 5, 1, 12, tzinfo=timezone.utc), datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=timezone.utc)]),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)))
offsets = st.sampled_from([timedelta(0), timedelta(hours=2), timedelta(hours=-5, minutes=-30)])
flag_rows = st.lists(st.tuples(st.integers(0, N - 1), st.sampled_from(LABELS), reviewers, times, offsets,
                               st.sampled_from(["lower", "upper", "title"])), max_size=25)


def test_property_csv_import_export_round_trip(tmp_path):
    store = LabelStore(tmp_path / "prop.db")
    counter = iter(range(10**6))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(rows=flag_rows, shuffle=st.randoms(use_true_random=False))
    def check(rows, shuffle):
        k = next(counter)
        run = store.register_run(f"prop{k}", ["l"], 0, N)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["sample", "label", "reviewer", "time"])
        for sample, label, reviewer, t, off, case in rows:  # the same instants written in varied forms
            w.writerow([sample, getattr(label, case)(), reviewer, t.astimezone(timezone(off)).isoformat()])
        src = tmp_path / f"in{k}.csv"
        src.write_text(buf.getvalue(), encoding="utf-8")
        store.import_labels(run, src)
        out = store.export_labels(run, tmp_path / f"out{k}")

        # export order: by sample, then time, then file order (a stable sort of the input)
        expected = sorted(((s, lab, r, t) for s, lab, r, t, _, _ in rows), key=lambda x: (x[0], x[3]))
        expected_text = "sample,label,reviewer,time\n" + "".join(
            f"{s},{lab},{r},{t.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}\n" for s, lab, r, t in expected)
        got = (out / "flags.csv").read_text(encoding="utf-8")
        assert got == expected_text
        assert json.loads((out / "flags.json").read_text())["flags"] == [
            {"sample": s, "label": lab, "reviewer": r, "time": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
            for s, lab, r, t in expected]
        # current labels agree with "latest by (time, file order)"
        latest: dict[int, tuple] = {}
        for s, lab, r, t in sorted(((s, lab, r, t) for s, lab, r, t, _, _ in rows), key=lambda x: x[3]):
            latest[s] = (lab, r)
        cur = store.flags(run)
        assert {int(s): (lab, r) for s, lab, r in cur[["sample", "label", "reviewer"]].values} == latest

        # and a second trip through the exported file is byte-identical
        run2 = store.register_run(f"prop{k}b", ["l"], 0, N)
        store.import_labels(run2, out / "flags.csv")
        again = store.export_labels(run2, tmp_path / f"again{k}")
        assert (again / "flags.csv").read_bytes() == (out / "flags.csv").read_bytes()

    check()
