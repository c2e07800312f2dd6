"""The label store: reviewers' flags, artifact masks and unit decisions, with history and an audit log.

One `LabelStore` wraps one database: a SQLite file (the default; WAL journal, `synchronous=FULL`,
foreign keys on, busy timeout, retried when locked) or any SQLAlchemy URL (e.g.
`postgresql+psycopg://user@host/db`). It is written with SQLAlchemy Core and short transactions, so
several processes (dashboard workers, CLI runs) can write to the same store at once.

Data model (every table keeps history; nothing is updated in place except a run's `n`/image size):

- `runs`: one row per (generator fingerprint, layer set, seed); never keyed by a user-chosen name.
- `flags`: every flag event (sample, label, reviewer, time). The current label of a sample is its latest
  event by (time, id) over all reviewers; `reviewer_flags` gives each reviewer's latest.
- `masks`: painted artifact regions (packed bits, zlib). The latest mask per (sample, reviewer) counts;
  `mask(run, sample)` is the union of those over reviewers.
- `unit_decisions`: proposed / approved / rejected events per (layer, unit); the latest wins.
- `audit`: append-only log, one row written in the same transaction as every change. SQLite and
  PostgreSQL triggers reject UPDATE and DELETE on it (PostgreSQL also TRUNCATE); a DROP TABLE by someone
  with owner rights is not prevented.

Times are stored as integer microseconds since the Unix epoch (UTC), returned as pandas UTC timestamps
and written to files as ISO 8601 (`2024-05-01T12:00:00.000000Z`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import UserError
from ..io import fsync_dir, sha256_file, write_bytes_atomic, write_text_atomic
from .engine import StoreEngine
from .queries import flag_painted, kept, latest, latest_masks, load_run, row_to_run
from .schema import SCHEMA_VERSION, ab_answers_t, audit_t, flags_t, masks_t, runs_t, units_t
from .values import (LABELS, MASK_ENCODING, MAX_TIME_US, STATUSES, ApprovedUnit, Run, as_int, check_label, check_reviewer,
                     check_sample, decode_mask, dumps, encode_mask, format_time, jsonable, now_us, parse_time, time_col,
                     to_datetime)

__all__ = [
    "LABELS", "STATUSES", "SCHEMA_VERSION", "LabelStore", "Run", "ApprovedUnit",
    "encode_mask", "decode_mask", "format_time", "parse_time",
]

_MASK_NAME_RE = re.compile(r"([0-9]+)(?:_(.+))?\.[pP][nN][gG]")
_FLAG_COLUMNS = ("sample", "label", "reviewer", "time", "mask")
_EXPORT_ENTRIES = {"flags.csv", "flags.json", "masks"}
_INT64 = 2**63

# ------------------------------------------------------------------------------------------ import rows


@dataclass
class _FlagRow:
    sample: int
    label: str
    reviewer: str
    time: int | None
    where: str


@dataclass
class _MaskItem:
    sample: int
    reviewer: str
    bits: np.ndarray
    source: Path
    where: str


def _safe_child(root: Path, rel: str, where: str) -> Path:
    """`root/rel` if `rel` is a relative path that stays inside `root` (symlinks resolved); UserError otherwise."""
    if not rel or "\x00" in rel:
        raise UserError(f"{where}: the mask path is empty or invalid; give a PNG path relative to the flags file's folder.")
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or rel.startswith(("/", "\\")):
        raise UserError(f"{where}: the mask path {rel!r} is absolute; give a path relative to the flags file's folder.")
    if ".." in posix.parts or ".." in win.parts:
        raise UserError(f"{where}: the mask path {rel!r} leaves the flags file's folder; keep masks inside that folder.")
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise UserError(f"{where}: the mask path {rel!r} points outside the flags file's folder (through a link); "
                        "copy the file into the folder.")
    if not target.is_file():
        raise UserError(f"{where}: the mask file {rel!r} does not exist; fix the path or add the file.")
    return target


def _read_png_mask(path: Path, size: tuple[int, int], where: str) -> np.ndarray:
    """A boolean mask from a PNG (grey value >= 128 or mode '1' set = marked); UserError if it is not a PNG of `size`."""
    from PIL import Image, UnidentifiedImageError

    h, w = size
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise UserError(f"{where} is a {im.format} image, not a PNG; save masks as PNG.")
            if im.size != (w, h):
                raise UserError(
                    f"{where} is {im.size[1]}x{im.size[0]} (HxW) but the run's images are {h}x{w}; "
                    "paint masks on full-size images."
                )
            im.load()
            arr = np.asarray(im) if im.mode == "1" else np.asarray(im.convert("L")) >= 128
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"{where} is not a readable PNG image ({exc}); replace it with a PNG mask.") from None
    return np.ascontiguousarray(arr, dtype=bool)


# ------------------------------------------------------------------------------------------ the store


class LabelStore(StoreEngine):
    """Reviewers' flags, masks and unit decisions for runs, in a SQLite file or any SQLAlchemy database."""

    # -- runs

    @staticmethod
    def run_key(fingerprint: str, layers: Iterable[str], seed: int) -> str:
        """The key that identifies a run: sha256 of (fingerprint, sorted set of layers, seed)."""
        import hashlib

        payload = dumps({"fingerprint": fingerprint, "layers": sorted(set(layers)), "seed": int(seed)})
        return hashlib.sha256(payload.encode()).hexdigest()

    def register_run(self, fingerprint: str, layers: str | Iterable[str], seed: int, n: int,
                     meta: Mapping[str, Any] | None = None, *, image_size: tuple[int, int] | None = None,
                     actor: str = "artifix") -> int:
        """Id of the run for (fingerprint, layers, seed), creating it if new (a larger n extends it)."""
        if not isinstance(fingerprint, str) or not fingerprint.strip() or len(fingerprint) > 200:
            raise UserError("the run's fingerprint must be a non-empty string of at most 200 characters (the generator hash).")
        layer_list = [layers] if isinstance(layers, str) else list(layers)
        if not layer_list or not all(isinstance(x, str) and x and len(x) <= 300 for x in layer_list):
            raise UserError("layers must be a non-empty list of dotted module names, e.g. ['net.4'].")
        layer_list = list(dict.fromkeys(layer_list))
        seed = as_int(seed, "seed")
        if not -_INT64 <= seed < _INT64:
            raise UserError(f"seed {seed} does not fit in 64 bits; use a smaller seed.")
        n = as_int(n, "sample count n")
        if not 1 <= n < 2**31:
            raise UserError(f"sample count n={n} must be between 1 and 2^31-1.")
        size = None
        if image_size is not None:
            try:
                size = (as_int(image_size[0], "image height"), as_int(image_size[1], "image width"))
            except (TypeError, IndexError):
                raise UserError(f"image_size {image_size!r} must be (height, width).") from None
            if len(image_size) != 2 or min(size) < 1:
                raise UserError(f"image_size {image_size!r} must be (height, width) with both at least 1.")
        if meta is not None and not isinstance(meta, Mapping):
            raise UserError(f"run meta must be a dict, not {type(meta).__name__}.")
        meta_json = dumps(jsonable(dict(meta or {}), "run meta"))
        actor = check_reviewer(actor, "actor name")
        key = self.run_key(fingerprint, layer_list, seed)

        def fn(conn: Connection) -> int:
            row = conn.execute(sa.select(runs_t).where(runs_t.c.run_key == key)).first()
            now = now_us()
            if row is None:
                rid = conn.execute(runs_t.insert().values(
                    run_key=key, fingerprint=fingerprint, layers=json.dumps(layer_list), seed=seed, n=n,
                    height=size[0] if size else None, width=size[1] if size else None, created=now,
                    meta=meta_json)).inserted_primary_key[0]
                self._audit(conn, actor, "register_run", rid, {
                    "fingerprint": fingerprint, "layers": layer_list, "seed": seed, "n": n,
                    "image_size": list(size) if size else None}, now)
                return int(rid)
            run = row_to_run(row)
            changes: dict[str, Any] = {}
            if size is not None and run.image_size is not None and size != run.image_size:
                raise UserError(
                    f"run {run.id} has images of {run.image_size[0]}x{run.image_size[1]} but "
                    f"{size[0]}x{size[1]} was given; the same generator cannot change its image size."
                )
            if size is not None and run.image_size is None:
                changes.update(height=size[0], width=size[1])
            if n > run.n:
                changes["n"] = n
            if changes:
                conn.execute(runs_t.update().where(runs_t.c.id == run.id).values(**changes))
                self._audit(conn, actor, "extend_run", run.id, {
                    "n": [run.n, changes.get("n", run.n)],
                    "image_size": list(size) if "height" in changes else None}, now)
            return run.id

        try:
            return self._write(fn)
        except sa.exc.IntegrityError:  # another process registered the same run between our read and insert
            return self._write(fn)

    def get_run(self, run_id: int) -> Run:
        """The run with this id (UserError if there is none)."""
        return self._read(lambda conn: load_run(conn, run_id))

    def find_run(self, fingerprint: str, layers: str | Iterable[str], seed: int) -> Run | None:
        """The run registered for (fingerprint, layers, seed), or None."""
        layer_list = [layers] if isinstance(layers, str) else list(layers)
        key = self.run_key(fingerprint, layer_list, as_int(seed, "seed"))

        def fn(conn: Connection) -> Run | None:
            row = conn.execute(sa.select(runs_t).where(runs_t.c.run_key == key)).first()
            return None if row is None else row_to_run(row)

        return self._read(fn)

    def runs(self) -> list[Run]:
        """All runs, oldest first."""
        return self._read(lambda conn: [row_to_run(r) for r in conn.execute(sa.select(runs_t).order_by(runs_t.c.id))])

    # -- flags

    def set_flag(self, run_id: int, sample: int, label: str, reviewer: str) -> int:
        """Record that `reviewer` labelled `sample` as artifact/clean/unsure; returns the flag event id."""
        return self.set_flags(run_id, [(sample, label)], reviewer)[0]

    def set_flags(self, run_id: int, items: Mapping[int, str] | Iterable[tuple[int, str]], reviewer: str) -> list[int]:
        """Record several (sample, label) flags by one reviewer in one transaction; returns the event ids."""
        reviewer = check_reviewer(reviewer)
        pairs = list(items.items()) if isinstance(items, Mapping) else [tuple(p) for p in items]
        if any(len(p) != 2 for p in pairs):
            raise UserError("flags must be given as (sample, label) pairs or a {sample: label} mapping.")
        labels = [check_label(lab) for _, lab in pairs]
        if not pairs:
            return []

        def fn(conn: Connection) -> list[int]:
            run = load_run(conn, run_id)
            samples = [check_sample(run, s) for s, _ in pairs]
            now = now_us()
            ids = []
            for s, lab in zip(samples, labels):
                fid = conn.execute(flags_t.insert().values(
                    run_id=run.id, sample=s, label=lab, reviewer=reviewer, time=now)).inserted_primary_key[0]
                ids.append(int(fid))
            detail: dict[str, Any] = ({"sample": samples[0], "label": labels[0], "flag_id": ids[0]} if len(ids) == 1
                                      else {"samples": samples, "labels": labels, "flag_ids": ids})
            self._audit(conn, reviewer, "set_flag", run.id, detail, now)
            return ids

        return self._write(fn)

    @staticmethod
    def _flag_frame(rows: list[Any], with_id: bool = False) -> pd.DataFrame:
        cols = (["id"] if with_id else []) + ["sample", "label", "reviewer", "time"]
        df = pd.DataFrame([tuple(getattr(r, c) for c in cols) for r in rows], columns=cols)
        for c in ("id", "sample") if with_id else ("sample",):
            df[c] = df[c].astype("int64")
        df["time"] = time_col(df["time"])
        return df

    def flags(self, run_id: int) -> pd.DataFrame:
        """Current label per sample (latest event by (time, id) over all reviewers): sample, label, reviewer, time."""
        def fn(conn: Connection) -> list[Any]:
            run = load_run(conn, run_id)
            sub = latest(flags_t, run.id, [flags_t.c.sample], kept(conn, run.id))
            return list(conn.execute(sa.select(sub).where(sub.c.rn == 1).order_by(sub.c.sample)))

        return self._flag_frame(self._read(fn))

    def reviewer_flags(self, run_id: int, reviewer: str | None = None) -> pd.DataFrame:
        """Each reviewer's latest label per sample (optionally one reviewer's): sample, label, reviewer, time."""
        def fn(conn: Connection) -> list[Any]:
            run = load_run(conn, run_id)
            where = kept(conn, run.id, None if reviewer is None else flags_t.c.reviewer == reviewer)
            sub = latest(flags_t, run.id, [flags_t.c.sample, flags_t.c.reviewer], where)
            return list(conn.execute(sa.select(sub).where(sub.c.rn == 1).order_by(sub.c.sample, sub.c.reviewer)))

        return self._flag_frame(self._read(fn))

    def flag_history(self, run_id: int) -> pd.DataFrame:
        """Every flag event of the run in the order it takes effect: id, sample, label, reviewer, time."""
        def fn(conn: Connection) -> list[Any]:
            run = load_run(conn, run_id)
            return list(conn.execute(sa.select(flags_t).where(flags_t.c.run_id == run.id)
                                     .order_by(flags_t.c.time, flags_t.c.id)))

        return self._flag_frame(self._read(fn), with_id=True)

    def label(self, run_id: int, sample: int) -> str | None:
        """The current label of one sample, or None if nobody flagged it."""
        def fn(conn: Connection) -> str | None:
            run = load_run(conn, run_id)
            s = check_sample(run, sample)
            return conn.execute(sa.select(flags_t.c.label).where(kept(conn, run.id, sa.and_(flags_t.c.run_id == run.id, flags_t.c.sample == s)))
                                .order_by(flags_t.c.time.desc(), flags_t.c.id.desc()).limit(1)).scalar()

        return self._read(fn)

    # -- undo (an undo is a new audit event; no flag is ever deleted or changed)

    def undo_last_flag(self, run_id: int, reviewer: str) -> dict[str, Any] | None:
        """Undo `reviewer`'s latest flag that is not undone yet (an 'undo_flag' audit event); the sample's label reverts to
        what it was before (another earlier flag, or none). Returns the audit detail, or None when there is nothing to undo."""
        reviewer = check_reviewer(reviewer)

        def fn(conn: Connection) -> dict[str, Any] | None:
            run = load_run(conn, run_id)
            row = conn.execute(sa.select(flags_t).where(kept(conn, run.id, sa.and_(flags_t.c.run_id == run.id,
                                                                                          flags_t.c.reviewer == reviewer)))
                               .order_by(flags_t.c.time.desc(), flags_t.c.id.desc()).limit(1)).first()
            if row is None:
                return None
            keep = kept(conn, run.id, sa.and_(flags_t.c.run_id == run.id, flags_t.c.sample == row.sample, flags_t.c.id != row.id))
            restored = conn.execute(sa.select(flags_t.c.label).where(keep)
                                    .order_by(flags_t.c.time.desc(), flags_t.c.id.desc()).limit(1)).scalar()
            detail = {"flag_id": int(row.id), "sample": int(row.sample), "undone_label": row.label, "restored_label": restored}
            self._audit(conn, reviewer, "undo_flag", run.id, detail)
            return detail

        return self._write(fn)

    # -- masks

    @staticmethod
    def _check_mask(run: Run, mask: Any) -> np.ndarray:
        if run.image_size is None:
            raise UserError(f"run {run.id} has no image size; register it with image_size=(H, W) before storing masks.")
        arr = np.asarray(mask)
        if arr.ndim != 2 or arr.shape != run.image_size:
            raise UserError(
                f"mask has shape {arr.shape} but run {run.id}'s images are {run.image_size[0]}x{run.image_size[1]}; "
                "give a boolean HxW mask of the full image."
            )
        if arr.dtype != bool:
            if not (np.issubdtype(arr.dtype, np.number)):
                raise UserError(f"mask has dtype {arr.dtype}; give a boolean (or 0/1) HxW array.")
            arr = arr != 0
        return arr

    def set_mask(self, run_id: int, sample: int, reviewer: str, mask: np.ndarray, flag_artifact: bool = False) -> int:
        """Store `reviewer`'s artifact mask (boolean HxW, nonzero = artifact) for `sample`; returns its id.

        With `flag_artifact`, the painted-sample rule (`queries.flag_painted`) applies in the same transaction.
        """
        reviewer = check_reviewer(reviewer)

        def fn(conn: Connection) -> int:
            run = load_run(conn, run_id)
            s = check_sample(run, sample)
            arr = self._check_mask(run, mask)
            now = now_us()
            pixels = int(arr.sum())
            mid = conn.execute(masks_t.insert().values(
                run_id=run.id, sample=s, reviewer=reviewer, height=arr.shape[0], width=arr.shape[1],
                encoding=MASK_ENCODING, pixels=pixels, data=encode_mask(arr), time=now)).inserted_primary_key[0]
            flagged = flag_painted(conn, run.id, [s], reviewer, now) if flag_artifact and pixels else 0
            self._audit(conn, reviewer, "set_mask", run.id, {"sample": s, "mask_id": int(mid), "pixels": pixels, "flagged": flagged}, now)
            return int(mid)

        return self._write(fn)

    def mask(self, run_id: int, sample: int, reviewer: str | None = None) -> np.ndarray | None:
        """`reviewer`'s latest mask of `sample`, or (reviewer None) the union of all reviewers' latest; None if none."""
        rows = self._read(lambda conn: latest_masks(conn, run_id, sample, reviewer))
        if not rows:
            return None
        out = decode_mask(rows[0].data, rows[0].height, rows[0].width)
        for r in rows[1:]:
            out |= decode_mask(r.data, r.height, r.width)
        return out

    def masks(self, run_id: int, reviewer: str | None = None) -> dict[int, np.ndarray]:
        """{sample: mask} for every masked sample: union of reviewers' latest masks, or one reviewer's."""
        out: dict[int, np.ndarray] = {}
        for r in self._read(lambda conn: latest_masks(conn, run_id, None, reviewer)):
            m = decode_mask(r.data, r.height, r.width)
            if r.sample in out:
                out[r.sample] |= m
            else:
                out[int(r.sample)] = m
        return out

    def mask_records(self, run_id: int) -> pd.DataFrame:
        """Latest mask per (sample, reviewer) without pixels: id, sample, reviewer, pixels, time."""
        rows = self._read(lambda conn: latest_masks(conn, run_id))
        df = pd.DataFrame([(r.id, r.sample, r.reviewer, r.pixels, r.time) for r in rows],
                          columns=["id", "sample", "reviewer", "pixels", "time"])
        df = df.astype({"id": "int64", "sample": "int64", "pixels": "int64"})
        df["time"] = time_col(df["time"])
        return df

    # -- unit decisions

    @staticmethod
    def _check_unit(run: Run, layer: Any, unit: Any) -> tuple[str, int]:
        if layer not in run.layers:
            raise UserError(f"layer {layer!r} is not one of run {run.id}'s layers ({', '.join(run.layers)}); use one of those.")
        u = as_int(unit, "unit")
        if u < 0:
            raise UserError(f"unit {u} is negative; units are channel indices starting at 0.")
        return layer, u

    def propose_unit(self, run_id: int, layer: str, unit: int, reviewer: str, note: str = "",
                     scores: Mapping[str, Any] | None = None) -> int:
        """Propose removing (layer, unit), with optional scores; returns the decision event id."""
        return self.propose_units(run_id, [(layer, unit, scores)], reviewer, note)[0]

    def propose_units(self, run_id: int, units: Iterable[tuple[str, int] | tuple[str, int, Mapping[str, Any] | None]],
                      reviewer: str, note: str = "") -> list[int]:
        """Propose several (layer, unit[, scores]) removals in one transaction; returns the event ids."""
        reviewer = check_reviewer(reviewer)
        items = []
        for u in units:
            if len(u) not in (2, 3):
                raise UserError(f"each proposed unit must be (layer, unit) or (layer, unit, scores), not {u!r}.")
            sc = u[2] if len(u) == 3 else None
            if sc is not None and not isinstance(sc, Mapping):
                raise UserError(f"scores must be a dict of name -> value, not {type(sc).__name__}.")
            items.append((u[0], u[1], None if sc is None else dumps(jsonable(dict(sc), "scores"))))
        if not items:
            return []
        return self._write(lambda conn: self._add_decisions(conn, run_id, items, "proposed", reviewer, note, "propose_unit"))

    def decide_unit(self, run_id: int, layer: str, unit: int, status: str, reviewer: str, note: str = "",
                    approvers: set[str] | None = None) -> int:
        """Approve or reject removing (layer, unit); if `approvers` is given, `reviewer` must be in it."""
        reviewer = check_reviewer(reviewer)
        if status not in ("approved", "rejected"):
            raise UserError(f"decision {status!r} is not 'approved' or 'rejected'; use propose_unit to propose a unit.")
        if approvers is not None and reviewer not in approvers:
            names = ", ".join(sorted(approvers)) or "none configured"
            raise UserError(f"{reviewer} may not approve or reject units; ask one of the approvers ({names}).")
        return self._write(lambda conn: self._add_decisions(
            conn, run_id, [(layer, unit, None)], status, reviewer, note, "decide_unit"))[0]

    def _add_decisions(self, conn: Connection, run_id: int, items: list[tuple[Any, Any, str | None]], status: str,
                       reviewer: str, note: str, action: str) -> list[int]:
        if not isinstance(note, str):
            raise UserError("the note must be text.")
        run = load_run(conn, run_id)
        checked = [self._check_unit(run, layer, unit) + (sc,) for layer, unit, sc in items]
        now = now_us()
        ids = []
        for layer, u, sc in checked:
            did = conn.execute(units_t.insert().values(
                run_id=run.id, layer=layer, unit=u, status=status, reviewer=reviewer, note=note, scores=sc,
                time=now)).inserted_primary_key[0]
            ids.append(int(did))
        units_detail = [[layer, u] for layer, u, _ in checked]
        self._audit(conn, reviewer, action, run.id, {"status": status, "units": units_detail, "note": note, "ids": ids}, now)
        return ids

    def _decision_rows(self, run_id: int) -> list[Any]:
        def fn(conn: Connection) -> list[Any]:
            run = load_run(conn, run_id)
            return list(conn.execute(sa.select(units_t).where(units_t.c.run_id == run.id)
                                     .order_by(units_t.c.time, units_t.c.id)))

        return self._read(fn)

    def unit_history(self, run_id: int) -> pd.DataFrame:
        """Every unit decision event in order: id, layer, unit, status, reviewer, note, scores, time."""
        return self._units_frame(self._decision_rows(run_id), with_id=True)

    def unit_decisions(self, run_id: int) -> pd.DataFrame:
        """Latest decision per (layer, unit): layer, unit, status, reviewer, note, scores (latest given), time."""
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        scores: dict[tuple[str, int], str | None] = {}
        for r in self._decision_rows(run_id):
            key = (r.layer, r.unit)
            latest[key] = dict(r._mapping)
            if r.scores is not None:
                scores[key] = r.scores
        rows = [{**latest[k], "scores": scores.get(k)} for k in sorted(latest)]
        return self._units_frame(rows)

    @staticmethod
    def _units_frame(rows: list[Any], with_id: bool = False) -> pd.DataFrame:
        cols = (["id"] if with_id else []) + ["layer", "unit", "status", "reviewer", "note", "scores", "time"]
        maps = [r if isinstance(r, dict) else r._mapping for r in rows]
        df = pd.DataFrame([tuple(m[c] for c in cols) for m in maps], columns=cols)
        df["unit"] = df["unit"].astype("int64")
        if with_id:
            df["id"] = df["id"].astype("int64")
        df["scores"] = pd.Series([None if m["scores"] is None else json.loads(m["scores"]) for m in maps],
                                 index=df.index, dtype=object)
        df["time"] = time_col(df["time"])
        return df

    def approved_units(self, run_id: int) -> list[ApprovedUnit]:
        """Units whose latest decision is 'approved', sorted by (layer, unit): (layer, unit, reviewer, time, note)."""
        latest: dict[tuple[str, int], Any] = {}
        for r in self._decision_rows(run_id):
            latest[(r.layer, r.unit)] = r
        return [ApprovedUnit(r.layer, int(r.unit), r.reviewer, to_datetime(r.time), r.note)
                for k, r in sorted(latest.items()) if r.status == "approved"]

    # -- audit and counts

    def audit(self, run_id: int | None = None) -> pd.DataFrame:
        """The audit log (of one run, or all): id, time, actor, action, run_id, detail (dict)."""
        def fn(conn: Connection) -> list[Any]:
            q = sa.select(audit_t).order_by(audit_t.c.id)
            if run_id is not None:
                q = q.where(audit_t.c.run_id == load_run(conn, run_id).id)
            return list(conn.execute(q))

        rows = self._read(fn)
        df = pd.DataFrame([(r.id, r.time, r.actor, r.action, r.run_id, json.loads(r.detail)) for r in rows],
                          columns=["id", "time", "actor", "action", "run_id", "detail"])
        df["id"] = df["id"].astype("int64")
        df["run_id"] = df["run_id"].astype("Int64")
        df["time"] = time_col(df["time"])
        return df

    # -- blind A/B preference answers (artifix.ab)

    def add_ab_answers(self, study: str, answers: Mapping[int, str] | Iterable[tuple[int, str]], reviewer: str) -> list[int]:
        """Record a reviewer's 'left' / 'right' / 'same' answers to pairs of an A/B study in one transaction; returns the ids."""
        reviewer = check_reviewer(reviewer)
        if not isinstance(study, str) or not re.fullmatch(r"[0-9a-f]{8,64}", study):
            raise UserError(f"A/B study id must be 8-64 hex digits (from study.json), got {study!r}.")
        pairs = list(answers.items()) if isinstance(answers, Mapping) else [tuple(p) for p in answers]
        rows = []
        for p, a in pairs:
            if a not in ("left", "right", "same"):
                raise UserError(f"pair {p}: the answer must be 'left', 'right' or 'same', got {a!r}.")
            rows.append((as_int(p, "pair number"), a))
        if any(p < 0 for p, _ in rows):
            raise UserError("pair numbers start at 0.")
        if not rows:
            return []

        def fn(conn: Connection) -> list[int]:
            now = now_us()
            ids = [int(conn.execute(ab_answers_t.insert().values(study=study, pair=p, answer=a, reviewer=reviewer, time=now))
                       .inserted_primary_key[0]) for p, a in rows]
            self._audit(conn, reviewer, "ab_answer", None, {"study": study, "pairs": [p for p, _ in rows],
                                                            "answers": [a for _, a in rows], "ids": ids}, now)
            return ids

        return self._write(fn)

    def ab_answers(self, study: str, reviewer: str | None = None) -> pd.DataFrame:
        """The latest answer per (pair, reviewer) of a study: columns pair, answer, reviewer, time."""
        def fn(conn: Connection) -> list[Any]:
            t = ab_answers_t
            rn = sa.func.row_number().over(partition_by=[t.c.pair, t.c.reviewer], order_by=(t.c.time.desc(), t.c.id.desc()))
            q = sa.select(t.c.pair, t.c.answer, t.c.reviewer, t.c.time, rn.label("rn")).where(t.c.study == study)
            if reviewer is not None:
                q = q.where(t.c.reviewer == reviewer)
            sub = q.subquery()
            return list(conn.execute(sa.select(sub.c.pair, sub.c.answer, sub.c.reviewer, sub.c.time)
                                     .where(sub.c.rn == 1).order_by(sub.c.reviewer, sub.c.pair)))

        rows = self._read(fn)
        df = pd.DataFrame([tuple(r) for r in rows], columns=["pair", "answer", "reviewer", "time"])
        df["pair"] = df["pair"].astype("int64")
        df["time"] = time_col(df["time"])
        return df

    def counts(self, run_id: int) -> dict[str, int]:
        """Summary numbers: n, labelled, artifact/clean/unsure, unlabelled, masked, flag_events, reviewers, units by status."""
        cur = self.flags(run_id)
        run = self.get_run(run_id)

        def fn(conn: Connection) -> tuple[int, int, int]:
            events, reviewers = conn.execute(sa.select(sa.func.count(), sa.func.count(sa.distinct(flags_t.c.reviewer)))
                                             .where(flags_t.c.run_id == run.id)).one()
            masked = conn.execute(sa.select(sa.func.count(sa.distinct(masks_t.c.sample)))
                                  .where(masks_t.c.run_id == run.id, masks_t.c.pixels > 0)).scalar()
            return int(events), int(reviewers), int(masked or 0)

        events, reviewers, masked = self._read(fn)
        out = {"n": run.n, "labelled": len(cur)}
        for lab in LABELS:
            out[lab] = int((cur["label"] == lab).sum())
        out.update(unlabelled=run.n - len(cur), masked=masked, flag_events=events, reviewers=reviewers)
        dec = self.unit_decisions(run_id)
        for st in STATUSES:
            out[st] = int((dec["status"] == st).sum())
        return out

    # -- export

    def export_labels(self, run_id: int, folder: str | os.PathLike) -> Path:
        """Write flags.csv, flags.json and masks/<sample>_<reviewer>.png for a run into `folder`, atomically."""
        def fn(conn: Connection) -> tuple[Run, list[Any], list[Any]]:
            run = load_run(conn, run_id)
            hist = list(conn.execute(sa.select(flags_t).where(kept(conn, run.id, flags_t.c.run_id == run.id))
                                     .order_by(flags_t.c.sample, flags_t.c.time, flags_t.c.id)))
            return run, hist, latest_masks(conn, run.id)

        run, hist, mask_rows = self._read(fn)
        folder = Path(folder).expanduser().absolute()
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"{folder} exists and is not a folder; choose a folder name for the export.")
            extra = sorted(set(os.listdir(folder)) - _EXPORT_ENTRIES)
            if extra:
                raise UserError(f"{folder} holds files that are not a label export (e.g. {extra[0]}); choose a new or empty folder.")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            self._write_export(tmp, run, hist, mask_rows)
            fsync_dir(tmp)
            _replace_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @staticmethod
    def _write_export(tmp: Path, run: Run, hist: list[Any], mask_rows: list[Any]) -> None:
        from PIL import Image

        records = [{"sample": int(r.sample), "label": r.label, "reviewer": r.reviewer, "time": format_time(r.time)}
                   for r in hist]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["sample", "label", "reviewer", "time"])
        for rec in records:
            writer.writerow([rec["sample"], rec["label"], rec["reviewer"], rec["time"]])
        write_text_atomic(tmp / "flags.csv", buf.getvalue())
        current: dict[int, dict[str, Any]] = {}
        for r, rec in sorted(zip(hist, records), key=lambda p: (p[0].time, p[0].id)):
            current[int(r.sample)] = rec
        doc = {
            "format": "artifix-labels", "version": 1,
            "run": {"id": run.id, "fingerprint": run.fingerprint, "layers": list(run.layers), "seed": run.seed,
                    "n": run.n, "image_size": list(run.image_size) if run.image_size else None},
            "flags": records,
            "current": [current[s] for s in sorted(current)],
        }
        write_text_atomic(tmp / "flags.json", json.dumps(doc, indent=1) + "\n")
        mdir = tmp / "masks"
        mdir.mkdir()
        for r in mask_rows:
            m = decode_mask(r.data, r.height, r.width)
            png = io.BytesIO()
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(png, format="PNG")
            write_bytes_atomic(mdir / f"{int(r.sample)}_{r.reviewer}.png", png.getvalue())
        fsync_dir(mdir)

    # -- import

    def import_labels(self, run_id: int, path: str | os.PathLike, reviewer: str = "import",
                      masks: str | os.PathLike | None = None, actor: str | None = None) -> dict[str, Any]:
        """Validate, then write in one transaction, flags (CSV/JSON) and PNG masks from a file or export folder."""
        reviewer = check_reviewer(reviewer, "default reviewer name")
        actor = check_reviewer(actor or reviewer, "actor name")
        run = self.get_run(run_id)
        path = Path(path).expanduser()
        flags_file: Path | None
        mask_dir = Path(masks).expanduser() if masks is not None else None
        if path.is_dir():
            candidates = [path / "flags.csv", path / "flags.json"]
            flags_file = next((p for p in candidates if p.is_file()), None)
            if mask_dir is None and (path / "masks").is_dir():
                mask_dir = path / "masks"
            if flags_file is None and mask_dir is None:  # a plain folder of <sample>[_<reviewer>].png masks
                if not any(n.lower().endswith(".png") for n in os.listdir(path)):
                    raise UserError(f"{path} has no flags.csv, flags.json, masks folder or PNG masks; point at a flags file, "
                                    "a label export folder or a folder of <sample>[_<reviewer>].png masks.")
                mask_dir = path
        elif path.is_file():
            flags_file = path
        else:
            raise UserError(f"{path} does not exist; give a flags CSV/JSON file or a label export folder.")
        if mask_dir is not None and not mask_dir.is_dir():
            raise UserError(f"masks folder {mask_dir} does not exist; give a folder of <sample>[_<reviewer>].png files.")

        rows: list[_FlagRow] = []
        col_masks: list[tuple[_FlagRow, str]] = []
        if flags_file is not None:
            suffix = flags_file.suffix.lower()
            if suffix == ".csv":
                raw = _read_csv(flags_file)
            elif suffix == ".json":
                raw = _read_json(flags_file)
            else:
                raise UserError(f"{flags_file} is neither .csv nor .json; give flags as CSV or JSON.")
            for where, rec in raw:
                row, mask_rel = self._parse_flag(run, rec, reviewer, where)
                rows.append(row)
                if mask_rel:
                    col_masks.append((row, mask_rel))

        items: dict[tuple[int, str], _MaskItem] = {}

        def add_mask(item: _MaskItem) -> None:
            key = (item.sample, item.reviewer)
            old = items.get(key)
            if old is not None and old.source != item.source:
                raise UserError(f"{item.where}: sample {item.sample} of reviewer {item.reviewer} already has a mask "
                                f"from {old.where}; keep one mask per sample and reviewer.")
            items[key] = item

        if col_masks:
            assert flags_file is not None
            root = flags_file.parent
            for row, rel in col_masks:
                where = f"{row.where}: mask {rel!r}"
                target = _safe_child(root, rel, row.where)
                if target.suffix.lower() != ".png":
                    raise UserError(f"{where} is not a .png file; masks must be PNG images.")
                size = self._need_size(run, where)
                add_mask(_MaskItem(row.sample, row.reviewer, _read_png_mask(target, size, where), target, where))
        if mask_dir is not None:
            for item in self._scan_mask_dir(run, mask_dir, reviewer):
                add_mask(item)

        flags_sha = sha256_file(flags_file) if flags_file is not None else None
        source = str(path.absolute())

        def fn(conn: Connection) -> dict[str, Any]:
            load_run(conn, run.id)  # still there
            now = now_us()
            timed = {(r.sample, r.reviewer, r.time) for r in rows if r.time is not None}
            existing: set[tuple[int, str, str, int]] = set()
            if timed:
                for e in conn.execute(sa.select(flags_t.c.sample, flags_t.c.label, flags_t.c.reviewer, flags_t.c.time)
                                      .where(flags_t.c.run_id == run.id)):
                    if (e.sample, e.reviewer, e.time) in timed:
                        existing.add((e.sample, e.label, e.reviewer, e.time))
            new_flags = [{"run_id": run.id, "sample": r.sample, "label": r.label, "reviewer": r.reviewer,
                          "time": now if r.time is None else r.time}
                         for r in rows if r.time is None or (r.sample, r.label, r.reviewer, r.time) not in existing]
            if new_flags:
                conn.execute(flags_t.insert(), new_flags)
            new_masks = []
            if items:
                latest = {(m.sample, m.reviewer): m for m in latest_masks(conn, run.id)}
                for key in sorted(items):
                    it = items[key]
                    old = latest.get(key)
                    if old is not None and (old.height, old.width) == it.bits.shape and \
                            np.array_equal(decode_mask(old.data, old.height, old.width), it.bits):
                        continue
                    new_masks.append({"run_id": run.id, "sample": it.sample, "reviewer": it.reviewer,
                                      "height": it.bits.shape[0], "width": it.bits.shape[1], "encoding": MASK_ENCODING,
                                      "pixels": int(it.bits.sum()), "data": encode_mask(it.bits), "time": now})
                if new_masks:
                    conn.execute(masks_t.insert(), new_masks)
            labelled = {r.sample for r in rows}  # an explicit label in the same import wins over the painted-sample rule
            painted = sum(flag_painted(conn, run.id, [m["sample"]], m["reviewer"], now)
                          for m in new_masks if m["pixels"] and m["sample"] not in labelled)
            summary = {"source": source, "flags_file": str(flags_file) if flags_file else None, "flags_sha256": flags_sha,
                       "masks_folder": str(mask_dir) if mask_dir else None,
                       "flags": len(new_flags), "flags_skipped": len(rows) - len(new_flags),
                       "masks": len(new_masks), "masks_skipped": len(items) - len(new_masks), "flags_from_masks": painted}
            self._audit(conn, actor, "import_labels", run.id, summary, now)
            return summary

        return self._write(fn)

    @staticmethod
    def _need_size(run: Run, where: str) -> tuple[int, int]:
        if run.image_size is None:
            raise UserError(f"{where}: run {run.id} has no image size; register it with image_size=(H, W) before importing masks.")
        return run.image_size

    def _parse_flag(self, run: Run, rec: Mapping[str, Any], default_reviewer: str, where: str) -> tuple[_FlagRow, str | None]:
        pre = f"{where}: "
        s = rec.get("sample")
        if isinstance(s, str):
            st = s.strip()
            if not re.fullmatch(r"[+-]?[0-9]+", st):
                raise UserError(f"{pre}sample {s!r} is not an integer index; write the sample number, e.g. 12.")
            s = int(st)
        elif s is None or isinstance(s, bool) or not isinstance(s, int):
            raise UserError(f"{pre}sample {s!r} is not an integer index; write the sample number, e.g. 12.")
        sample = check_sample(run, s, pre)
        label = rec.get("label")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise UserError(f"{pre}the label is missing; write one of {', '.join(LABELS)}.")
        label = check_label(label, pre)
        rv = rec.get("reviewer")
        if rv is None or (isinstance(rv, str) and not rv.strip()):
            rv = default_reviewer
        elif isinstance(rv, str):
            rv = rv.strip()
        rv = check_reviewer(rv, f"{pre}reviewer name")
        t = rec.get("time")
        us = None
        if t is not None and not (isinstance(t, str) and not t.strip()):
            try:
                us = parse_time(t)
                if not 0 <= us <= MAX_TIME_US:
                    raise ValueError("out of range")
            except (ValueError, TypeError, OverflowError):
                raise UserError(f"{pre}time {t!r} is not an ISO 8601 time or epoch seconds; "
                                "write e.g. 2024-05-01T12:00:00Z.") from None
        m = rec.get("mask")
        if m is not None and not isinstance(m, str):
            raise UserError(f"{pre}mask {m!r} is not a file path; write the PNG path relative to the flags file.")
        m = m.strip() if isinstance(m, str) and m.strip() else None
        return _FlagRow(sample, label, rv, us, where), m

    def _scan_mask_dir(self, run: Run, folder: Path, default_reviewer: str) -> list[_MaskItem]:
        root = folder.resolve()
        out = []
        for name in sorted(os.listdir(folder)):
            if name.startswith("."):
                continue  # hidden files (.DS_Store and the like)
            p = folder / name
            where = f"mask file {p}"
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                raise UserError(f"{where} is a link pointing outside {folder}; copy the file into the folder instead.")
            if p.is_dir():
                raise UserError(f"{where} is a folder; a masks folder may only hold <sample>[_<reviewer>].png files.")
            m = _MASK_NAME_RE.fullmatch(name)
            if m is None:
                raise UserError(f"{where} is not named <sample>[_<reviewer>].png; rename it (e.g. 12_alice.png) or remove it.")
            sample = check_sample(run, int(m.group(1)), f"{where}: ")
            rv = check_reviewer(m.group(2), f"{where}: reviewer name") if m.group(2) is not None else default_reviewer
            size = self._need_size(run, where)
            out.append(_MaskItem(sample, rv, _read_png_mask(p, size, where), p.resolve(), where))
        return out


