"""Label import and export: flags as CSV or JSON, masks as a folder of PNGs (`LabelTransfer`, part of `LabelStore`).

An export folder holds flags.csv, flags.json and masks/<sample>_<reviewer>.png and is replaced atomically. An import
reads a flags file, an export folder or a plain folder of <sample>[_<reviewer>].png masks, validates every row and
mask first, and then writes them in one transaction with one 'import_labels' audit row; rows already in the store are
skipped, so importing the same file twice changes nothing.
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
from typing import Any, Mapping

import numpy as np
import sqlalchemy as sa
from PIL import Image, UnidentifiedImageError
from sqlalchemy.engine import Connection

from ..errors import UserError
from ..io import fsync_dir, sha256_file, write_bytes_atomic, write_text_atomic
from .engine import StoreEngine
from .queries import flag_painted, kept, latest_masks, load_run, mask_values
from .schema import flags_t, masks_t
from .values import (LABELS, MAX_TIME_US, Run, check_label, check_reviewer, check_sample, decode_mask, format_time, now_us,
                     parse_time)

__all__ = ["LabelTransfer"]

_MASK_NAME_RE = re.compile(r"([0-9]+)(?:_(.+))?\.[pP][nN][gG]")
_FLAG_COLUMNS = ("sample", "label", "reviewer", "time", "mask")
_EXPORT_ENTRIES = {"flags.csv", "flags.json", "masks"}


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


@dataclass
class _Import:
    """An import, validated before its transaction: where it came from, the flag rows and the masks to write."""

    run: Run
    source: str
    flags_file: Path | None
    flags_sha: str | None
    mask_dir: Path | None
    rows: list[_FlagRow]
    masks: dict[tuple[int, str], _MaskItem]


class LabelTransfer(StoreEngine):
    """Import and export of a run's labels (CSV/JSON flags, PNG masks); `LabelStore` inherits it."""

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
            _write_export(tmp, run, hist, mask_rows)
            fsync_dir(tmp)
            _replace_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    def import_labels(self, run_id: int, path: str | os.PathLike, reviewer: str = "import",
                      masks: str | os.PathLike | None = None, actor: str | None = None) -> dict[str, Any]:
        """Validate, then write in one transaction, flags (CSV/JSON) and PNG masks from a file or export folder."""
        reviewer = check_reviewer(reviewer, "default reviewer name")
        actor = check_reviewer(actor or reviewer, "actor name")
        run = self._read(lambda conn: load_run(conn, run_id))
        path = Path(path).expanduser()
        flags_file, mask_dir = _import_sources(path, masks)
        rows, col_masks = _read_flag_rows(run, flags_file, reviewer)
        items = _collect_masks(run, flags_file, col_masks, mask_dir, reviewer)
        flags_sha = sha256_file(flags_file) if flags_file is not None else None
        plan = _Import(run, str(path.absolute()), flags_file, flags_sha, mask_dir, rows, items)
        return self._write(lambda conn: self._apply_import(conn, plan, actor))

    def _apply_import(self, conn: Connection, plan: _Import, actor: str) -> dict[str, Any]:
        """Write a validated import's new flags and masks, the painted-sample rule and its audit row; the summary."""
        run = plan.run
        load_run(conn, run.id)  # still there
        now = now_us()
        new_flags = _new_flags(conn, run.id, plan.rows, now)
        if new_flags:
            conn.execute(flags_t.insert(), new_flags)
        new_masks = _new_masks(conn, run.id, plan.masks, now)
        if new_masks:
            conn.execute(masks_t.insert(), new_masks)
        labelled = {r.sample for r in plan.rows}  # an explicit label in the same import wins over the painted-sample rule
        painted = sum(flag_painted(conn, run.id, [m["sample"]], m["reviewer"], now)
                      for m in new_masks if m["pixels"] and m["sample"] not in labelled)
        summary = {"source": plan.source, "flags_file": str(plan.flags_file) if plan.flags_file else None,
                   "flags_sha256": plan.flags_sha, "masks_folder": str(plan.mask_dir) if plan.mask_dir else None,
                   "flags": len(new_flags), "flags_skipped": len(plan.rows) - len(new_flags),
                   "masks": len(new_masks), "masks_skipped": len(plan.masks) - len(new_masks), "flags_from_masks": painted}
        self._audit(conn, actor, "import_labels", run.id, summary, now)
        return summary


# ------------------------------------------------------------------------------------------ export


def _write_export(tmp: Path, run: Run, hist: list[Any], mask_rows: list[Any]) -> None:
    """Write flags.csv, flags.json and masks/ of a run's flag history and latest masks into the folder `tmp`."""
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


# ------------------------------------------------------------------------------------------ import: what to read


def _import_sources(path: Path, masks: str | os.PathLike | None) -> tuple[Path | None, Path | None]:
    """(flags file, masks folder) of an import from a flags file, an export folder or a folder of PNG masks."""
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
    return flags_file, mask_dir


def _read_flag_rows(run: Run, flags_file: Path | None,
                    default_reviewer: str) -> tuple[list[_FlagRow], list[tuple[_FlagRow, str]]]:
    """The checked flag rows of a flags file, and (row, mask path) for rows that name a mask."""
    rows: list[_FlagRow] = []
    col_masks: list[tuple[_FlagRow, str]] = []
    if flags_file is None:
        return rows, col_masks
    suffix = flags_file.suffix.lower()
    if suffix == ".csv":
        raw = _read_csv(flags_file)
    elif suffix == ".json":
        raw = _read_json(flags_file)
    else:
        raise UserError(f"{flags_file} is neither .csv nor .json; give flags as CSV or JSON.")
    for where, rec in raw:
        row, mask_rel = _parse_flag(run, rec, default_reviewer, where)
        rows.append(row)
        if mask_rel:
            col_masks.append((row, mask_rel))
    return rows, col_masks


