"""Reads on one open connection that the store and the import share: a run by id, latest events, undone flags, latest
masks, the painted-sample rule (the one write here, always inside the caller's transaction) and a new mask row's values."""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import UserError
from .schema import audit_t, flags_t, masks_t, runs_t
from .values import MASK_ENCODING, Run, as_int, check_sample, encode_mask, to_datetime

__all__ = ["row_to_run", "load_run", "latest", "kept", "flag_painted", "mask_values", "latest_masks"]


def row_to_run(row: Any) -> Run:
    """The `Run` of a row of the runs table."""
    size = None if row.height is None else (int(row.height), int(row.width))
    return Run(id=int(row.id), fingerprint=row.fingerprint, layers=tuple(json.loads(row.layers)),
               seed=int(row.seed), n=int(row.n), image_size=size, created=to_datetime(row.created),
               meta=json.loads(row.meta))


def load_run(conn: Connection, run_id: Any) -> Run:
    """The run with this id; UserError if there is none."""
    rid = as_int(run_id, "run id")
    row = conn.execute(sa.select(runs_t).where(runs_t.c.id == rid)).first()
    if row is None:
        raise UserError(f"run {rid} is not in the label store; use the id of a registered run (see runs()).")
    return row_to_run(row)


def latest(table: sa.Table, run_id: int, partition: list[sa.ColumnElement], where: Any = None) -> sa.Subquery:
    """`table`'s rows of a run numbered by `rn` within `partition`, latest by (time, id) first (rn == 1)."""
    rn = sa.func.row_number().over(partition_by=partition, order_by=(table.c.time.desc(), table.c.id.desc()))
    q = sa.select(table, rn.label("rn")).where(table.c.run_id == run_id)
    if where is not None:
        q = q.where(where)
    return q.subquery()


# An undo is a new audit event ('undo_flag'); no flag is ever deleted or changed.


def _undone_ids(conn: Connection, run_id: int) -> list[int]:
    rows = conn.execute(sa.select(audit_t.c.detail).where(audit_t.c.run_id == run_id, audit_t.c.action == "undo_flag"))
    return [int(json.loads(r.detail)["flag_id"]) for r in rows]


def undone_mask_ids(conn: Connection, run_id: int) -> list[int]:
    """Ids of the mask rows an 'undo_mask' audit event took back (the rows themselves stay)."""
    rows = conn.execute(sa.select(audit_t.c.detail).where(audit_t.c.run_id == run_id, audit_t.c.action == "undo_mask"))
    return [int(json.loads(r.detail)["mask_id"]) for r in rows]


def kept(conn: Connection, run_id: int, where: Any = None) -> Any:
    """`where`, and: the flag event was not undone."""
    undone = _undone_ids(conn, run_id)
    if not undone:
        return where
    keep = flags_t.c.id.notin_(undone)
    return keep if where is None else sa.and_(where, keep)


def flag_painted(conn: Connection, run_id: int, samples: Iterable[int], reviewer: str, now: int) -> int:
    """The painted-sample rule: a painted sample whose current label is not 'artifact' is flagged 'artifact' (same transaction)."""
    added = 0
    for s in sorted(set(int(x) for x in samples)):
        cur = conn.execute(sa.select(flags_t.c.label).where(flags_t.c.run_id == run_id, flags_t.c.sample == s)
                           .order_by(flags_t.c.time.desc(), flags_t.c.id.desc()).limit(1)).scalar()
        if cur != "artifact":
            conn.execute(flags_t.insert().values(run_id=run_id, sample=s, label="artifact", reviewer=reviewer, time=now))
            added += 1
    return added


def mask_values(run_id: int, sample: int, reviewer: str, bits: np.ndarray, now: int) -> dict[str, Any]:
    """The column values of a new row of the masks table for a boolean HxW mask."""
    return {"run_id": run_id, "sample": sample, "reviewer": reviewer, "height": bits.shape[0], "width": bits.shape[1],
            "encoding": MASK_ENCODING, "pixels": int(bits.sum()), "data": encode_mask(bits), "time": now}


def latest_masks(conn: Connection, run_id: int, sample: int | None = None, reviewer: str | None = None) -> list[Any]:
    """The latest mask row per (sample, reviewer) of a run that was not undone, optionally of one sample and/or reviewer."""
    run = load_run(conn, run_id)
    conds = []
    if sample is not None:
        conds.append(masks_t.c.sample == check_sample(run, sample))
    if reviewer is not None:
        conds.append(masks_t.c.reviewer == reviewer)
    undone = undone_mask_ids(conn, run.id)
    if undone:
        conds.append(masks_t.c.id.notin_(undone))
    sub = latest(masks_t, run.id, [masks_t.c.sample, masks_t.c.reviewer], sa.and_(*conds) if conds else None)
    return list(conn.execute(sa.select(sub).where(sub.c.rn == 1).order_by(sub.c.sample, sub.c.reviewer)))
