"""Label store: runs, flags, masks, unit decisions, audit log, export, SQLite settings."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import timezone

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from artifix.errors import UserError
from artifix.labels import LabelStore, decode_mask, encode_mask, format_time, parse_time

TABLES = ("runs", "flags", "masks", "unit_decisions", "audit")


def table_counts(store: LabelStore) -> dict[str, int]:
    with store.engine.connect() as c:
        return {t: c.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in TABLES}


@pytest.fixture
def run(store):
    return store.register_run("f" * 64, ["net.2", "net.4"], seed=7, n=20, image_size=(6, 5))


# ----------------------------------------------------------------------------------------- runs


def test_register_same_triple_returns_existing_run(store):
    a = store.register_run("abc", ["net.2", "net.4"], 0, 10, {"note": "first"}, image_size=(4, 4))
    assert store.register_run("abc", ["net.4", "net.2"], 0, 10) == a  # a layer set, order does not matter
    assert store.register_run("abc", "net.2", 0, 10) != a
    assert store.register_run("abc", ["net.2", "net.4"], 1, 10) != a
    assert store.register_run("abd", ["net.2", "net.4"], 0, 10) != a
    # a larger n extends the run (sample i is a pure function of (seed, i)); a smaller one changes nothing
    assert store.register_run("abc", ["net.2", "net.4"], 0, 50) == a
    assert store.register_run("abc", ["net.2", "net.4"], 0, 5) == a
    r = store.get_run(a)
    assert (r.fingerprint, r.layers, r.seed, r.n, r.image_size, r.meta) == ("abc", ("net.2", "net.4"), 0, 50, (4, 4), {"note": "first"})
    assert r.created.tzinfo == timezone.utc
    assert [x.id for x in store.runs()] == [a, a + 1, a + 2, a + 3]
    assert store.find_run("abc", ["net.4", "net.2"], 0) == r
    assert store.find_run("abc", ["net.4"], 0) is None
    with pytest.raises(UserError, match="image size"):
        store.register_run("abc", ["net.2", "net.4"], 0, 10, image_size=(8, 8))
    with pytest.raises(UserError, match="run 999"):
        store.get_run(999)
    for bad in [dict(fingerprint=""), dict(layers=[]), dict(n=0), dict(seed=2**64), dict(image_size=(0, 3))]:
        args = dict(fingerprint="x", layers=["l"], seed=0, n=3, image_size=None) | bad
        with pytest.raises(UserError):
            store.register_run(args.pop("fingerprint"), args.pop("layers"), args.pop("seed"), args.pop("n"), **args)


def test_store_persists_across_reopen(tmp_path):
    path = tmp_path / "sub" / "labels.db"
    with LabelStore(path) as s:
        rid = s.register_run("abc", ["l"], 0, 3, image_size=(2, 2))
        s.set_flag(rid, 1, "artifact", "alice")
        s.set_mask(rid, 1, "alice", np.eye(2, dtype=bool))
    with LabelStore(str(path)) as s, LabelStore(f"sqlite:///{path}") as s2:
        assert s.flags(rid)["label"].tolist() == ["artifact"]
        assert np.array_equal(s2.mask(rid, 1), np.eye(2, dtype=bool))


def test_sqlite_settings(store, tmp_path):
    with store.engine.connect() as c:
        got = {p: c.exec_driver_sql(f"PRAGMA {p}").scalar()
               for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
    assert got == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 10000}
    with store.engine.connect() as c:
        assert c.execute(sa.text("SELECT version FROM schema_version")).scalars().all() == [2]  # schema 2: the ab_answers table
    with pytest.raises(sa.exc.IntegrityError):  # foreign keys are enforced
        with store.engine.begin() as c:
            c.execute(sa.text("INSERT INTO flags (run_id, sample, label, reviewer, time) VALUES (99, 0, 'clean', 'x', 0)"))


def test_bad_locations(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a SQLite database"):
        LabelStore(junk)
    with pytest.raises(UserError, match="folder"):
        LabelStore(tmp_path)
    newer = tmp_path / "newer.db"
    LabelStore(newer).close()
    with sqlite3.connect(newer) as c:
        c.execute("INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(UserError, match="upgrade artifix"):
        LabelStore(newer)


def test_memory_store():
    s = LabelStore(":memory:")
    rid = s.register_run("abc", ["l"], 0, 3)
    s.set_flag(rid, 0, "clean", "a")
    assert s.counts(rid)["clean"] == 1


# ----------------------------------------------------------------------------------------- flags


def test_flags_latest_wins_history_and_per_reviewer(store, run):
    store.set_flag(run, 3, "artifact", "alice")
    store.set_flag(run, 3, "clean", "bob")
    store.set_flag(run, 5, "unsure", "alice")
    store.set_flag(run, 5, "Artifact", "alice")  # labels are case-insensitive
    store.set_flags(run, {0: "clean", 1: "clean"}, "carol")

    cur = store.flags(run)
    assert list(cur.columns) == ["sample", "label", "reviewer", "time"]
    assert cur[["sample", "label", "reviewer"]].values.tolist() == [
        [0, "clean", "carol"], [1, "clean", "carol"], [3, "clean", "bob"], [5, "artifact", "alice"]]
    assert str(cur["time"].dt.tz) == "UTC"
    assert store.label(run, 3) == "clean" and store.label(run, 4) is None

    per = store.reviewer_flags(run)
    assert per[["sample", "label", "reviewer"]].values.tolist() == [
        [0, "clean", "carol"], [1, "clean", "carol"], [3, "artifact", "alice"], [3, "clean", "bob"], [5, "artifact", "alice"]]
    assert store.reviewer_flags(run, "alice")["sample"].tolist() == [3, 5]

    hist = store.flag_history(run)
    assert len(hist) == 6 and hist["id"].is_monotonic_increasing
    assert hist["label"].tolist() == ["artifact", "clean", "unsure", "artifact", "clean", "clean"]

    # a later event by an earlier reviewer wins again
    store.set_flag(run, 3, "unsure", "alice")
    assert store.label(run, 3) == "unsure"


def test_latest_is_by_time_then_id(store, run, tmp_path):
    # imported events carry their own time: an old event does not override a newer one, equal times go by id
    csv = tmp_path / "f.csv"
    csv.write_text("sample,label,reviewer,time\n"
                   "2,artifact,bob,2020-01-01T00:00:00Z\n"
                   "2,clean,carol,2020-01-01T00:00:00Z\n"
                   "4,artifact,bob,2020-01-01T00:00:00Z\n")
    store.set_flag(run, 4, "clean", "alice")  # now: newer than 2020
    store.import_labels(run, csv)
    cur = store.flags(run).set_index("sample")
    assert cur.loc[2, "label"] == "clean" and cur.loc[2, "reviewer"] == "carol"
    assert cur.loc[4, "label"] == "clean" and cur.loc[4, "reviewer"] == "alice"


@pytest.mark.parametrize("call, match", [
    (lambda s, r: s.set_flag(r, 20, "clean", "a"), "outside run"),
    (lambda s, r: s.set_flag(r, -1, "clean", "a"), "outside run"),
    (lambda s, r: s.set_flag(r, True, "clean", "a"), "integer"),
    (lambda s, r: s.set_flag(r, 1.0, "clean", "a"), "integer"),
    (lambda s, r: s.set_flag(r, 1, "bad", "a"), "not one of artifact, clean, unsure"),
    (lambda s, r: s.set_flag(r, 1, "clean", "a b"), "reviewer name"),
    (lambda s, r: s.set_flag(r, 1, "clean", "../x"), "reviewer name"),
    (lambda s, r: s.set_flag(r + 1, 1, "clean", "a"), "not in the label store"),
    (lambda s, r: s.set_flags(r, [(1, "clean"), (25, "clean")], "a"), "outside run"),
    (lambda s, r: s.set_mask(r, 1, "a", np.zeros((5, 6), bool)), "shape"),
    (lambda s, r: s.set_mask(r, 1, "a", np.zeros((6, 5, 1), bool)), "shape"),
    (lambda s, r: s.set_mask(r, 20, "a", np.zeros((6, 5), bool)), "outside run"),
    (lambda s, r: s.propose_unit(r, "net.3", 1, "a"), "not one of run"),
    (lambda s, r: s.propose_unit(r, "net.2", -1, "a"), "negative"),
    (lambda s, r: s.propose_unit(r, "net.2", 1, "a", scores={"x": object()}), "JSON"),
    (lambda s, r: s.decide_unit(r, "net.2", 1, "maybe", "a"), "approved"),
    (lambda s, r: s.decide_unit(r, "net.2", 1, "approved", "mallory", approvers={"alice"}), "approvers"),
])
def test_invalid_changes_raise_and_write_nothing(store, run, call, match):
    before = table_counts(store)
    with pytest.raises(UserError, match=match):
        call(store, run)
    assert table_counts(store) == before


def test_mask_needs_image_size(store):
    rid = store.register_run("abc", ["l"], 0, 3)
    with pytest.raises(UserError, match="image_size"):
        store.set_mask(rid, 0, "a", np.zeros((2, 2), bool))
    assert store.register_run("abc", ["l"], 0, 3, image_size=(2, 2)) == rid  # the size can be added later
    store.set_mask(rid, 0, "a", np.ones((2, 2), bool))
    assert store.mask(rid, 0).all()


# ----------------------------------------------------------------------------------------- masks


def test_mask_encoding_round_trip():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 5), (64, 64), (7, 13)]:
        m = rng.random(shape) > 0.5
        assert np.array_equal(decode_mask(encode_mask(m), *shape), m)


def test_masks_latest_per_reviewer_and_union(store, run):
    a1 = np.zeros((6, 5), bool); a1[0, 0] = True
    a2 = np.zeros((6, 5), bool); a2[1, 1:4] = True
    b = np.zeros((6, 5), np.uint8); b[5, 4] = 255  # non-boolean: nonzero = marked
    assert store.mask(run, 2) is None
    store.set_mask(run, 2, "alice", a1)
    store.set_mask(run, 2, "alice", a2)  # replaces alice's earlier mask
    store.set_mask(run, 2, "bob", b)
    store.set_mask(run, 9, "bob", a1)

    assert np.array_equal(store.mask(run, 2, "alice"), a2)
    assert np.array_equal(store.mask(run, 2, "bob"), b != 0)
    union = store.mask(run, 2)
    assert union.dtype == bool and union.shape == (6, 5)
    assert np.array_equal(union, a2 | (b != 0))
    assert store.mask(run, 2, "carol") is None
    all_masks = store.masks(run)
    assert sorted(all_masks) == [2, 9]
    assert np.array_equal(all_masks[2], union) and np.array_equal(all_masks[9], a1)
    assert sorted(store.masks(run, reviewer="alice")) == [2]
    rec = store.mask_records(run)
    assert rec[["sample", "reviewer", "pixels"]].values.tolist() == [[2, "alice", 3], [2, "bob", 1], [9, "bob", 1]]
    with store.engine.connect() as c:  # history is kept
        assert c.execute(sa.text("SELECT COUNT(*) FROM masks")).scalar() == 4


# ----------------------------------------------------------------------------------------- units


def test_unit_decisions_latest_wins(store, run):
    store.propose_unit(run, "net.4", 7, "scorer", note="top IoU",
                       scores={"iou": np.float32(0.25), "auc": float("nan"), "rank": np.int64(1)})
    store.propose_units(run, [("net.2", 1), ("net.2", 3, {"iou": 0.1})], "scorer")
    store.decide_unit(run, "net.4", 7, "approved", "alice", note="clearly blotches", approvers={"alice"})
    store.decide_unit(run, "net.2", 1, "approved", "alice")
    store.decide_unit(run, "net.2", 1, "rejected", "bob", note="changes the sky")
    store.decide_unit(run, "net.2", 3, "approved", "bob")

    dec = store.unit_decisions(run)
    assert dec[["layer", "unit", "status", "reviewer"]].values.tolist() == [
        ["net.2", 1, "rejected", "bob"], ["net.2", 3, "approved", "bob"], ["net.4", 7, "approved", "alice"]]
    assert dec.iloc[2]["scores"] == {"iou": 0.25, "auc": None, "rank": 1}  # carried from the proposal
    assert dec.iloc[1]["scores"] == {"iou": pytest.approx(0.1)}
    approved = store.approved_units(run)
    assert [(a.layer, a.unit, a.reviewer, a.note) for a in approved] == [
        ("net.2", 3, "bob", ""), ("net.4", 7, "alice", "clearly blotches")]
    layer, unit, reviewer, when, note = approved[1]  # plain tuples too
    assert when.tzinfo == timezone.utc
    assert len(store.unit_history(run)) == 7
    # re-proposing puts an approved unit back to 'proposed'
    store.propose_unit(run, "net.2", 3, "scorer")
    assert [a.unit for a in store.approved_units(run)] == [7]
    c = store.counts(run)
    assert (c["proposed"], c["approved"], c["rejected"]) == (1, 1, 1)


# ----------------------------------------------------------------------------------------- audit


def test_every_change_is_audited_in_its_transaction(store, run):
    store.set_flag(run, 1, "artifact", "alice")
    store.set_flags(run, [(2, "clean"), (3, "clean")], "bob")
    store.set_mask(run, 1, "alice", np.ones((6, 5), bool))
    store.propose_unit(run, "net.2", 4, "scorer")
    store.decide_unit(run, "net.2", 4, "approved", "alice")
    store.register_run("f" * 64, ["net.2", "net.4"], seed=7, n=30)  # extends n: a change

    log = store.audit(run)
    assert log["action"].tolist() == ["register_run", "set_flag", "set_flag", "set_mask", "propose_unit",
                                      "decide_unit", "extend_run"]
    assert log["actor"].tolist()[1:6] == ["alice", "bob", "alice", "scorer", "alice"]
    assert log.iloc[1]["detail"] == {"sample": 1, "label": "artifact", "flag_id": 1}
    assert log.iloc[6]["detail"]["n"] == [20, 30]
    assert store.audit()["action"].iloc[0] == "create_store"
    assert str(log["time"].dt.tz) == "UTC"


def test_audit_is_append_only(store, run, tmp_path):
    store.set_flag(run, 1, "artifact", "alice")
    before = store.audit()
    for stmt in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit", "DELETE FROM audit WHERE id = 1"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with store.engine.begin() as c:
                c.execute(sa.text(stmt))
    with sqlite3.connect(tmp_path / "labels.db") as raw:  # also outside artifix
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("UPDATE audit SET detail = '{}'")
    pd.testing.assert_frame_equal(store.audit(), before)


# ----------------------------------------------------------------------------------------- counts, times


def test_counts(store, run):
    store.set_flag(run, 0, "artifact", "a")
    store.set_flag(run, 0, "clean", "b")
    store.set_flag(run, 1, "artifact", "a")
    store.set_flag(run, 2, "unsure", "a")
    store.set_mask(run, 1, "a", np.ones((6, 5), bool))
    store.set_mask(run, 2, "a", np.zeros((6, 5), bool))  # an empty mask does not count as masked
    assert store.counts(run) == {"n": 20, "labelled": 3, "artifact": 1, "clean": 1, "unsure": 1, "unlabelled": 17,
                                 "masked": 1, "flag_events": 4, "reviewers": 2,
                                 "proposed": 0, "approved": 0, "rejected": 0}


def test_time_text_round_trip():
    us = parse_time("2024-05-01T12:00:00.123456Z")
    assert format_time(us) == "2024-05-01T12:00:00.123456Z"
    assert parse_time("2024-05-01T14:00:00.123456+02:00") == us
    assert parse_time("2024-05-01 12:00:00.123456") == us  # naive = UTC
    assert parse_time("1714564800.123456") == us
    assert parse_time(0) == 0 and format_time(0) == "1970-01-01T00:00:00.000000Z"
    with pytest.raises(ValueError):
        parse_time("yesterday")


# ----------------------------------------------------------------------------------------- export


def test_export_files_and_atomic_replace(store, run, tmp_path):
    store.set_flag(run, 4, "artifact", "alice")
    store.set_flag(run, 1, "clean", "bob")
    store.set_flag(run, 4, "unsure", "bob")
    m = np.zeros((6, 5), bool); m[2:4, 1:3] = True
    store.set_mask(run, 4, "alice", m)
    out = store.export_labels(run, tmp_path / "exp")
    assert sorted(os.listdir(out)) == ["flags.csv", "flags.json", "masks"]
    lines = (out / "flags.csv").read_text().splitlines()
    assert lines[0] == "sample,label,reviewer,time"
    assert [ln.rsplit(",", 1)[0] for ln in lines[1:]] == ["1,clean,bob", "4,artifact,alice", "4,unsure,bob"]
    doc = json.loads((out / "flags.json").read_text())
    assert doc["run"]["image_size"] == [6, 5] and len(doc["flags"]) == 3
    assert [(c["sample"], c["label"]) for c in doc["current"]] == [(1, "clean"), (4, "unsure")]
    from PIL import Image

    with Image.open(out / "masks" / "4_alice.png") as im:
        assert im.mode == "L" and im.size == (5, 6)
        px = np.asarray(im)
    assert set(np.unique(px)) == {0, 255} and np.array_equal(px == 255, m)

    store.set_flag(run, 2, "artifact", "carol")
    store.export_labels(run, out)  # replaces an earlier export
    assert len((out / "flags.csv").read_text().splitlines()) == 5
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temp folders left

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a label export"):
        store.export_labels(run, other)
    assert os.listdir(other) == ["notes.txt"]


# ----------------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.skipif(not os.environ.get("ARTIFIX_TEST_PG_URL"), reason="set ARTIFIX_TEST_PG_URL to a scratch PostgreSQL database")
def test_postgresql_smoke():
    s = LabelStore(os.environ["ARTIFIX_TEST_PG_URL"])
    rid = s.register_run(os.urandom(8).hex(), ["l"], 0, 4, image_size=(3, 3))
    s.set_flag(rid, 1, "artifact", "a")
    s.set_flag(rid, 1, "clean", "b")
    s.set_mask(rid, 1, "a", np.eye(3, dtype=bool))
    s.propose_unit(rid, "l", 2, "a", scores={"iou": 0.5})
    s.decide_unit(rid, "l", 2, "approved", "b")
    assert s.flags(rid)["label"].tolist() == ["clean"]
    assert np.array_equal(s.mask(rid, 1), np.eye(3, dtype=bool))
    assert [a.unit for a in s.approved_units(rid)] == [2]
    for stmt in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit", "TRUNCATE audit"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with s.engine.begin() as c:
                c.execute(sa.text(stmt))
