"""The label store's values: labels and statuses, `Run` and `ApprovedUnit`, times, mask encoding and input checks.

Times are integer microseconds since the Unix epoch (UTC), returned as pandas UTC timestamps and written to files
as ISO 8601 (`2024-05-01T12:00:00.000000Z`).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, NamedTuple

import numpy as np
import pandas as pd

from ..errors import RuntimeFailure, UserError

__all__ = ["LABELS", "STATUSES", "Run", "ApprovedUnit", "encode_mask", "decode_mask", "format_time", "parse_time"]

LABELS: tuple[str, ...] = ("artifact", "clean", "unsure")
STATUSES: tuple[str, ...] = ("proposed", "approved", "rejected")
MASK_ENCODING = "packbits-zlib"

_REVIEWER_RE = re.compile(r"\w[\w.@+-]{0,99}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_TIME_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc) - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class Run:
    """One registered sampling run: generator fingerprint, layers, seed, sample count and image size."""

    id: int
    fingerprint: str
    layers: tuple[str, ...]
    seed: int
    n: int
    image_size: tuple[int, int] | None
    created: datetime
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class ApprovedUnit(NamedTuple):
    """A unit whose latest decision is 'approved'."""

    layer: str
    unit: int
    reviewer: str
    time: datetime
    note: str


# ------------------------------------------------------------------------------------------ times


def now_us() -> int:
    """The current time in integer microseconds since the epoch."""
    return time.time_ns() // 1000


def format_time(us: int) -> str:
    """ISO 8601 UTC text of a time in integer microseconds since the epoch, e.g. '2024-05-01T12:00:00.000000Z'."""
    return (_EPOCH + timedelta(microseconds=int(us))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> int:
    """Integer microseconds since the epoch from ISO 8601 text (naive = UTC), a datetime, or epoch seconds; ValueError if neither."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float, np.integer, np.floating)):
        if not math.isfinite(float(value)):
            raise ValueError("not a finite number")
        return int(round(float(value) * 1_000_000)) if not isinstance(value, (int, np.integer)) else int(value) * 1_000_000
    else:
        s = str(value).strip()
        if re.fullmatch(r"[+-]?[0-9]+", s):
            return int(s) * 1_000_000
        if re.fullmatch(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+)", s):
            whole, _, frac = s.lstrip("+-").partition(".")
            sign = -1 if s.startswith("-") else 1
            frac6 = (frac + "000000")[:6]
            us = int(whole or 0) * 1_000_000 + int(frac6 or 0)
            if len(frac) > 6 and frac[6] >= "5":
                us += 1
            return sign * us
        if s.endswith(("z", "Z")):
            s = s[:-1] + "+00:00"
        dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def to_datetime(us: int) -> datetime:
    """The UTC datetime of a time in integer microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=int(us))


def time_col(col: pd.Series) -> pd.Series:
    """A column of integer microseconds as pandas UTC timestamps."""
    return pd.to_datetime(col.astype("int64"), unit="us", utc=True)


# ------------------------------------------------------------------------------------------ masks and JSON


def encode_mask(mask: np.ndarray) -> bytes:
    """Compress a boolean HxW mask (packed bits, zlib)."""
    return zlib.compress(np.packbits(np.asarray(mask, dtype=bool), axis=None).tobytes(), 6)


def decode_mask(data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of `encode_mask`: a boolean (height, width) array."""
    try:
        packed = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
    except zlib.error as exc:  # pragma: no cover - only on a corrupted database
        raise RuntimeFailure(f"a stored mask cannot be decompressed ({exc}); the label store is damaged.") from exc
    if packed.size * 8 < height * width:  # pragma: no cover - only on a corrupted database
        raise RuntimeFailure("a stored mask is shorter than its size says; the label store is damaged.")
    return np.unpackbits(packed, count=height * width).reshape(height, width).astype(bool)


def jsonable(obj: Any, what: str) -> Any:
    """A JSON-safe copy of `obj`: numpy scalars/arrays become Python values, non-finite floats become None."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), what)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, what) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, what) for v in obj]
    raise UserError(f"{what} holds a {type(obj).__name__}, which cannot be stored as JSON; pass numbers, strings, lists or dicts.")


def dumps(obj: Any) -> str:
    """Compact, key-sorted, strict JSON text (as stored in the database)."""
    return json.dumps(obj, sort_keys=True, allow_nan=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ input checks


def check_reviewer(name: Any, what: str = "reviewer name") -> str:
    """`name` if it is a valid reviewer (or actor) name; UserError otherwise."""
    if not isinstance(name, str) or not _REVIEWER_RE.fullmatch(name):
        raise UserError(
            f"{what} {name!r} is not valid; use 1-100 letters, digits or . _ @ + - starting with a letter or digit "
            "(e.g. 'jane.doe')."
        )
    return name


def check_label(label: Any, where: str = "") -> str:
    """`label` stripped and lower-cased if it is one of LABELS; UserError otherwise."""
    lab = label.strip().lower() if isinstance(label, str) else label
    if lab not in LABELS:
        raise UserError(f"{where}label {label!r} is not one of {', '.join(LABELS)}; use one of those.")
    return lab


def as_int(value: Any, what: str) -> int:
    """`value` as an int if it is an integer (not a bool); UserError otherwise."""
    if isinstance(value, (bool, np.bool_)):
        raise UserError(f"{what} must be an integer, not {value!r}.")
    try:
        return int(value.__index__())
    except (AttributeError, TypeError):
        raise UserError(f"{what} must be an integer, not {value!r}.") from None


def check_sample(run: Run, sample: Any, where: str = "") -> int:
    """`sample` as an int if it is one of the run's sample indices; UserError otherwise."""
    s = as_int(sample, f"{where}sample index")
    if not 0 <= s < run.n:
        raise UserError(f"{where}sample index {s} is outside run {run.id}'s samples 0..{run.n - 1}; use an index in that range.")
    return s


def reviewer_name(given: str | None) -> str:
    """The reviewer name: the one given, else $USER, else 'reviewer'."""
    return given or os.environ.get("USER") or "reviewer"