def _collect_masks(run: Run, flags_file: Path | None, col_masks: list[tuple[_FlagRow, str]], mask_dir: Path | None,
                   default_reviewer: str) -> dict[tuple[int, str], _MaskItem]:
    """{(sample, reviewer): mask} from the flags file's mask column and the masks folder; one mask per key."""
    items: dict[tuple[int, str], _MaskItem] = {}
    if col_masks:
        assert flags_file is not None
        for row, rel in col_masks:
            _add_mask(items, _column_mask(run, flags_file.parent, row, rel))
    if mask_dir is not None:
        for item in _scan_mask_dir(run, mask_dir, default_reviewer):
            _add_mask(items, item)
    return items


def _add_mask(items: dict[tuple[int, str], _MaskItem], item: _MaskItem) -> None:
    key = (item.sample, item.reviewer)
    old = items.get(key)
    if old is not None and old.source != item.source:
        raise UserError(f"{item.where}: sample {item.sample} of reviewer {item.reviewer} already has a mask "
                        f"from {old.where}; keep one mask per sample and reviewer.")
    items[key] = item


def _need_size(run: Run, where: str) -> tuple[int, int]:
    if run.image_size is None:
        raise UserError(f"{where}: run {run.id} has no image size; register it with image_size=(H, W) before importing masks.")
    return run.image_size


def _column_mask(run: Run, root: Path, row: _FlagRow, rel: str) -> _MaskItem:
    """The mask a flags row names (a PNG path relative to the flags file's folder `root`)."""
    where = f"{row.where}: mask {rel!r}"
    target = _safe_child(root, rel, row.where)
    if target.suffix.lower() != ".png":
        raise UserError(f"{where} is not a .png file; masks must be PNG images.")
    size = _need_size(run, where)
    return _MaskItem(row.sample, row.reviewer, _read_png_mask(target, size, where), target, where)


def _scan_mask_dir(run: Run, folder: Path, default_reviewer: str) -> list[_MaskItem]:
    """The masks of a folder of <sample>[_<reviewer>].png files (hidden files skipped); UserError for anything else."""
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
        size = _need_size(run, where)
        out.append(_MaskItem(sample, rv, _read_png_mask(p, size, where), p.resolve(), where))
    return out


# ------------------------------------------------------------------------------------------ import: what to write


def _new_flags(conn: Connection, run_id: int, rows: list[_FlagRow], now: int) -> list[dict[str, Any]]:
    """Flag rows to insert: those without a time, and timed ones not already stored (same sample, label, reviewer, time)."""
    timed = {(r.sample, r.reviewer, r.time) for r in rows if r.time is not None}
    existing: set[tuple[int, str, str, int]] = set()
    if timed:
        for e in conn.execute(sa.select(flags_t.c.sample, flags_t.c.label, flags_t.c.reviewer, flags_t.c.time)
                              .where(flags_t.c.run_id == run_id)):
            if (e.sample, e.reviewer, e.time) in timed:
                existing.add((e.sample, e.label, e.reviewer, e.time))
    return [{"run_id": run_id, "sample": r.sample, "label": r.label, "reviewer": r.reviewer,
             "time": now if r.time is None else r.time}
            for r in rows if r.time is None or (r.sample, r.label, r.reviewer, r.time) not in existing]


def _new_masks(conn: Connection, run_id: int, items: dict[tuple[int, str], _MaskItem], now: int) -> list[dict[str, Any]]:
    """Mask rows to insert: those that differ from the reviewer's latest stored mask of the sample."""
    if not items:
        return []
    latest = {(m.sample, m.reviewer): m for m in latest_masks(conn, run_id)}
    out = []
    for key in sorted(items):
        it = items[key]
        old = latest.get(key)
        if old is not None and (old.height, old.width) == it.bits.shape and \
                np.array_equal(decode_mask(old.data, old.height, old.width), it.bits):
            continue
        out.append(mask_values(run_id, it.sample, it.reviewer, it.bits, now))
    return out


# ------------------------------------------------------------------------------------------ file readers


def _parse_flag(run: Run, rec: Mapping[str, Any], default_reviewer: str, where: str) -> tuple[_FlagRow, str | None]:
    """A checked flag row of one CSV row / JSON entry, and its mask path (or None); UserError naming `where`."""
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
    us = _parse_flag_time(rec.get("time"), pre)
    m = rec.get("mask")
    if m is not None and not isinstance(m, str):
        raise UserError(f"{pre}mask {m!r} is not a file path; write the PNG path relative to the flags file.")
    m = m.strip() if isinstance(m, str) and m.strip() else None
    return _FlagRow(sample, label, rv, us, where), m


def _parse_flag_time(t: Any, pre: str) -> int | None:
    """A flag row's time in microseconds, or None when it has none; UserError if it is not a time."""
    if t is None or (isinstance(t, str) and not t.strip()):
        return None
    try:
        us = parse_time(t)
        if not 0 <= us <= MAX_TIME_US:
            raise ValueError("out of range")
    except (ValueError, TypeError, OverflowError):
        raise UserError(f"{pre}time {t!r} is not an ISO 8601 time or epoch seconds; "
                        "write e.g. 2024-05-01T12:00:00Z.") from None
    return us


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
