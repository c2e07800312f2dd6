"""`LabelStore`: reviewers' flags, artifact masks and unit decisions for runs, with history and an audit log.

The API by topic: runs (`register_run`, `get_run`, `find_run`, `runs`), flags (`set_flag(s)`, `flags`, `reviewer_flags`,
`flag_history`, `label`, `undo_last_flag`), masks (`set_mask`, `mask`, `masks`, `mask_records`), unit decisions
(`propose_unit(s)`, `decide_unit`, `unit_history`, `unit_decisions`, `approved_units`), blind A/B answers
(`add_ab_answers`, `ab_answers`), `audit` and `counts`. Opening the database and transactions come from
`engine.StoreEngine`, import and export from `transfer.LabelTransfer`; the data model is described in `schema`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import UserError
from .queries import flag_painted, kept, latest, latest_masks, load_run, mask_values, row_to_run, undone_mask_ids
from .schema import ab_answers_t, audit_t, flags_t, masks_t, runs_t, units_t
from .transfer import LabelTransfer
from .values import (LABELS, STATUSES, ApprovedUnit, Run, as_int, check_label, check_reviewer, check_sample, decode_mask,
                     dumps, jsonable, now_us, time_col, to_datetime)

__all__ = ["LabelStore"]

_INT64 = 2**63


def _label_without(conn: Connection, run_id: int, sample: int, flag_id: int) -> str | None:
    """The sample's current label if flag event `flag_id` did not count (what undoing it restores), or None."""
    keep = kept(conn, run_id, sa.and_(flags_t.c.run_id == run_id, flags_t.c.sample == sample, flags_t.c.id != flag_id))
    return conn.execute(sa.select(flags_t.c.label).where(keep).order_by(flags_t.c.time.desc(), flags_t.c.id.desc()).limit(1)).scalar()


class LabelStore(LabelTransfer):
    """Reviewers' flags, masks and unit decisions for runs, in a SQLite file or any SQLAlchemy database."""

    # -- runs

    @staticmethod
    def run_key(fingerprint: str, layers: Iterable[str], seed: int) -> str:
        """The key that identifies a run: sha256 of (fingerprint, sorted set of layers, seed)."""
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
            detail = {"flag_id": int(row.id), "sample": int(row.sample), "undone_label": row.label,
                      "restored_label": _label_without(conn, run.id, row.sample, row.id)}
            self._audit(conn, reviewer, "undo_flag", run.id, detail)
            return detail

        return self._write(fn)

    def undo_last_mask(self, run_id: int, reviewer: str) -> dict[str, Any] | None:
        """Undo `reviewer`'s latest painted mask that is not undone yet (an 'undo_mask' audit event): the sample's mask of
        this reviewer reverts to the one before (or none), and an 'artifact' flag that painting added is undone with it.
        Returns the audit detail, or None when there is nothing to undo."""
        reviewer = check_reviewer(reviewer)

        def fn(conn: Connection) -> dict[str, Any] | None:
            run = load_run(conn, run_id)
            undone = undone_mask_ids(conn, run.id)
            mine = sa.and_(masks_t.c.run_id == run.id, masks_t.c.reviewer == reviewer,
                           masks_t.c.id.notin_(undone) if undone else sa.true())
            row = conn.execute(sa.select(masks_t.c.id, masks_t.c.sample, masks_t.c.pixels, masks_t.c.time).where(mine)
                               .order_by(masks_t.c.time.desc(), masks_t.c.id.desc()).limit(1)).first()
            if row is None:
                return None
            before = conn.execute(sa.select(masks_t.c.id).where(mine, masks_t.c.sample == row.sample, masks_t.c.id != row.id)
                                  .order_by(masks_t.c.time.desc(), masks_t.c.id.desc()).limit(1)).scalar()
            detail = {"mask_id": int(row.id), "sample": int(row.sample), "pixels": int(row.pixels),
                      "restored_mask_id": None if before is None else int(before)}
            self._audit(conn, reviewer, "undo_mask", run.id, detail)
            added = conn.execute(sa.select(flags_t).where(kept(conn, run.id, sa.and_(  # the flag the painting itself added
                flags_t.c.run_id == run.id, flags_t.c.sample == row.sample, flags_t.c.reviewer == reviewer,
                flags_t.c.label == "artifact", flags_t.c.time == row.time)))).first()
            if added is not None:
                self._audit(conn, reviewer, "undo_flag", run.id, {"flag_id": int(added.id), "sample": int(row.sample), "undone_label":
                                                                   "artifact", "restored_label": _label_without(conn, run.id, row.sample, added.id)})
                detail["unflagged"] = True
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
            values = mask_values(run.id, s, reviewer, arr, now)
            pixels = values["pixels"]
            mid = conn.execute(masks_t.insert().values(**values)).inserted_primary_key[0]
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

    # -- blind A/B preference answers (artifix.review.ab)

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
            masked = len({r.sample for r in latest_masks(conn, run.id) if r.pixels > 0})  # current masks, undone ones left out
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