# ------------------------------------------------------------------------------------------ file helpers


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) per data row of a flags CSV; UserError naming the line for anything malformed."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}); save the CSV as UTF-8.") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    out = []
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise UserError(f"{path} line 1: the header is missing; start the CSV with 'sample,label,reviewer,time'.")
        cols = [h.strip().lower() for h in header]
        unknown = [c for c in cols if c not in _FLAG_COLUMNS]
        if unknown:
            raise UserError(f"{path} line 1: unknown column {unknown[0]!r}; allowed columns are {', '.join(_FLAG_COLUMNS)}.")
        if len(set(cols)) != len(cols):
            raise UserError(f"{path} line 1: a column name appears twice; keep each column once.")
        for need in ("sample", "label"):
            if need not in cols:
                raise UserError(f"{path} line 1: the required column {need!r} is missing; the header needs sample and label.")
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue  # blank line
            if len(fields) != len(cols):
                raise UserError(f"{path} line {line}: {len(fields)} fields but the header has {len(cols)}; "
                                "fix the row (quote values that contain commas).")
            out.append((f"{path} line {line}", dict(zip(cols, fields))))
    except csv.Error as exc:
        raise UserError(f"{path} line {reader.line_num}: malformed CSV ({exc}); fix the quoting on that line.") from None
    return out


def _read_json(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) per entry of a flags JSON (a list, or an object with a 'flags' list)."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}); save the JSON as UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} line {exc.lineno} column {exc.colno}: malformed JSON ({exc.msg}); fix the file.") from None
    entries = doc.get("flags") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise UserError(f"{path} is not a list of flags nor an object with a 'flags' list; "
                        "write [{\"sample\": 0, \"label\": \"clean\"}, ...].")
    out = []
    for i, e in enumerate(entries):
        where = f"{path} entry {i}"
        if not isinstance(e, dict):
            raise UserError(f"{where}: expected an object with sample and label, got {type(e).__name__}; fix the entry.")
        keys = [str(k).lower() for k in e]
        unknown = [k for k in keys if k not in _FLAG_COLUMNS]
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(_FLAG_COLUMNS)}.")
        out.append((where, {str(k).lower(): v for k, v in e.items()}))
    return out


def _replace_dir(tmp: Path, folder: Path) -> None:
    """Move the finished `tmp` folder to `folder`, replacing an earlier export there."""
    if folder.exists() and os.listdir(folder):
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.rmdir(old)
        os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except BaseException:
            os.rename(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    fsync_dir(folder.parent)
